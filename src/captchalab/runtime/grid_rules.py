"""Decision rules for picture grids: which cells match the prompt, with a probability per cell.

Every rule turns a cell's image vector into one score, and a cell is picked when its score reaches the rule's
threshold. Thresholds (and the slope that turns a score into a probability) are calibrated on validation data at
export time, to maximise the whole-grid solve rate; they live in the bundle manifest under ``decision``.

- ``threshold``: cosine(image, prompt).
- ``margin``: cosine(image, prompt) - the best cosine of the image to any *other* known prompt word.
- ``softmax`` (the reference article's rule): softmax of logit_scale * cosine over the prompt and every other known
  word (the article's "dummy texts"); the score is the prompt's share.

Every rule may also pick cells scoring within ``relative`` of the grid's best cell. A grid always has a match, and
on pictures unlike the training data (a new art style) the matching cells' scores fall together, below a threshold
calibrated in-distribution, while staying close to each other; ``relative`` (0 = off) is fitted by
``captchalab grid calibrate`` on labelled grids of the target kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("threshold", "margin", "softmax")


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


def cell_scores(rule: str, cells: np.ndarray, prompt: np.ndarray, others: np.ndarray, logit_scale: float) -> np.ndarray:
    """cells (N, D) and prompt (D,) unit vectors, others (K, D) the other known words -> (N,) scores."""
    other = cells @ others.T if rule != "threshold" and len(others) else np.zeros((len(cells), 0), cells.dtype)
    return rule_scores(rule, cells @ prompt, other, logit_scale)


def rule_scores(rule: str, similarity: np.ndarray, other: np.ndarray, logit_scale: float) -> np.ndarray:
    """A cell's similarity to the prompt (N,) and to every other known word (N, K) -> (N,) scores of ``rule``."""
    if rule == "threshold" or other.shape[1] == 0:
        return similarity
    if rule == "margin":
        return similarity - other.max(axis=1)
    if rule == "softmax":
        logits = logit_scale * np.concatenate([similarity[:, None], other], axis=1)  # (N, 1 + K)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights[:, 0] / weights.sum(axis=1)
    raise ValueError(f"unknown decision rule {rule!r}; known: {', '.join(RULES)}")


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
