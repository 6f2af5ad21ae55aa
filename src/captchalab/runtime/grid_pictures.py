"""Pictures a grid bundle remembers of each word: a few prototype vectors per word, from labelled cells.

The text tower gives one vector per word, in effect the average look of every drawing of that word it was trained
on. A new drawing often resembles one of those drawings more than their average, so the solver can also compare a
cell with the word's pictures: the similarity of a cell to a word becomes

    weight * cosine(cell, text vector) + (1 - weight) * max over the word's prototypes of cosine(cell, prototype)

(words without pictures keep their text similarity). Prototypes are k-means centres of the word's cell vectors,
made by ``captchalab grid calibrate --pictures CELLS``, which also fits ``weight`` and the decision rules on labelled
grids. Stored as ``pictures.npz`` in the bundle: ``words`` (W,) and ``vectors`` (M, D) float16, rows grouped by word,
``starts`` (W,) the first row of each word. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError

PICTURES_FILE = "pictures.npz"


@dataclass(frozen=True)
class WordPictures:
    words: tuple[str, ...]  # W distinct words
    vectors: np.ndarray  # (M, D) float32 unit rows, grouped by word
    starts: np.ndarray  # (W,) first row of each word's group

    def __post_init__(self) -> None:
        ordered = len(self.starts) == 0 or (self.starts[0] == 0 and bool(np.all(np.diff(self.starts) > 0)))
        if len(self.words) != len(self.starts) or len(set(self.words)) != len(self.words) or not ordered:
            raise ValueError("pictures: one increasing start row per distinct word")
        if self.vectors.ndim != 2 or (len(self.starts) and self.starts[-1] >= len(self.vectors)):
            raise ValueError("pictures: the vectors do not fit the start rows")

    @classmethod
    def from_groups(cls, groups: dict[str, np.ndarray]) -> WordPictures:
        """{word: (k, D) prototype vectors} -> WordPictures (rows normalised)."""
        words = tuple(groups)
        sizes = [len(groups[w]) for w in words]
        vectors = np.concatenate([groups[w] for w in words]).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return cls(words, vectors, np.cumsum([0, *sizes[:-1]]).astype(np.int64))

    @classmethod
    def load(cls, path: Path) -> WordPictures:
        try:
            with np.load(path, allow_pickle=False) as data:
                words, vectors, starts = data["words"], data["vectors"], data["starts"]
            return cls(tuple(str(w) for w in words), vectors.astype(np.float32), starts.astype(np.int64))
        except (OSError, KeyError, ValueError) as exc:
            raise CaptchalabError(f"{path}: not a readable pictures file ({exc})") from None

    def save(self, path: Path) -> None:
        np.savez(path, words=np.asarray(self.words), vectors=self.vectors.astype(np.float16), starts=self.starts)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    @cached_property
    def _index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @cached_property
    def _columns(self) -> np.ndarray:
        """(D, M) C-contiguous: cells @ it is ~2x faster than cells @ vectors.T."""
        return np.ascontiguousarray(self.vectors.T)

    def similarity(self, cells: np.ndarray) -> np.ndarray:
        """(N, D) unit cell vectors -> (N, W): each cell's best cosine to each word's prototypes."""
        return np.maximum.reduceat(cells @ self._columns, self.starts, axis=1)


def blend(text_similarity: np.ndarray, picture_similarity: np.ndarray | None, weight: float) -> np.ndarray:
    """Text similarities (N, K) blended with the picture similarities of the same words (N, K; NaN where a word has
    no pictures: it keeps its text similarity)."""
    if picture_similarity is None or weight >= 1.0:
        return text_similarity
    mixed = weight * text_similarity + (1.0 - weight) * picture_similarity
    return np.where(np.isnan(picture_similarity), text_similarity, mixed)


def picture_columns(pictures: WordPictures, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For ``words``: (column of each in ``WordPictures.similarity``'s output or 0, mask of those that have one)."""
    index = pictures._index
    has = np.array([w in index for w in words], dtype=bool)
    return np.array([index.get(w, 0) for w in words], dtype=np.int64), has


def kmeans_prototypes(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """(n, D) unit vectors -> (min(k, n), D) cluster centres (spherical k-means, k-means++ start, seeded)."""
    n = len(vectors)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [vectors[rng.integers(n)]]
    for _ in range(k - 1):
        distance = np.maximum(1.0 - np.max(vectors @ np.stack(centres).T, axis=1), 0.0)
        total = distance.sum()
        centres.append(vectors[rng.choice(n, p=distance / total)] if total > 0 else vectors[rng.integers(n)])
    centres = np.stack(centres)
    for _ in range(iterations):
        nearest = np.argmax(vectors @ centres.T, axis=1)
        for j in range(k):
            members = vectors[nearest == j]
            if len(members):
                centres[j] = members.mean(0)
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres
