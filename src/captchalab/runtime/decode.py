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
