"""BERT WordPiece tokenisation as Chinese-CLIP does it, on any ``vocab.txt`` (torch-free, HF ``tokenizers``).

Chinese-CLIP: lower-case, “ ” -> ", every CJK character its own token, ``[CLS] ids [SEP]`` right-padded with 0 to
``context_length``. The same code serves Chinese-CLIP's 21128-token vocab and the small character vocab of our
default model (``build_char_vocab``), so one bundle format covers both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError

PAD_ID = 0
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def frame_token_ids(wordpiece_ids: Sequence[int], cls_id: int, sep_id: int, context_length: int = 52) -> list[int]:
    """``[CLS] + ids[:context_length - 2] + [SEP]``, right-padded with 0 to ``context_length``."""
    ids = [cls_id, *list(wordpiece_ids)[: context_length - 2], sep_id]
    return ids + [PAD_ID] * (context_length - len(ids))


def clean_text(text: str) -> str:
    """What Chinese-CLIP's loader does before tokenising: curly quotes to plain ones, lower case."""
    return text.replace("“", '"').replace("”", '"').strip().lower()


def build_char_vocab(texts: Iterable[str]) -> list[str]:
    """A BERT-style vocab: the special tokens, then every character of ``texts`` (after cleaning), sorted.

    ASCII letters and digits (and their ``##`` word-continuation forms) are always in, so Latin words spell out
    letter by letter instead of becoming [UNK] wholesale.
    """
    ascii_chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    chars = {c for text in texts for c in clean_text(text) if not c.isspace()} | set(ascii_chars)
    return [*SPECIALS, *sorted(chars), *(f"##{c}" for c in ascii_chars)]


def write_vocab(tokens: Sequence[str], path: str | Path) -> None:
    Path(path).write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")


class BertTokenizer:
    """Thread-safe: ``encode`` keeps no state between calls (the HF tokenizer is read-only after construction)."""

    def __init__(self, vocab_file: str | Path, context_length: int = 52) -> None:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {token: index for index, token in enumerate(lines) if token}
        for token in ("[UNK]", "[CLS]", "[SEP]"):
            if token not in self.vocab:
                raise CaptchalabError(f"{vocab_file}: vocab has no {token} token")
        if lines[PAD_ID] != "[PAD]":
            raise CaptchalabError(f"{vocab_file}: the first token must be [PAD] (id 0)")
        tokenizer = Tokenizer(models.WordPiece(vocab=self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.context_length = context_length
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]

    def wordpieces(self, text: str) -> list[int]:
        with self._lock:  # the Rust tokenizer is safe, but its Python wrapper is cheap to serialise
            return self._tokenizer.encode(clean_text(text), add_special_tokens=False).ids

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, context_length) int64 ids."""
        rows = [frame_token_ids(self.wordpieces(t), self.cls_id, self.sep_id, self.context_length) for t in texts]
        return np.asarray(rows, dtype=np.int64).reshape(len(texts), self.context_length)

    def unknown_fraction(self, text: str) -> float:
        """Share of the text's tokens that are [UNK] (1.0 for text with no tokens)."""
        ids = self.wordpieces(text)
        return sum(i == self.unk_id for i in ids) / len(ids) if ids else 1.0
