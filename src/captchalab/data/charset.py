"""Character sets: parse specs such as ``lower+digits`` and encode/decode labels."""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

from captchalab.errors import CaptchalabError

PRESETS = {
    "digits": string.digits,
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "alpha": string.ascii_lowercase + string.ascii_uppercase,
    "alnum": string.ascii_lowercase + string.ascii_uppercase + string.digits,
}


def parse_charset_spec(spec: str) -> str:
    """``'lower+digits'`` -> ``'abc...xyz0123456789'``; parts that are not preset names are taken literally.

    The result keeps first-seen order and drops duplicates.
    """
    if not spec:
        raise CaptchalabError("charset spec is empty (try 'alnum', 'lower+digits' or literal characters)")
    chars = "".join(PRESETS.get(part, part) for part in spec.split("+"))
    if not chars:
        raise CaptchalabError(f"charset spec {spec!r} names no characters (try 'alnum', 'lower+digits' or literals)")
    return "".join(dict.fromkeys(chars))


def parse_alphabets(text: str) -> dict[str, float]:
    """``'lower+digits:0.2,upper+digits:0.2,alnum:0.6'`` -> {spec: prior probability}, priors normalised to sum 1;
    a spec without ``:p`` gets weight 1. These are the captcha alphabets a model was trained on, for ``--charset
    auto`` (see ``runtime.decode.choose_alphabets``)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        spec, _, weight = part.partition(":")
        parse_charset_spec(spec)  # fails on an empty spec
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise CaptchalabError(f"alphabet {part!r}: the prior after ':' must be a number") from None
        if not 0 < value < float("inf"):
            raise CaptchalabError(f"alphabet {part!r}: the prior must be a positive number")
        weights[spec] = weights.get(spec, 0.0) + value
    if not weights:
        raise CaptchalabError("no alphabet given (e.g. lower+digits,upper+digits,alnum)")
    total = sum(weights.values())
    return {spec: weight / total for spec, weight in weights.items()}


class Charset:
    """An ordered set of characters; class index ``i`` of a model is ``chars[i]`` (CTC adds blank = 0 itself)."""

    def __init__(self, chars: str):
        if not chars:
            raise CaptchalabError("the character set is empty")
        if len(set(chars)) != len(chars):
            raise ValueError(f"duplicate characters in charset {chars!r}")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> Charset:
        """Charset derived from the labels (sorted, so the same labels always give the same model classes)."""
        return cls("".join(sorted(set("".join(labels)))))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self._index

    def unknown(self, label: str) -> str:
        """The characters of ``label`` that are not in this charset."""
        return "".join(sorted({c for c in label if c not in self._index}))

    def encode(self, label: str) -> list[int]:
        return [self._index[c] for c in label]

    def decode(self, indices: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in indices)
