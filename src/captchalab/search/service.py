"""What the ``captchalab search`` commands do, one function each: index a folder, query it (through a running
server when there is one), classify an image against labels, list near-duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.imaging import ImageInput, load_image
from captchalab.search import client
from captchalab.search.embedder import embed_images_checked, embed_texts_checked
from captchalab.search.index import Hit, ImageIndex, UpdateReport
from captchalab.search.models import label_texts, load_model, model_for_index, model_spec
from captchalab.search.store import INDEX_NAME, META, no_index_error

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_TEXT = 2000  # characters in a text query, in-process and through the server alike
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# One query embeds one image or text: onnxruntime's thread pool costs more to start and tear down (~0.3 s on 2 cores)
# than it saves, so one-shot commands run the model on one thread; the server keeps onnxruntime's default.
ONE_SHOT_THREADS = 1


@dataclass(frozen=True)
class IndexRun:
    index: Path
    report: UpdateReport
    seconds: float  # the update itself, model loading excluded

    @property
    def embedded(self) -> int:
        return self.report.added + self.report.changed

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"index": str(self.index), **self.report.to_dict(), "seconds": self.seconds, "img_per_s": self.rate}


def default_index(folder: str | os.PathLike) -> Path:
    return Path(folder) / INDEX_NAME


def index_folder(
    folder: str | os.PathLike,
    index_path: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    workers: int | None = None,
    batch_size: int = 64,
) -> IndexRun:
    """Create or update the index of ``folder``; only new and changed images are embedded. ``model`` defaults
    to the one an existing index records, else the shipped default."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptchalabError(f"{folder}: no such folder")
    if batch_size < 1:
        raise CaptchalabError(f"--batch-size must be at least 1, not {batch_size}")
    index_path = Path(index_path) if index_path is not None else default_index(folder)
    spec, embedder = _model_to_index_with(index_path, model)
    index = ImageIndex.open(index_path, embedder, create=True)
    try:
        start = time.perf_counter()
        report = index.update(folder, embedder, batch_size=batch_size, workers=workers, model_spec=spec)
        return IndexRun(index_path, report, time.perf_counter() - start)
    except CaptchalabError:
        if index.store.discard_if_empty():  # e.g. an empty folder: leave no empty index of ours behind
            log.debug("%s: removed the empty index this run created", index_path)
        raise
    finally:
        index.close()


def _model_to_index_with(index_path: Path, model: str | os.PathLike | None) -> tuple[str | None, object]:
    """(spec to record or None to keep the recorded one, loaded model): ``model``, else the index's own model."""
    if model is None and (index_path / META).is_file():
        with ImageIndex.open(index_path) as existing:
            if existing.model_spec is not None:
                return None, model_for_index(existing)
    spec = model_spec(model if model is not None else "default")
    return spec, load_model(spec)


def check_query(text: str | None, image: str | os.PathLike | None, k: int) -> None:
    if (text is None) == (image is None):
        raise CaptchalabError("give either --text TEXT or --image PATH (exactly one)")
    if text is not None and not text.strip():
        raise CaptchalabError("the query text is empty")
    if text is not None and len(text) > MAX_TEXT:
        raise CaptchalabError(f"the query text is {len(text):,} characters long; the limit is {MAX_TEXT:,}")
    if text is not None and _LONE_SURROGATE.search(text):
        raise CaptchalabError("the query text is not valid UTF-8; check the terminal's encoding")
    if not 1 <= k <= MAX_K:
        raise CaptchalabError(f"-k must be between 1 and {MAX_K}, not {k}")


def to_json(data: object) -> str:
    """JSON with non-ASCII text as it is, except a file name that is not valid UTF-8: its undecodable bytes
    (surrogate escapes) become ``\\udcXX`` escapes, so the output stays valid UTF-8 and ``os.fsencode`` of the
    parsed string gives the name back."""
    text = json.dumps(data, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def search(index: ImageIndex, embedder: object, text: str | None, image: ImageInput | None, k: int) -> list[Hit]:
    """One text or image query against an open index (the in-process path, also the server's)."""
    if text is not None:
        return index.search_text(label_texts(embedder, [text])[0], embedder, k)  # type: ignore[arg-type]
    return index.search_image(image, embedder, k)  # type: ignore[arg-type]


def query(
    index_path: str | os.PathLike,
    text: str | None = None,
    image: str | os.PathLike | None = None,
    k: int = 10,
    model: str | os.PathLike | None = None,
    use_server: bool = True,
    threads: int | None = ONE_SHOT_THREADS,
) -> list[Hit]:
    """Top-k images for a text or an image, best first: through the index's running server if there is one
    (no model loading), else in this process with the model the index records (``threads`` onnxruntime threads)."""
    check_query(text, image, k)
    index_path = Path(index_path)
    if not (index_path / META).is_file():
        raise no_index_error(index_path)
    server = client.find_server(index_path) if use_server else None
    if server is not None and model is not None:
        with ImageIndex.open(index_path) as index:
            if model_spec(model) != index.model_spec:
                server = None  # another model was asked for: checked (and refused) in-process
    if server is not None:
        try:
            if text is not None:
                rows = client.query_text(server, text, k)
            else:
                rows = client.query_image(server, _read_query_image(image), str(image), k)
            return [Hit(str(row["path"]), float(row["score"])) for row in rows]
        except client.ServerUnavailable as exc:
            log.info("server %s did not answer (%s); searching in-process", server.url, exc)
    with ImageIndex.open(index_path) as index:
        embedder = model_for_index(index, model, threads)
        return search(index, embedder, text, None if image is None else load_image(image), k)


def _read_query_image(image: str | os.PathLike | None) -> bytes:
    path = Path(str(image))
    if not path.is_file():
        raise CaptchalabError(f"{path}: no such file")
    return path.read_bytes()


def parse_labels(labels: str) -> list[str]:
    """``猫,狗,…`` (also full-width ，and 、) -> distinct labels in order; at least two."""
    found = list(dict.fromkeys(part.strip() for part in re.split(r"[,，、]", labels) if part.strip()))
    if len(found) < 2:
        raise CaptchalabError(f"--labels needs at least two comma-separated labels, got {labels!r}")
    return found


def classify(
    image: ImageInput, labels: list[str], model: str | os.PathLike = "default", threads: int | None = ONE_SHOT_THREADS
) -> list[tuple[str, float]]:
    """Zero-shot label probabilities, as CLIP does: softmax of logit_scale x cosine(image, label), best first."""
    if len(labels) < 2:
        raise CaptchalabError("classification needs at least two labels")
    embedder = load_model(model, threads)
    picture = load_image(image)
    image_vector = embed_images_checked(embedder, [picture])[0]
    text_vectors = embed_texts_checked(embedder, label_texts(embedder, labels))
    logits = float(embedder.logit_scale) * (text_vectors @ image_vector)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    return sorted(zip(labels, probabilities.tolist()), key=lambda pair: -pair[1])


def duplicates(index_path: str | os.PathLike, threshold: float = 0.95) -> list[tuple[str, str, float]]:
    """Pairs of indexed images with cosine >= ``threshold``, best first (no model needed)."""
    if not -1.0 <= threshold <= 1.0:
        raise CaptchalabError(f"--threshold is a cosine similarity in [-1, 1], not {threshold}")
    with ImageIndex.open(index_path) as index:
        return index.near_duplicates(threshold)
