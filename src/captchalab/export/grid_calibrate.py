"""Calibrate the grid decision rules on labelled validation cells (numpy only).

Grids are simulated from the cells: a prompt word, 1-4 of its images, the other cells from other words; 2x3 and
3x3 alike. A grid is solved when every positive scores at or above the threshold and every negative below it, so
grid g is solved exactly for thresholds in (max negative, min positive]; the threshold with the most grids solved is
found by one sweep over those interval ends. The ``context`` rule's logistic model is fitted by Newton's method on
the grids' cells (``fit_context``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from captchalab.runtime.grid_rules import RULES, ContextModel, RuleParams, context_features, rule_scores

log = logging.getLogger(__name__)


@dataclass
class SimulatedGrids:
    prompts: list[str]  # one per grid
    cells: list[np.ndarray]  # per grid: row indices into the cell matrix
    truth: list[np.ndarray]  # per grid: bool per cell


def simulate_grids(
    texts: list[str], count: int = 3000, seed: int = 0, related: dict[str, list[str]] | None = None
) -> SimulatedGrids:
    """Grids drawn from labelled cells, as ``grid generate`` makes them: a prompt's look-alikes (``related``) are
    never its negatives."""
    related = related or {}
    rng = np.random.default_rng(seed)
    by_text: dict[str, np.ndarray] = {}
    for text in sorted(set(texts)):
        by_text[text] = np.flatnonzero(np.asarray(texts) == text)
    words = list(by_text)
    if len(words) < 2:
        raise ValueError("calibration needs cells of at least two words")
    grids = SimulatedGrids([], [], [])
    for g in range(count):
        size = 9 if g % 2 else 6
        prompt = words[rng.integers(len(words))]
        k = int(rng.integers(1, min(4, len(by_text[prompt])) + 1))
        positives = rng.choice(by_text[prompt], size=k, replace=False)
        banned = {prompt, *related.get(prompt, [])}
        others = [w for w in rng.permutation(words) if w not in banned][: size - k]
        negatives = [rng.choice(by_text[w]) for w in others]
        if len(negatives) < size - k:  # too few words: repeat some
            negatives += [rng.choice(by_text[others[i % len(others)]]) for i in range(size - k - len(negatives))]
        rows = np.concatenate([positives, np.asarray(negatives, dtype=int)])
        truth = np.arange(size) < k
        order = rng.permutation(size)
        grids.prompts.append(prompt)
        grids.cells.append(rows[order])
        grids.truth.append(truth[order])
    return grids


def best_threshold(low: np.ndarray, high: np.ndarray) -> tuple[float, int]:
    """Grid g is solved iff low[g] < t <= high[g]: (a t that solves the most grids, how many).

    Candidates are midpoints between consecutive interval ends; among the best, the middle of the longest run of
    consecutive best candidates, so the threshold sits as far as the data allows from the nearest mistake.
    """
    solvable = low < high  # the others count for no threshold (and would be subtracted by the sweep below)
    low, high = low[solvable], high[solvable]
    if len(low) == 0:
        return 0.0, 0
    values = np.unique(np.concatenate([low, high]))
    if len(values) < 2:
        return float(values[0]), 0
    mids = (values[:-1] + values[1:]) / 2
    solved = np.searchsorted(np.sort(low), mids, "left") - np.searchsorted(np.sort(high), mids, "left")
    best = int(solved.max())
    runs, start = [], None
    for i, hit in enumerate(np.append(solved == best, False)):
        if hit and start is None:
            start = i
        elif not hit and start is not None:
            runs.append((i - start, start, i - 1))
            start = None
    _, first, last = max(runs)
    return float((values[first] + values[last + 1]) / 2), best


RELATIVE_STEPS = np.round(np.arange(0.0, 0.5001, 0.005), 3)  # candidate values of a rule's ``relative``


def solved_intervals(scores: list[np.ndarray], truths: list[np.ndarray], relative: float) -> tuple[np.ndarray, ...]:
    """Per grid, the thresholds t that solve it when cells within ``relative`` of the grid's best are also picked:
    (low, high], as two arrays; grids no t solves are left out (a negative is the best cell, or within ``relative``
    of it). high is +inf where every positive is picked through ``relative`` alone."""
    low, high = [], []
    for s, truth in zip(scores, truths, strict=True):
        cut = float(s.max()) - relative  # a cell reaching min(t, cut) is picked
        negative = float(s[~truth].max()) if (~truth).any() else -np.inf
        positive = float(s[truth].min())
        if negative >= cut:
            continue
        low.append(negative)
        high.append(np.inf if positive >= cut else positive)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def fit_rule(
    scores: list[np.ndarray], truths: list[np.ndarray], relatives: np.ndarray = RELATIVE_STEPS
) -> tuple[float, float, int]:
    """(threshold, relative, grids solved) that solve the most grids; ties go to the smallest ``relative``."""
    finite = np.concatenate(scores)
    span = float(finite.max() - finite.min()) + 1e-6
    best: tuple[int, float, float] | None = None
    for relative in relatives:
        low, high = solved_intervals(scores, truths, float(relative))
        if len(low) == 0:
            continue
        # open ends become finite just past the scores, so the sweep can place a threshold there
        low = np.where(np.isfinite(low), low, finite.min() - span)
        high = np.where(np.isfinite(high), high, finite.max() + span)
        threshold, solved = best_threshold(low, high)
        if best is None or solved > best[0]:
            best = (solved, threshold, float(relative))
    if best is None:
        return float(np.median(finite)), 0.0, 0
    return best[1], best[2], best[0]


def count_solved(scores: list[np.ndarray], truths: list[np.ndarray], params: RuleParams) -> int:
    """How many grids the rule solves exactly (every cell right), as the runtime decides."""
    return sum(bool(np.array_equal(s >= params.cutoff(s), truth)) for s, truth in zip(scores, truths, strict=True))


def fit_slope(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Logistic slope k of p = sigmoid(k (s - t)) by Newton's method on the cells' log-likelihood."""
    x, y, k = scores - threshold, labels.astype(float), 10.0 / max(float(np.std(scores)), 1e-6)
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(k * x, -50, 50)))
        gradient, hessian = float(np.sum((y - p) * x)), float(np.sum(p * (1 - p) * x * x)) + 1e-9
        k = max(k + gradient / hessian, 1e-3)
    return k


