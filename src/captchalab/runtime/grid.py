"""Solve a picture grid: which cells (1-based, row-major) show the prompt word. Torch-free, thread-safe."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.imaging import ImageInput, load_image
from captchalab.runtime.blas import blas_threads
from captchalab.runtime.bundle import reading_manifest
from captchalab.runtime.clip import ClipModel, load_clip
from captchalab.runtime.grid_pictures import WordPictures, blend, picture_columns
from captchalab.runtime.grid_rules import ALL_RULES, ContextModel, RuleParams, pick, rule_scores

log = logging.getLogger(__name__)
LAYOUTS = {"2x3": (2, 3), "3x2": (3, 2), "3x3": (3, 3)}


@dataclass
class GridAnswer:
    prompt: str
    layout: str
    positions: list[int]  # 1-based, row-major (left to right, top to bottom)
    probabilities: list[float]  # one per cell, row-major
    unsure: bool
    known_prompt: bool
    rule: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_layout(layout: str) -> tuple[int, int] | None:
    """``2x3`` (2 rows of 3), ``3x2``, ``3x3`` -> (rows, cols); ``auto`` -> None."""
    if layout == "auto":
        return None
    if layout not in LAYOUTS:
        raise CaptchalabError(f"unknown layout {layout!r}: use auto, 2x3, 3x2 or 3x3")
    return LAYOUTS[layout]


class GridSolver:
    """One loaded bundle; ``solve`` may be called from many threads."""

    def __init__(self, model: ClipModel, blas_threads: int | None = 1) -> None:
        self.model = model
        self.blas_threads = blas_threads  # numpy's BLAS threads in solve (runtime.blas; None leaves numpy as it is)
        with reading_manifest(model.bundle):
            manifest = model.bundle.manifest
            decision = manifest["decision"]
            self.rule = decision["rule"]
            self.rules = {name: RuleParams.from_dict(p) for name, p in decision["rules"].items() if name in ALL_RULES}
            context = decision["rules"].get("context")
            try:
                self.context = ContextModel.from_dict(context["model"]) if context else None
            except (KeyError, TypeError, ValueError) as exc:
                where = model.bundle.path
                raise CaptchalabError(f"{where}: the manifest's context rule is unreadable ({exc})") from None
            self.unsure_band = float(decision.get("unsure_band", 0.3))
            prompts = manifest.get("prompts", [])
            self.prompts = [entry["text"] for entry in prompts]
            self.aliases = {alias.lower(): entry["text"] for entry in prompts for alias in entry.get("aliases", [])}
            self.related = {entry["text"]: set(entry.get("related", [])) for entry in prompts}
            self._known = set(self.prompts)
            self._others: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            self._own_picture: dict[str, int | None] = {}  # the prompt's column among the pictures, cached
            # pictures of the known words (runtime.grid_pictures), blended with the text similarity when present
            has_pictures = "pictures" in manifest.get("files", {})
            self.pictures = WordPictures.load(model.bundle.file("pictures")) if has_pictures else None
            if self.pictures is not None and self.pictures.vectors.shape[1] != model.dim:
                raise CaptchalabError(f"{model.bundle.file('pictures')}: pictures of another model (not {model.dim}-d)")
            self.picture_weight = float(decision.get("picture_weight", 1.0)) if self.pictures else 1.0

    def resolve_prompt(self, prompt: str) -> tuple[str, bool]:
        """(model text, known?) — an English alias maps to its Chinese word."""
        text = prompt.strip()
        if not text:
            raise CaptchalabError("the prompt is empty: give the word the grid asks for, e.g. --prompt 猫")
        text = self.aliases.get(text.lower(), text)
        return text, text in self._known

    def solve(
        self,
        prompt: str,
        image: ImageInput | None = None,
        cells: Sequence[ImageInput] | None = None,
        layout: str = "auto",
        rule: str | None = None,
        name: str | None = None,
    ) -> GridAnswer:
        """Give either ``image`` (the whole grid; ``layout`` auto/2x3/3x2/3x3) or ``cells`` (row-major); ``name``:
        what errors call the grid image (default: its path)."""
        text, known = self.resolve_prompt(prompt)
        rule = rule or self.rule
        if rule not in self.rules:
            raise CaptchalabError(f"unknown rule {rule!r}: use one of {', '.join(self.rules)}")
        pictures, layout_name = self._cells(image, cells, layout, name)
        if not known:
            log.warning("the model has not seen the word %r in training; the answer is a guess", text)
            rule = "threshold"  # margin/softmax compare against known words, which says little about a new one
        with blas_threads(self.blas_threads):
            vectors = self.model.embed_images(pictures)  # (N, D), unit length
            similarity, other = self.similarities(vectors, text, rule != "threshold")
            if rule == "context" and other.shape[1] < 2:
                rule = "margin"  # a bundle of three words or fewer: no context to speak of
            scores = rule_scores(rule, similarity, other, self.model.logit_scale, self.context, vectors)
            picked, probabilities, unsure = pick(scores, self.rules[rule], self.unsure_band)
        return GridAnswer(
            prompt=text,
            layout=layout_name,
            positions=[i + 1 for i in picked],
            probabilities=probabilities,
            # every cell picked: no grid captcha asks that, so the pictures are likely not what the model knows
            unsure=unsure or not known or len(picked) == len(pictures),
            known_prompt=known,
            rule=rule,
        )

    def use_pictures(self, pictures: WordPictures) -> None:
        """Solve with these word pictures from now on (the blend keeps its share until told otherwise)."""
        self.pictures = pictures
        self._others.clear()
        self._own_picture.clear()

    def similarities(
        self, cells: np.ndarray, text: str, with_others: bool = True, picture_weight: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unit cell vectors (N, D) -> (similarity to ``text`` (N,), to every other known word but its look-alikes
        (N, K), or (N, 0) without ``with_others``): cosine to the text vectors, blended with the words' pictures
        when the bundle has them (``picture_weight``: the text's share, default the bundle's)."""
        weight = self.picture_weight if picture_weight is None else picture_weight
        similarity = cells @ self.model.embed_texts([text])[0]  # (N,)
        if with_others:
            others, columns, has = self._other_words(text)
        else:
            others, columns, has = np.zeros((0, cells.shape[1]), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        other = cells @ others.T  # (N, K)
        if self.pictures is None or weight >= 1.0:
            return similarity, other
        by_picture = self.pictures.similarity(cells)  # (N, W)
        if text not in self._own_picture:
            (column,), (has_own,) = picture_columns(self.pictures, [text])
            self._own_picture[text] = int(column) if has_own else None
        own = self._own_picture[text]
        if own is not None:
            similarity = blend(similarity[:, None], by_picture[:, [own]], weight)[:, 0]
        if len(columns):
            other = blend(other, np.where(has, by_picture[:, columns], np.nan), weight)
        return similarity, other

    def _other_words(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text vectors (K, D) of every known word but the prompt and its look-alikes (猫 / 猫脸), and their columns
        among the pictures (index, present?); cached per prompt."""
        if text not in self._others:
            banned = {text, *self.related.get(text, ())}
            words = [p for p in self.prompts if p not in banned]
            vectors = self.model.embed_texts(words)  # (K, D)
            # kept as the transpose of a C-contiguous (D, K) array: cells @ others.T is then ~3x faster
            vectors = np.ascontiguousarray(vectors.T).T
            columns, has = picture_columns(self.pictures, words) if self.pictures else (np.zeros(0, int),) * 2
            self._others[text] = (vectors, columns, has.astype(bool))
        return self._others[text]

    def _cells(
        self, image: ImageInput | None, cells: Sequence[ImageInput] | None, layout: str, name: str | None = None
    ) -> tuple[list[Image.Image], str]:
        if (image is None) == (cells is None):
            raise CaptchalabError("give either a grid image or its cells, not both")
        if cells is not None:
            if isinstance(cells, (str, bytes, os.PathLike)):  # one path is not a list of cells (a str iterates)
                raise CaptchalabError("cells must be a list of images (row-major), not one path")
            from captchalab.runtime.grid_layout import is_one_colour

            pictures = [load_image(c) for c in cells]
            for index, (cell, picture) in enumerate(zip(cells, pictures), 1):
                if is_one_colour(np.asarray(picture.convert("RGB"))):
                    where = str(cell) if isinstance(cell, (str, os.PathLike)) else f"cell {index}"
                    raise CaptchalabError(f"{where}: the cell is one flat colour: there is no picture in it")
            if len(pictures) not in (6, 9):
                raise CaptchalabError(f"{len(pictures)} cells given: a grid has 6 (2x3 / 3x2) or 9 (3x3)")
            shape = parse_layout(layout) or ((3, 3) if len(pictures) == 9 else (2, 3))
            if shape[0] * shape[1] != len(pictures):
                raise CaptchalabError(f"{len(pictures)} cells do not fill a {layout} grid")
            return pictures, f"{shape[0]}x{shape[1]}"
        from captchalab.runtime.grid_layout import split_grid

        name = name or (str(image) if isinstance(image, (str, os.PathLike)) else None)
        shape, loaded = parse_layout(layout), load_image(image, name=name)
        try:
            pictures, (rows, cols) = split_grid(loaded, shape)
        except CaptchalabError as exc:
            raise CaptchalabError(f"{name}: {exc}" if name else str(exc)) from None
        return pictures, f"{rows}x{cols}"


_SOLVERS: dict[tuple[str, int | None], GridSolver] = {}


def load_solver(model: str | os.PathLike = "default", threads: int | None = None) -> GridSolver:
    key = (str(model), threads)
    if key not in _SOLVERS:
        _SOLVERS[key] = GridSolver(load_clip(model, threads))
    return _SOLVERS[key]
