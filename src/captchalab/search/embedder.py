"""What the search index needs from a model: an object that turns images (and maybe texts) into unit vectors.

Any bundle with an image tower fits; the index never imports torch or onnxruntime itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from captchalab.errors import CaptchalabError


@runtime_checkable
class ImageEmbedder(Protocol):
    """Turns images into L2-normalised float32 vectors.

    ``model_id`` identifies the weights (a bundle's sha256, say): an index refuses vectors from another model.
    """

    model_id: str
    dim: int

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """RGB images -> (N, dim) float32, each row of unit length."""
        ...


@runtime_checkable
class TextEmbedder(ImageEmbedder, Protocol):
    """An image embedder whose model also has a text tower (CLIP-like), so text can query images."""

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, dim) float32, each row of unit length, in the same space as the images."""
        ...


def normalize_rows(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """Check an (N, dim) array of finite numbers and return it as C-contiguous float32 rows of unit length."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what}: expected shape (N, {dim}), got {tuple(np.shape(vectors))}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def embed_images_checked(embedder: ImageEmbedder, images: list[Image.Image]) -> np.ndarray:
    """``embedder.embed_images`` with its output checked: one unit row per image."""
    vectors = normalize_rows(embedder.embed_images(images), embedder.dim, f"model {embedder.model_id}")
    if len(vectors) != len(images):
        raise ValueError(f"model {embedder.model_id}: {len(vectors)} vectors for {len(images)} images")
    return vectors


def embed_texts_checked(embedder: ImageEmbedder, texts: list[str]) -> np.ndarray:
    """``embedder.embed_texts`` checked; a model without a text tower is a user error."""
    embed_texts = getattr(embedder, "embed_texts", None)
    if embed_texts is None:
        raise CaptchalabError(f"model {embedder.model_id} has no text tower: search by text needs an image-text model")
    vectors = normalize_rows(embed_texts(texts), embedder.dim, f"model {embedder.model_id}")
    if len(vectors) != len(texts):
        raise ValueError(f"model {embedder.model_id}: {len(vectors)} vectors for {len(texts)} texts")
    return vectors
