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
    return "".join(dict.fromkeys(chars))


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
