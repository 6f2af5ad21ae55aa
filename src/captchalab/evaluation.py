"""OCR scores shared by training, ``ocr eval`` and the benchmarks (torch-free)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % for the default z): unlike p +- z*sqrt(p(1-p)/n), it stays inside
    [0, 1] and does not collapse to a point when every image (or none) is right. (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def ocr_report(
    predictions: Sequence[str], labels: Sequence[str], case_sensitive: bool = True, top_confusions: int = 10
) -> dict:
    """Whole-string accuracy, per-character accuracy (1 - character error rate) and the most confused pairs."""
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    fold = (lambda s: s) if case_sensitive else str.lower
    exact = errors = total_chars = 0
    confusions: Counter[tuple[str, str]] = Counter()
    for pred, label in zip(predictions, labels):
        pred, label = fold(pred), fold(label)
        exact += pred == label
        errors += edit_distance(pred, label)
        total_chars += len(label)
        for op, i1, i2, j1, j2 in SequenceMatcher(None, label, pred, autojunk=False).get_opcodes():
            if op == "replace" and i2 - i1 == j2 - j1:
                confusions.update(zip(label[i1:i2], pred[j1:j2]))
    n = max(len(labels), 1)
    return {
        "images": len(labels),
        "exact_accuracy": exact / n,
        # how far the accuracy of more images like these could be: a few thousand test images leave about +-0.5 pt
        "exact_accuracy_ci95": list(wilson_interval(exact, len(labels))),
        # clamped: total edits can exceed the label characters when readings are much longer than labels
        "char_accuracy": max(0.0, 1.0 - errors / max(total_chars, 1)),
        "case_sensitive": case_sensitive,
        "top_confusions": [
            {"true": t, "predicted": p, "count": c} for (t, p), c in confusions.most_common(top_confusions)
        ],
    }