CONTEXT_L2 = 1.0  # ridge penalty of the context model's weights (on standardised features)


def fit_context(features: list[np.ndarray], truths: list[np.ndarray], l2: float = CONTEXT_L2) -> ContextModel:
    """Logistic regression of match / no match on each grid's ``context_features`` (N_g, F), by Newton's method on
    the penalised log-likelihood of every cell (the bias is not penalised)."""
    x = np.concatenate(features)
    y = np.concatenate(truths).astype(np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    design = np.c_[(x - mean) / scale, np.ones(len(x))]  # (cells, F + 1)
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    w = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -50, 50)))
        gradient = design.T @ (p - y) + penalty * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return ContextModel(mean, scale, w[:-1], float(w[-1]))


def context_rule(features: list[np.ndarray], truths: list[np.ndarray]) -> tuple[dict, int]:
    """The ``context`` rule fitted on these grids, as the manifest stores it, and how many of them it solves."""
    model = fit_context(features, truths)
    params = RuleParams(0.0, 1.0)  # its scores are log-odds: picked from 0, probability = sigmoid(score)
    solved = count_solved([model.log_odds(f) for f in features], truths, params)
    return {**params.to_dict(), "valid_solve_rate": solved / len(truths), "model": model.to_dict()}, solved


def calibrate(
    image_vectors: np.ndarray,
    texts: list[str],
    text_vectors: dict[str, np.ndarray],
    logit_scale: float,
    related: dict[str, list[str]] | None = None,
    count: int = 3000,
    seed: int = 0,
) -> dict:
    """-> the manifest's ``decision``: per rule its threshold, slope and simulated-grid solve rate; the best rule."""
    related = related or {}
    grids = simulate_grids(texts, count, seed, related)
    words = sorted(text_vectors)
    inputs = []  # per grid: similarity of its cells to the prompt (N,), to the other words (N, K); cells (N, D)
    for prompt, rows in zip(grids.prompts, grids.cells, strict=True):
        banned = {prompt, *related.get(prompt, [])}
        others = np.stack([text_vectors[w] for w in words if w not in banned])
        cells = image_vectors[rows]
        inputs.append((cells @ text_vectors[prompt], cells @ others.T, cells))
    rules: dict[str, dict] = {}
    for rule in RULES:
        all_scores = [rule_scores(rule, similarity, other, logit_scale) for similarity, other, _ in inputs]
        # in-distribution grids say nothing about style shift: ``relative`` stays 0 here (see ``grid calibrate``)
        threshold, _, solved = fit_rule(all_scores, grids.truth, np.zeros(1))
        slope = fit_slope(np.concatenate(all_scores), np.concatenate(grids.truth), threshold)
        rules[rule] = RuleParams(float(threshold), float(slope), solved / len(grids.prompts)).to_dict()
        log.info("rule %s: threshold %.4f, simulated validation grids solved %.4f", rule, threshold, solved / count)
    rules["context"], solved = context_rule([context_features(*grid) for grid in inputs], grids.truth)
    log.info("rule context: simulated validation grids solved %.4f", solved / count)
    best = max(rules, key=lambda r: (rules[r]["valid_solve_rate"], r != "context"))  # ties: the simpler rule
    return {"rule": best, "rules": rules, "unsure_band": 0.3, "calibration": {"grids": count, "cells": len(texts)}}
