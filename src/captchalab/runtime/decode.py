"""Turn model outputs into strings. Used by the runtime and by training's validation: one decoder, no drift."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from captchalab.errors import CaptchalabError

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
    merged = np.exp(log_probs) @ _fold_matrix(chars).astype(log_probs.dtype)  # (B, T, K'+1): one matmul, not K adds
    return np.log(np.maximum(merged, 1e-30)), folded


@functools.lru_cache(maxsize=8)
def _fold_matrix(chars: str) -> np.ndarray:
    """(K+1, K'+1) 0/1 matrix sending each class (blank first) to its folded class."""
    folded = fold_case_charset(chars)
    target = [0] + [folded.index(c.lower()) + 1 for c in chars]
    matrix = np.zeros((len(chars) + 1, len(folded) + 1), dtype=np.float32)
    matrix[np.arange(len(target)), target] = 1.0
    return matrix


def fold_case_charset(chars: str) -> str:
    """The charset ``fold_case`` decodes into: lower case, duplicates dropped, first-seen order."""
    return "".join(dict.fromkeys(c.lower() for c in chars))


def allowed_chars(spec: str, model_chars: str) -> str:
    """The model characters an output alphabet (``'lower+digits'``, ``'0123456789'``, ...) allows, in model order.

    Letters of the other case count when the model has only one case of them; characters of the alphabet that the
    model never outputs are simply never read. Raises CaptchalabError when the two have nothing in common.
    """
    from captchalab.data.charset import parse_charset_spec

    known = set(model_chars)
    wanted = {c if c in known or c.swapcase() not in known else c.swapcase() for c in parse_charset_spec(spec)}
    allowed = "".join(c for c in model_chars if c in wanted)
    if not allowed:
        raise CaptchalabError(f"--charset {spec!r}: the model cannot output any of these characters")
    return allowed


def choose_alphabets(
    log_probs: np.ndarray, chars: str, alphabets: Sequence[str], priors: Sequence[float] | None = None
) -> np.ndarray:
    """Per image, the index of the alphabet (each a subset of ``chars``) that best explains the model's output.

    (B, T, K+1) log-probabilities -> (B,) indices into ``alphabets``; ``priors`` (one per alphabet, default equal)
    weigh the alphabets before the evidence. A model trained on a mix of captcha families
    (a-z0-9, A-Z0-9, a-zA-Z0-9) has learnt a prior over all of its classes; told that the captcha comes from one
    alphabet A, the evidence for A is the greedy path within A (blank included, not renormalised) times |K|/|A| per
    character read, the Bayes factor of a uniform prior over A against one over all K classes. A glyph as likely
    'O' as '0' among clear lower-case letters then reads '0': no capital letter is expected there.
    """
    scores = np.empty((len(alphabets), log_probs.shape[0]), dtype=np.float64)
    for a, alphabet in enumerate(alphabets):
        restricted = log_probs[..., _class_indices(chars, alphabet)]  # (B, T, |A|+1)
        best = restricted.argmax(-1)  # (B, T); 0 = blank
        emitted = (best[:, 0] != 0) + ((best[:, 1:] != 0) & (best[:, 1:] != best[:, :-1])).sum(-1)  # (B,)
        scores[a] = restricted.max(-1).sum(-1) + emitted * np.log(len(chars) / len(alphabet))
    if priors is not None:
        scores += np.log(np.asarray(priors, dtype=np.float64))[:, None]
    return scores.argmax(0)


@functools.lru_cache(maxsize=32)
def _class_indices(chars: str, allowed: str) -> np.ndarray:
    """The blank and the model classes of ``allowed``, in model order."""
    wanted = set(allowed)
    return np.array([0] + [i + 1 for i, c in enumerate(chars) if c in wanted])


def restrict_charset(log_probs: np.ndarray, chars: str, allowed: str) -> tuple[np.ndarray, str]:
    """Keep the blank and the classes of ``allowed`` (a subset of ``chars``), renormalised: (B, T, K+1) ->
    (B, T, K'+1). A reader told the alphabet (as ddddocr's ``set_ranges``) can no longer answer 'O' for a '0'
    in an a-z0-9 captcha."""
    kept = log_probs[..., _class_indices(chars, allowed)]
    top = kept.max(-1, keepdims=True)
    kept = kept - (top + np.log(np.exp(kept - top).sum(-1, keepdims=True)))
    return kept, _restricted_chars(chars, allowed)


@functools.lru_cache(maxsize=32)
def _restricted_chars(chars: str, allowed: str) -> str:
    """The characters of ``chars`` that ``allowed`` has, in model order (cached: it is asked once per batch)."""
    wanted = set(allowed)
    return "".join(c for c in chars if c in wanted)


def check_charset(chars: object) -> None:
    """ValueError unless ``chars`` is a model charset: a non-empty string of distinct characters."""
    if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
        raise ValueError(f"charset {chars!r} is not a string of distinct characters")
