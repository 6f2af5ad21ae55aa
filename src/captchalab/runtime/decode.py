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


def project(log_probs: np.ndarray, chars: str, allowed: str | None, fold: bool) -> tuple[np.ndarray, str]:
    """(B, T, K+1) log-probabilities over ``chars`` -> (B, T, K'+1) over the returned characters: only the blank and
    the classes of ``allowed`` (a subset of ``chars``; None: all) kept, renormalised, then with ``fold`` each letter's
    two cases merged into one lower-case class (first-seen order), their probabilities summed.

    Restricting is how a reader told the alphabet (as ddddocr's ``set_ranges``) can no longer answer 'O' for a '0' in
    an a-z0-9 captcha; folding, how a glyph whose case is ambiguous ('c' or 'C') stops splitting its probability
    between two classes before the argmax. Both are sums of probabilities and a renormalisation, so one 0/1 matrix
    does them together: one float64 matmul (no underflow for the values a softmax gives) and a few numpy calls for a
    whole batch, which matters because this runs for every captcha read."""
    matrix, out_chars = _projection(chars, allowed, fold)
    probs = np.exp(log_probs.astype(np.float64)) @ matrix  # (B, T, K'+1)
    total = np.maximum(probs.sum(-1, keepdims=True), 1e-300)
    return np.log(np.maximum(probs, 1e-300) / total).astype(np.float32), out_chars


@functools.lru_cache(maxsize=32)
def _projection(chars: str, allowed: str | None, fold: bool) -> tuple[np.ndarray, str]:
    """(K+1, K'+1) 0/1 matrix sending the blank and each kept class to its output class, and the output chars."""
    kept = chars if allowed is None else _restricted_chars(chars, allowed)
    out_chars = fold_case_charset(kept) if fold else kept
    target = {c: out_chars.index(c.lower() if fold else c) + 1 for c in kept}
    matrix = np.zeros((len(chars) + 1, len(out_chars) + 1), dtype=np.float64)
    matrix[0, 0] = 1.0
    for i, c in enumerate(chars):
        if c in target:
            matrix[i + 1, target[c]] = 1.0
    matrix.setflags(write=False)
    return matrix, out_chars


def fold_case_charset(chars: str) -> str:
    """The charset folded readings decode into (``project`` with ``fold``): lower case, duplicates dropped, first-seen
    order."""
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
    masks, bayes = _alphabet_masks(chars, tuple(alphabets))  # (A, K+1), (A,)
    # every alphabet at once (a few numpy calls whatever their number): classes outside one are -inf for it
    masked = np.where(masks[:, None, None, :], log_probs[None], log_probs.dtype.type(-np.inf))  # (A, B, T, K+1)
    best = masked.argmax(-1)  # (A, B, T); 0 = blank
    emitted = (best[..., 0] != 0) + ((best[..., 1:] != 0) & (best[..., 1:] != best[..., :-1])).sum(-1)  # (A, B)
    scores = masked.max(-1).sum(-1).astype(np.float64) + emitted * bayes[:, None]
    if priors is not None:
        scores += np.log(np.asarray(priors, dtype=np.float64))[:, None]
    return scores.argmax(0)


@functools.lru_cache(maxsize=32)
def _alphabet_masks(chars: str, alphabets: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(A, K+1) bool: the blank and each alphabet's classes; (A,) log(|K| / |A|), the Bayes factor per character."""
    masks = np.zeros((len(alphabets), len(chars) + 1), dtype=bool)
    for a, alphabet in enumerate(alphabets):
        masks[a, _class_indices(chars, alphabet)] = True
    bayes = np.log([len(chars) / len(alphabet) for alphabet in alphabets])
    return masks, bayes


@functools.lru_cache(maxsize=32)
def _class_indices(chars: str, allowed: str) -> np.ndarray:
    """The blank and the model classes of ``allowed``, in model order."""
    wanted = set(allowed)
    return np.array([0] + [i + 1 for i, c in enumerate(chars) if c in wanted])


@functools.lru_cache(maxsize=32)
def _restricted_chars(chars: str, allowed: str) -> str:
    """The characters of ``chars`` that ``allowed`` has, in model order (cached: it is asked once per batch)."""
    wanted = set(allowed)
    return "".join(c for c in chars if c in wanted)


def check_charset(chars: object) -> None:
    """ValueError unless ``chars`` is a model charset: a non-empty string of distinct characters."""
    if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
        raise ValueError(f"charset {chars!r} is not a string of distinct characters")
