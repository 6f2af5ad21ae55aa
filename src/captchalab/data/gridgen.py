"""Synthetic picture-grid captchas (2x3 六宫格, 3x3 九宫格) and styled training cells.

Labelled cell pictures come from either source:

* the icon library built by ``scripts/build_grid_icons.py`` (``words.json`` + ``icons/<style>/<word>/<slug>.png``):
  each icon is styled by :func:`captchalab.data.cellstyle.render_cell`; ``styles`` and ``split`` choose which
  renderings may be used (``train``: a word's styles minus its held-out ``test_style``; ``test``: only that one;
  ``all``: every style given);
* any folder of ``<label>/<image>`` cells, used as they are and only lightly jittered.

Grid ``i`` depends only on ``(seed, i)``, and the cells of word ``w`` only on ``(seed, w)``, so a set is the same
whatever the number of workers or the count asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from captchalab.data.cellstyle import render_cell, render_photo_cell
from captchalab.data.cnclip import label_folders
from captchalab.errors import CaptchalabError
from captchalab.folders import rmdir_if_empty
from captchalab.imaging import load_image
from captchalab.progress import track

log = logging.getLogger(__name__)

DEFAULT_ICONS = Path("data/grid-icons")
LAYOUTS: dict[str, tuple[int, int]] = {"2x3": (2, 3), "3x3": (3, 3)}  # rows x columns
SPLITS = ("train", "test", "all")
MAX_POSITIVES = 4
MAX_GUTTER = 8
BUILD_HINT = "build it with: pip install 'captchalab[build]' && python scripts/build_grid_icons.py --out {path}"


@dataclass(frozen=True)
class Label:
    """One label (a prompt word) and the pictures that show it."""

    text: str
    images: tuple[str, ...]  # file paths
    en: str | None = None
    styles: tuple[str, ...] = ()  # style of each image (icon library only)
    related: frozenset[str] = frozenset()  # labels a person could take for this one: never its negatives


@dataclass(frozen=True)
class CellSource:
    """Where cell pictures come from: the icon library (``kind='icons'``) or a labelled folder (``'cells'``)."""

    kind: str
    root: str
    labels: tuple[Label, ...]
    styles: tuple[str, ...] = ()
    split: str | None = None

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.root, "styles": list(self.styles), "split": self.split}


# ------------------------------------------------------------------------------------------------ sources
def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def read_icon_library(icons_dir: str | Path) -> dict:
    """The parsed ``words.json`` of an icon library, checked for the fields the generator needs."""
    root = Path(icons_dir)
    words_file = root / "words.json"
    if not root.is_dir():
        raise CaptchalabError(f"{root}: no icon library there; " + BUILD_HINT.format(path=root))
    if not words_file.is_file():
        raise CaptchalabError(f"{root}: not an icon library (no words.json); " + BUILD_HINT.format(path=root))
    try:
        library = json.loads(words_file.read_text(encoding="utf-8"))
        styles, words = library["styles"], library["words"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CaptchalabError(f"{words_file}: not a readable icon library ({type(exc).__name__}: {exc})") from None
    if not isinstance(styles, dict) or not isinstance(words, list) or not words:
        raise CaptchalabError(f"{words_file}: the library lists no styles or no words")
    if not all(isinstance(w, dict) and {"word", "slug", "styles"} <= w.keys() for w in words):
        raise CaptchalabError(f'{words_file}: every word needs "word", "slug" and "styles"')
    return library


def parse_styles(text: str | None) -> list[str] | None:
    """``'twemoji,noto'`` -> ['twemoji', 'noto']; None or empty -> None (the library's default styles)."""
    if not text:
        return None
    styles = [s.strip() for s in text.split(",") if s.strip()]
    return styles or None


def load_icon_source(
    icons_dir: str | Path = DEFAULT_ICONS,
    styles: list[str] | None = None,
    split: str = "train",
    words: int | None = None,
    skip_words: int = 0,
    add_styles: list[str] | None = None,
) -> CellSource:
    """The labels of an icon library restricted to ``styles`` (default: its default styles) and ``split``; with
    ``words`` / ``skip_words``, the words ``skip_words .. skip_words + words`` of a fixed, seed-free order.

    ``add_styles`` gives every word its icons in those styles too, whatever the split: with ``split='test'`` and
    designs a model never saw, a word has several unseen drawings, so the matching cells of a grid can differ."""
    if split not in SPLITS:
        raise CaptchalabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(icons_dir)
    library = read_icon_library(root)
    known = list(library["styles"])
    chosen = list(styles) if styles else list(library.get("default_styles") or known)
    added = [s for s in add_styles or () if s not in chosen]
    unknown = [s for s in chosen + added if s not in known]
    if unknown:
        raise CaptchalabError(f"unknown style {', '.join(unknown)}; the library at {root} has {', '.join(known)}")
    labels, missing = [], []
    for word in library["words"]:
        allowed = [s for s in word["styles"] if s in chosen]
        test_style = word.get("test_style")
        if split == "train":
            allowed = [s for s in allowed if s != test_style]
        elif split == "test":
            allowed = [s for s in allowed if s == test_style]
        allowed += [s for s in word["styles"] if s in (add_styles or ()) and s not in allowed]
        images, image_styles = [], []
        for style in allowed:
            path = root / "icons" / style / word["word"] / f"{word['slug']}.png"
            if path.is_file():
                images.append(str(path))
                image_styles.append(style)
            else:
                missing.append(str(path))
        if images:
            labels.append(
                Label(
                    unicodedata.normalize("NFC", word["word"]),
                    tuple(images),
                    word.get("en"),
                    tuple(image_styles),
                    frozenset(word.get("related", ())),
                )
            )
    if missing:
        log.warning("%d icon(s) listed in words.json are missing, e.g. %s", len(missing), missing[0])
    if not labels:
        raise CaptchalabError(f"{root}: no word has an icon in style(s) {', '.join(chosen)} for split {split!r}")
    if words is not None or skip_words:
        if words is not None and words < 1:
            raise CaptchalabError(f"--words must be at least 1, got {words}")
        if skip_words < 0:
            raise CaptchalabError(f"--skip-words must be 0 or more, got {skip_words}")
        wanted = (words or 0) + skip_words
        if wanted > len(labels) or skip_words >= len(labels):
            raise CaptchalabError(
                f"--words {words} --skip-words {skip_words}: only {len(labels)} words have icons in style(s) "
                f"{', '.join(chosen)}, split {split}"
            )
        order = sorted(labels, key=lambda lb: _stable_hash(lb.text))
        keep = {label.text for label in order[skip_words : skip_words + words if words else None]}
        labels = [label for label in labels if label.text in keep]
    log.debug("icon library %s: %d words, styles %s, split %s", root, len(labels), ",".join(chosen), split)
    return CellSource("icons", str(root), tuple(labels), tuple(chosen + added), split)


def load_folder_source(cells_dir: str | Path) -> CellSource:
    """Labels from a folder of ``<label>/<image>`` cells; unreadable images are skipped with one warning."""
    root = Path(cells_dir)
    if not root.is_dir():
        raise CaptchalabError(f"{root}: no such folder of <label>/<image> cells")
    folders = label_folders(root)
    labels, problems = [], []
    for label, files in track(folders, len(folders), "checking cells"):
        readable = []
        for path in files:
            try:
                load_image(path)
            except CaptchalabError as exc:
                problems.append(str(exc))
                continue
            readable.append(str(path))
        if readable:
            labels.append(Label(label, tuple(readable)))
    if problems:
        log.warning("skipped %d unreadable image(s): %s", len(problems), "; ".join(problems))
    if not labels:
        raise CaptchalabError(f"{root}: no readable images")
    return CellSource("cells", str(root), tuple(labels))


# ------------------------------------------------------------------------------------------------ drawing
@lru_cache(maxsize=2048)
def _icon(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGBA")
    except OSError as exc:
        raise CaptchalabError(f"{path}: cannot read icon ({exc})") from None


@lru_cache(maxsize=2048)
def _picture(path: str, cell_size: int) -> Image.Image:
    image = load_image(path)
    image.thumbnail((2 * cell_size, 2 * cell_size))  # small in memory, still sharp after the crop
    return image


def parse_layout(text: str) -> list[str]:
    """``'2x3'`` / ``'3x3'`` -> that layout; ``'mixed'`` -> both, alternating (half each)."""
    if text == "mixed":
        return list(LAYOUTS)
    if text not in LAYOUTS:
        raise CaptchalabError(f"unknown layout {text!r}; choose one of {', '.join([*LAYOUTS, 'mixed'])}")
    return [text]


MIN_CELL, MAX_CELL = 16, 1024


def _check_size_and_seed(cell_size: int, seed: int) -> None:
    if not MIN_CELL <= cell_size <= MAX_CELL:  # a 3x3 grid of 1024 px cells is 9.5 Mpx, well under the solver's limit
        raise CaptchalabError(f"--cell-size must be {MIN_CELL} to {MAX_CELL} px, got {cell_size}")
    if seed < 0:
        raise CaptchalabError(f"--seed must be 0 or more, got {seed}")


@dataclass(frozen=True)
class GridConfig:
    """What a grid set is made of; picklable, for the worker processes."""

    source: CellSource
    layouts: tuple[str, ...] = ("2x3", "3x3")
    cell_size: int = 100
    seed: int = 0
    strength: float = 1.0

    def __post_init__(self) -> None:
        _check_size_and_seed(self.cell_size, self.seed)
        unknown = [layout for layout in self.layouts if layout not in LAYOUTS]
        if unknown or not self.layouts:
            raise CaptchalabError(f"unknown layout {', '.join(unknown)}; choose one of {', '.join(LAYOUTS)}")
        largest = max(self.layouts, key=lambda name: LAYOUTS[name][0] * LAYOUTS[name][1])
        needed = LAYOUTS[largest][0] * LAYOUTS[largest][1]
        if len(self.source.labels) < needed:
            raise CaptchalabError(
                f"{self.source.root}: {len(self.source.labels)} label(s) are too few for {largest} grids, which need "
                f"{needed} (each cell that does not match shows a different label)"
            )


def draw_cell(
    source: CellSource, label: Label, image: int, size: int, rng: np.random.Generator, strength: float
) -> Image.Image:
    """One styled cell of ``label``: its ``image``-th picture."""
    path = label.images[image]
    if source.kind == "icons":
        return render_cell(_icon(path), size, rng, strength)
    return render_photo_cell(_picture(path, size), size, rng, strength)


def _gutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    kind = rng.random()
    if kind < 0.5:
        return (255, 255, 255)
    if kind < 0.7:
        grey = int(rng.integers(200, 246))
        return (grey, grey, grey)
    if kind < 0.85:
        dark = int(rng.integers(0, 60))
        return (dark, dark, dark)
    return tuple(int(v) for v in rng.integers(150, 256, size=3))


def _pick_images(rng: np.random.Generator, available: int, wanted: int) -> np.ndarray:
    """Which of a word's pictures its ``wanted`` matching cells show: all different while there are enough, and
    with fewer pictures than cells, every picture once before any repeats."""
    if available >= wanted or available == 1:  # the draws of sets made before the second rule: keep them the same
        return rng.choice(available, wanted, replace=available < wanted)
    return np.concatenate([rng.permutation(available), rng.choice(available, wanted - available)])


def make_grid(config: GridConfig, index: int) -> tuple[Image.Image, dict]:
    """Grid ``index`` of the set and its manifest record (without the image path)."""
    rng = np.random.default_rng([config.seed, index])
    labels = config.source.labels
    layout = config.layouts[index % len(config.layouts)]
    rows, cols = LAYOUTS[layout]
    cells = rows * cols
    prompt = labels[int(rng.integers(len(labels)))]
    positives = int(rng.integers(1, min(MAX_POSITIVES, cells - 1) + 1))
    positions = sorted(int(p) for p in rng.choice(cells, positives, replace=False))
    others = [lb for lb in labels if lb.text != prompt.text and lb.text not in prompt.related]
    if len(others) < cells - positives:  # few labels: related ones are better than repeats
        others = [lb for lb in labels if lb.text != prompt.text]
    negatives = [others[int(i)] for i in rng.choice(len(others), cells - positives, replace=False)]
    picks = _pick_images(rng, len(prompt.images), positives)

    size = config.cell_size
    gutter = int(rng.integers(0, MAX_GUTTER + 1))
    border = int(rng.integers(1, MAX_GUTTER + 1)) if rng.random() < 0.5 else 0
    colour = _gutter_colour(rng)
    width = cols * size + (cols - 1) * gutter + 2 * border
    height = rows * size + (rows - 1) * gutter + 2 * border
    grid = Image.new("RGB", (width, height), colour)
    texts, styles = [], []
    negative_iter, pick_iter = iter(negatives), iter(picks)
    for cell in range(cells):
        if cell in positions:
            label, image = prompt, int(next(pick_iter))
        else:
            label = next(negative_iter)
            image = int(rng.integers(len(label.images)))
        row, col = divmod(cell, cols)
        picture = draw_cell(config.source, label, image, size, rng, config.strength)
        grid.paste(picture, (border + col * (size + gutter), border + row * (size + gutter)))
        texts.append(label.text)
        styles.append(label.styles[image] if label.styles else None)
    record = {"prompt": prompt.text}
    if prompt.en is not None:
        record["en"] = prompt.en
    record.update(
        {
            "layout": layout,
            "positions": [p + 1 for p in positions],
            "cells": texts,
            "cell_size": size,
            "gutter": gutter,
            "border": border,
        }
    )
    if config.source.kind == "icons":
        record["cell_styles"] = styles
    return grid, record


# ------------------------------------------------------------------------------------------------ writing
_worker: dict = {}


def _init_worker(config: object) -> None:
    _worker["config"] = config


def _write_grid(job: tuple[int, str, str]) -> dict:
    index, out, name = job
    image, record = make_grid(_worker["config"], index)
    image.save(Path(out) / name)
    return {"image": name, **record}


def _write_cells(job: tuple[int, int, str]) -> str:
    label_index, number, out = job
    config: CellsConfig = _worker["config"]
    label = config.source.labels[label_index]
    rng = np.random.default_rng([config.seed, _stable_hash(label.text), number])
    image = draw_cell(config.source, label, number % len(label.images), config.cell_size, rng, config.strength)
    name = f"{label.text}/{number:05d}.png"
    image.save(Path(out) / name)
    return name


def _run(jobs: list, worker, config: object, workers: int, description: str) -> list:
    if workers <= 1:
        _init_worker(config)
        return [worker(job) for job in track(jobs, len(jobs), description)]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(config,)) as pool:
        return list(track(pool.map(worker, jobs, chunksize=16), len(jobs), description))


CELLS_FORMAT = "captchalab-grid-cells"
OUTPUT_MARKERS = {"grids": ".captchalab-grids", "cells": ".captchalab-cells"}  # written first: "this folder is ours"


def _is_ours(out: Path, kind: str) -> bool:
    """Whether ``out`` holds an earlier (maybe unfinished) output of ``grid generate`` / ``grid cells``."""
    if (out / OUTPUT_MARKERS[kind]).is_file():
        return True
    # outputs made before the marker existed: recognised by their summary's own fields, never by its name alone
    summary = out / ("summary.json" if kind == "grids" else "words.json")
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    return {"count", "word_list", "layouts"} <= data.keys() if kind == "grids" else data.get("format") == CELLS_FORMAT


def _prepare_out(out: Path, kind: str) -> None:
    """Create ``out`` (marked as ours before anything else is written, so a failed run can be rerun into it), or
    reuse it when it holds an earlier output of the same kind; refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise CaptchalabError(f"{out}: exists and is not a folder")
    try:
        if out.is_dir() and any(out.iterdir()) and not _is_ours(out, kind):
            what = "grid set (grid generate)" if kind == "grids" else "cell set (grid cells)"
            raise CaptchalabError(f"{out}: folder is not empty and holds no earlier {what}; choose another")
        out.mkdir(parents=True, exist_ok=True)
        (out / OUTPUT_MARKERS[kind]).write_text(json.dumps({"format": f"captchalab-{kind}"}) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CaptchalabError(f"{out}: cannot write here ({exc.strerror or exc})") from None


_OUR_PICTURE = re.compile(r"\d{5,}\.png")  # the names generate_grids / generate_cells give their pictures


def _remove_our_pictures(folder: Path) -> None:
    """Remove the numbered pictures an earlier run wrote into ``folder``; anything else there stays."""
    if folder.is_dir() and not folder.is_symlink():
        for file in folder.iterdir():
            if file.is_file() and _OUR_PICTURE.fullmatch(file.name):
                file.unlink()


def generate_grids(
    out_dir: str | Path,
    count: int,
    config: GridConfig,
    workers: int = 1,
    command: str | None = None,
) -> dict:
    """Write ``count`` grids ``grids/00000.png`` …, ``manifest.jsonl`` and ``summary.json``; returns the summary."""
    if count < 1:
        raise CaptchalabError(f"--count must be at least 1, got {count}")
    if workers < 1:
        raise CaptchalabError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    _prepare_out(out, "grids")
    grids = out / "grids"
    _remove_our_pictures(grids)  # an earlier run's grids would not match the new manifest; other files stay
    grids.mkdir(exist_ok=True)
    digits = max(5, len(str(count - 1)))
    jobs = [(i, str(out), f"grids/{i:0{digits}d}.png") for i in range(count)]
    records = _run(jobs, _write_grid, config, workers, "drawing grids")
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = {
        "count": count,
        "layouts": dict(sorted(Counter(r["layout"] for r in records).items())),
        "positives": {str(k): v for k, v in sorted(Counter(len(r["positions"]) for r in records).items())},
        "words": len(config.source.labels),
        "prompts_used": len({r["prompt"] for r in records}),
        "source": config.source.describe(),
        "styles": list(config.source.styles),
        "split": config.source.split,
        "cell_size": config.cell_size,
        "seed": config.seed,
        "command": command,
        "word_list": [label.text for label in config.source.labels],
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log.debug("wrote %d grids to %s", count, out)
    return summary


def _earlier_words(words_file: Path) -> list[str]:
    try:
        return [w["word"] for w in json.loads(words_file.read_text(encoding="utf-8"))["words"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


@dataclass(frozen=True)
class CellsConfig:
    source: CellSource
    cell_size: int = 100
    seed: int = 0
    strength: float = 1.0

    def __post_init__(self) -> None:
        _check_size_and_seed(self.cell_size, self.seed)


def generate_cells(
    out_dir: str | Path, per_word: int, config: CellsConfig, workers: int = 1, command: str | None = None
) -> dict:
    """Write ``per_word`` styled cells ``<word>/00000.png`` … per word (cycling through its icons) + words.json."""
    if per_word < 1:
        raise CaptchalabError(f"--per-word must be at least 1, got {per_word}")
    if workers < 1:
        raise CaptchalabError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    _prepare_out(out, "cells")
    for old in _earlier_words(out / "words.json"):  # an earlier run of ours: its cells go
        if (out / old).resolve().parent == out.resolve():
            _remove_our_pictures(out / old)
            rmdir_if_empty(out / old)
    for label in config.source.labels:
        _remove_our_pictures(out / label.text)  # cells of a run that stopped before its words.json
        (out / label.text).mkdir(exist_ok=True)
    jobs = [(i, n, str(out)) for i, _ in enumerate(config.source.labels) for n in range(per_word)]
    _run(jobs, _write_cells, config, workers, "drawing cells")
    summary = {
        "format": CELLS_FORMAT,
        "per_word": per_word,
        "cells": len(jobs),
        "source": config.source.describe(),
        "cell_size": config.cell_size,
        "seed": config.seed,
        "command": command,
        "words": [{"word": label.text, "en": label.en} for label in config.source.labels],
    }
    (out / "words.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log.debug("wrote %d cells of %d words to %s", len(jobs), len(config.source.labels), out)
    return summary
