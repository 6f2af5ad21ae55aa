"""Calibrate the grid decision rules on labelled validation cells (numpy only).

Grids are simulated from the cells: a prompt word, 1-4 of its images, the other cells from other words; 2x3 and
3x3 alike. A grid is solved when every positive scores at or above the threshold and every negative below it, so
grid g is solved exactly for thresholds in (max negative, min positive]; the threshold with the most grids solved is
found by one sweep over those interval ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from captchalab.runtime.grid_rules import RULES, RuleParams, cell_scores

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


def fit_slope(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Logistic slope k of p = sigmoid(k (s - t)) by Newton's method on the cells' log-likelihood."""
    x, y, k = scores - threshold, labels.astype(float), 10.0 / max(float(np.std(scores)), 1e-6)
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(k * x, -50, 50)))
        gradient, hessian = float(np.sum((y - p) * x)), float(np.sum(p * (1 - p) * x * x)) + 1e-9
        k = max(k + gradient / hessian, 1e-3)
    return k


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
    rules: dict[str, dict] = {}
    for rule in RULES:
        low, high, all_scores, all_truth = [], [], [], []
        for prompt, rows, truth in zip(grids.prompts, grids.cells, grids.truth, strict=True):
            banned = {prompt, *related.get(prompt, [])}
            others = np.stack([text_vectors[w] for w in words if w not in banned])
            scores = cell_scores(rule, image_vectors[rows], text_vectors[prompt], others, logit_scale)
            low.append(scores[~truth].max())
            high.append(scores[truth].min())
            all_scores.append(scores)
            all_truth.append(truth)
        threshold, solved = best_threshold(np.asarray(low), np.asarray(high))
        slope = fit_slope(np.concatenate(all_scores), np.concatenate(all_truth), threshold)
        rules[rule] = RuleParams(float(threshold), float(slope), solved / len(grids.prompts)).to_dict()
        log.info("rule %s: threshold %.4f, simulated validation grids solved %.4f", rule, threshold, solved / count)
    best = max(RULES, key=lambda r: rules[r]["valid_solve_rate"])
    return {"rule": best, "rules": rules, "unsure_band": 0.3, "calibration": {"grids": count, "cells": len(texts)}}
