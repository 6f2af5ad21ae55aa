"""An image-text bundle in onnxruntime: image and text towers -> unit vectors. Torch-free, thread-safe.

Bundle (task ``grid``): ``image.onnx`` (images (N, 3, S, S) float32 -> (N, D)), ``text.onnx`` (token ids (N, L)
int64 -> (N, D)), ``vocab.txt`` and ``manifest.json`` with ``image.preprocess``, ``text.context_length``,
``logit_scale``, ``decision`` and ``prompts``. Also serves the search index as its embedder.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

from captchalab.imaging import ClipPreprocess
from captchalab.runtime.bundle import Bundle, load_bundle, onnx_session, reading_manifest, sha256_file
from captchalab.runtime.tokenizer import BertTokenizer

IMAGE_BATCH = 64


class ClipModel:
    """``embed_images`` / ``embed_texts`` return L2-normalised float32 rows; text vectors are cached per text."""

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.bundle = bundle
        with reading_manifest(self.bundle):
            manifest = bundle.manifest
            self.preprocess = ClipPreprocess.from_dict(manifest["image"]["preprocess"])
            self.tokenizer = BertTokenizer(bundle.file("vocab"), manifest["text"]["context_length"])
            self._threads, self._providers = threads, providers
            self._sessions: dict[str, object] = {}  # made on first use: a text query never loads the image tower
            self.dim = int(manifest["embed_dim"])
            self.logit_scale = float(manifest["logit_scale"])
            digest = hashlib.sha256()
            for key in ("image", "text"):
                name = manifest["files"][key]
                digest.update((manifest.get("sha256", {}).get(name) or sha256_file(bundle.file(key))).encode())
            self.model_id = f"grid:{digest.hexdigest()[:16]}"
        self._text_cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def load_all(self) -> ClipModel:
        """Open both towers now (a server does this at start, so it never touches the bundle files again)."""
        self._session("image")
        self._session("text")
        return self

    def _session(self, key: str):  # noqa: ANN202
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = onnx_session(self.bundle.file(key), self._threads, self._providers)
            return self._sessions[key]

    def image_input(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, 3, S, S) float32, exactly as training saw them."""
        return self.preprocess.normalize(np.stack([self.preprocess.to_uint8(image) for image in images]))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for start in range(0, len(images), IMAGE_BATCH):
            x = self.image_input(images[start : start + IMAGE_BATCH])
            chunks.append(self._session("image").run(None, {"image": x})[0])
        return _unit(np.concatenate(chunks))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._text_cache})
        if missing:
            vectors = _unit(self._session("text").run(None, {"token_ids": self.tokenizer.encode(missing)})[0])
            with self._lock:
                self._text_cache.update(zip(missing, vectors, strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._text_cache[t] for t in texts])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


_MODELS: dict[tuple[str, int | None], ClipModel] = {}
_MODELS_LOCK = threading.Lock()


def load_clip(model: str | os.PathLike = "default", threads: int | None = None) -> ClipModel:
    """``default`` or a grid bundle folder -> a ClipModel, loaded once per process and reused."""
    key = (str(model), threads)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = ClipModel(load_bundle(model, "grid"), threads)
        return _MODELS[key]
