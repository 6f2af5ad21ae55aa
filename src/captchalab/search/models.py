"""Which model an index uses: loading a grid bundle as the search embedder, and remembering it in the index.

An index records the model spec it was built with (``default`` or a bundle's absolute path), so queries, the
server and near-duplicate listing need no ``--model``; naming a different model is refused by its ``model_id``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from captchalab.errors import CaptchalabError
from captchalab.search.index import ImageIndex

log = logging.getLogger(__name__)


def model_spec(model: str | os.PathLike) -> str:
    """``default`` stays as it is; a bundle folder becomes its absolute path (what the index records)."""
    return "default" if str(model) == "default" else str(Path(model).expanduser().resolve())


def load_model(model: str | os.PathLike = "default", threads: int | None = None):  # noqa: ANN201
    """The image-text ``ClipModel`` of a grid bundle (cached per process); a missing default says what to do."""
    from captchalab.runtime.clip import load_clip

    try:
        return load_clip(model_spec(model), threads)
    except CaptchalabError as exc:
        if str(model) == "default":
            raise CaptchalabError(f"{exc}; pass --model BUNDLE (a grid bundle folder) instead") from None
        raise


def model_for_index(index: ImageIndex, model: str | os.PathLike | None = None, threads: int | None = None):  # noqa: ANN201
    """The model ``index`` was built with (or ``model``, which must be the same one)."""
    spec = str(model) if model is not None else index.model_spec
    if spec is None:
        raise CaptchalabError(f"{index.path}: the index does not record its model; pass --model")
    if model is None and spec != "default" and not Path(spec).is_dir():
        raise CaptchalabError(f"{index.path}: its model {spec} is gone; pass --model with the same bundle")
    embedder = load_model(spec, threads)
    index.check_model(embedder)
    return embedder


def label_texts(embedder: object, labels: list[str]) -> list[str]:
    """Texts to embed for user labels: an English alias listed in the bundle's prompts maps to its word."""
    manifest = getattr(getattr(embedder, "bundle", None), "manifest", {}) or {}
    aliases = {
        alias.lower(): entry["text"] for entry in manifest.get("prompts", []) for alias in entry.get("aliases", [])
    }
    return [aliases.get(label.lower(), label) for label in labels]
