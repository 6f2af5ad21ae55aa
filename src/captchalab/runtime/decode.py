"""Turn model outputs into strings. Used by the runtime and by training's validation: one decoder, no drift."""

from __future__ import annotations

import numpy as np

DECODERS = ("ctc-greedy", "fixed")


def decode(log_probs: np.ndarray, chars: str, decoder: str) -> list[tuple[str, float]]:
    """(B, T, K+1) log-probabilities, class 0 = blank/padding -> [(text, confidence)] per image.

    ``ctc-greedy``: best class per step, merge repeats, drop blanks. ``fixed``: best class per position, drop padding.
    Confidence is the probability of the chosen path (product of the per-step maxima).
    """
    best = log_probs.argmax(-1)  # (B, T)
    confidence = np.exp(log_probs.max(-1).sum(-1))  # (B,)
    if decoder == "ctc-greedy":
        keep = best != 0
        keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    elif decoder == "fixed":
        keep = best != 0
    else:
        raise ValueError(f"unknown decoder {decoder!r}")
    return [("".join(chars[i - 1] for i in row[mask]), float(conf)) for row, mask, conf in zip(best, keep, confidence)]


def fold_case(log_probs: np.ndarray, chars: str) -> tuple[np.ndarray, str]:
    """Merge each letter's upper- and lower-case classes (probabilities summed) for case-insensitive reading.

    (B, T, K+1) over ``chars`` -> (B, T, K'+1) over the folded charset (lower case, first-seen order).
    Reading 'c' or 'C' becomes one class, so a glyph whose case is ambiguous no longer splits its probability.
    """
    folded = fold_case_charset(chars)
    target = np.array([0] + [folded.index(c.lower()) + 1 for c in chars])
    probs = np.exp(log_probs)
    merged = np.zeros(log_probs.shape[:-1] + (len(folded) + 1,), dtype=probs.dtype)
    for source, dest in enumerate(target):
        merged[..., dest] += probs[..., source]
    return np.log(np.maximum(merged, 1e-30)), folded


def fold_case_charset(chars: str) -> str:
    """The charset ``fold_case`` decodes into: lower case, duplicates dropped, first-seen order."""
    return "".join(dict.fromkeys(c.lower() for c in chars))
