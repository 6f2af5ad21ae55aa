"""Decision rules for picture grids: which cells match the prompt, with a probability per cell.

Every rule turns a cell's image vector into one score, and a cell is picked when its score reaches the rule's
threshold. Thresholds (and the slope that turns a score into a probability) are calibrated on validation data at
export time, to maximise the whole-grid solve rate; they live in the bundle manifest under ``decision``.

- ``threshold``: cosine(image, prompt).
- ``margin``: cosine(image, prompt) - the best cosine of the image to any *other* known prompt word.
- ``softmax`` (the reference article's rule): softmax of logit_scale * cosine over the prompt and every other known
  word (the article's "dummy texts"); the score is the prompt's share.
- ``context``: a logistic model of each cell's margin seen in its grid (its gap to the grid's best cell and to its
  neighbours in the ranking, its rank, ...) and of how closely its picture resembles another cell's
  (``CONTEXT_FEATURES``); the score is the log-odds of a match and the threshold 0. Fitted at export and again on
  labelled grids by ``grid calibrate``: it depends on where a cell stands among the others more than on the level of
  its score, which shifts with the art style. The resemblance counts because a grid's other cells show other words,
  one each, while its matching cells show one thing: two cells that look alike are most likely both matches.

Every rule may also pick cells scoring within ``relative`` of the grid's best cell. A grid always has a match, and
on pictures unlike the training data (a new art style) the matching cells' scores fall together, below a threshold
calibrated in-distribution, while staying close to each other; ``relative`` (0 = off) is fitted by
``captchalab grid calibrate`` on labelled grids of the target kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("threshold", "margin", "softmax")  # rules of one score per cell with a fitted threshold
LEARNED_RULES = ("context",)  # rules with a fitted model of the cell in its grid (threshold 0 on its log-odds)
ALL_RULES = RULES + LEARNED_RULES
PEER_KNOTS = (0.4, 0.6, 0.8)  # the peer cosine enters piecewise linearly: being alike counts more when close
CONTEXT_FEATURES = ("margin", "margin_below_best", "similarity", "similarity_below_best", "margin_z", "gap_below",
                    "gap_above", "is_best", "in_top4", "nine_cells", "other_words_gap",
                    "peer", *(f"peer_above_{knot}" for knot in PEER_KNOTS))  # fmt: skip


@dataclass(frozen=True)
class RuleParams:
    threshold: float
    slope: float  # probability = sigmoid(slope * (score - effective threshold))
    valid_solve_rate: float | None = None
    relative: float = 0.0  # also pick cells within this of the grid's best score (0: threshold only)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "slope": self.slope, "valid_solve_rate": self.valid_solve_rate,
                "relative": self.relative}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> RuleParams:
        relative = float(data.get("relative", 0.0))
        return cls(float(data["threshold"]), float(data["slope"]), data.get("valid_solve_rate"), relative)

    def cutoff(self, scores: np.ndarray) -> float:
        """The grid's effective threshold: a cell is picked when its score reaches it. Never above the best cell's
        score: a grid always has a match, so the best cell is picked even when nothing reaches the threshold."""
        return min(self.threshold, float(scores.max()) - max(self.relative, 0.0))


@dataclass(frozen=True)
class ContextModel:
    """Logistic regression over some of the ``context_features`` (``features``, by default all of them):
    log-odds = ((x - mean) / scale) @ weights + bias. Bundles fitted before a feature was added keep working."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (F,)
    bias: float
    features: tuple[str, ...] = CONTEXT_FEATURES

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """(N, len(CONTEXT_FEATURES)) as ``context_features`` gives them -> (N,)."""
        if self.features != CONTEXT_FEATURES:
            features = features[:, [CONTEXT_FEATURES.index(name) for name in self.features]]
        return (features - self.mean) / self.scale @ self.weights + self.bias

    def to_dict(self) -> dict:
        return {"features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> ContextModel:
        features = tuple(data.get("features", ()))
        unknown = [name for name in features if name not in CONTEXT_FEATURES]
        if not features or unknown or len(set(features)) != len(features):
            raise ValueError(f"context model of other features ({data.get('features')}); this version computes "
                             f"{', '.join(CONTEXT_FEATURES)}")  # fmt: skip
        arrays = [np.asarray(data[key], dtype=np.float64) for key in ("mean", "scale", "weights")]
        if any(a.shape != (len(features),) for a in arrays):
            raise ValueError("context model: mean, scale and weights need one value per feature")
        return cls(*arrays, float(data["bias"]), features)


def peer_similarity(cells: np.ndarray) -> np.ndarray:
    """Unit cell vectors (N, D) -> (N,) each cell's cosine to the cell most like it (0 for a lone cell)."""
    if len(cells) < 2:
        return np.zeros(len(cells))
    gram = cells @ cells.T
    np.fill_diagonal(gram, -np.inf)
    return gram.max(axis=1)


def context_features(similarity: np.ndarray, other: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """A grid's similarities to the prompt (N,) and to the other known words (N, K >= 2), and its unit cell vectors
    (N, D) -> (N, F) features of each cell among the grid's cells (``CONTEXT_FEATURES``; the margin is similarity -
    best other word; the peer is the cosine to the most alike other cell)."""
    top2 = np.partition(other, other.shape[1] - 2, axis=1)[:, -2:]  # (N, 2): second best, best
    best_other, second_other = top2.max(axis=1), top2.min(axis=1)
    margin = similarity - best_other
    order = np.argsort(-margin, kind="stable")
    rank = np.empty(len(margin), dtype=np.int64)
    rank[order] = np.arange(len(margin))
    ranked = margin[order]  # best first
    below = np.append(ranked[1:], ranked[-1])[rank]  # the next lower margin (the lowest cell: its own)
    above = np.insert(ranked[:-1], 0, ranked[0])[rank]  # the next higher margin (the best cell: its own)
    columns = [
        margin,
        margin - margin.max(),
        similarity,
        similarity - similarity.max(),
        (margin - margin.mean()) / (margin.std() + 1e-6),
        margin - below,
        above - margin,
        rank == 0,
        rank < 4,
        np.full(len(margin), len(margin) == 9),
        best_other - second_other,
    ]
    peer = peer_similarity(cells)
    columns += [peer, *(np.maximum(peer - knot, 0.0) for knot in PEER_KNOTS)]
    return np.stack(columns, axis=1).astype(np.float64)


def rule_scores(
    rule: str,
    similarity: np.ndarray,
    other: np.ndarray,
    logit_scale: float,
    context: ContextModel | None = None,
    cells: np.ndarray | None = None,
) -> np.ndarray:
    """A cell's similarity to the prompt (N,) and to every other known word (N, K) -> (N,) scores of ``rule``
    (``context``: the fitted model of the ``context`` rule, which also needs the unit cell vectors ``cells`` (N, D))."""
    if rule == "context":
        if context is None or cells is None or other.shape[1] < 2:
            raise ValueError("the context rule needs its fitted model, the cell vectors and two other known words")
        return context.log_odds(context_features(similarity, other, cells))
    if rule == "threshold" or other.shape[1] == 0:
        return similarity
    if rule == "margin":
        return similarity - other.max(axis=1)
    if rule == "softmax":
        logits = logit_scale * np.concatenate([similarity[:, None], other], axis=1)  # (N, 1 + K)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights[:, 0] / weights.sum(axis=1)
    raise ValueError(f"unknown decision rule {rule!r}; known: {', '.join(ALL_RULES)}")


def probabilities(scores: np.ndarray, params: RuleParams) -> np.ndarray:
    """Per-cell probability of a match; above 0.5 exactly for the cells the rule picks."""
    z = np.clip(params.slope * (scores - params.cutoff(scores)), -50, 50)
    return 1.0 / (1.0 + np.exp(-z))


def pick(scores: np.ndarray, params: RuleParams, unsure_band: float) -> tuple[list[int], list[float], bool]:
    """(0-based picked cells, probability per cell, unsure). At least one cell is always picked: a grid has one.

    Unsure: some cell's probability is within ``unsure_band`` of 0.5, or no cell reached the absolute threshold."""
    probs = probabilities(scores, params)
    picked = [int(i) for i in np.flatnonzero(scores >= params.cutoff(scores))]
    unsure = bool(np.any(np.abs(probs - 0.5) < unsure_band)) or not bool(np.any(scores >= params.threshold))
    return picked, [round(float(p), 4) for p in probs], unsure
