"""Synthetic picture grids and styled cells (cellstyle, gridgen, `grid generate` / `grid cells`), on a tiny icon
library drawn here: no data/grid-icons needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from captchalab.data.cellstyle import render_cell
from captchalab.data.gridgen import (
    LAYOUTS,
    CellsConfig,
    GridConfig,
    generate_cells,
    generate_grids,
    load_folder_source,
    load_icon_source,
    make_grid,
)
from captchalab.errors import CaptchalabError
from conftest import run_cli

WORDS = [
    ("猫", "cat"),
    ("猫脸", "cat face"),
    ("狗", "dog"),
    ("苹果", "apple"),
    ("汽车", "automobile"),
    ("火箭", "rocket"),
    ("雨伞", "umbrella"),
    ("钥匙", "key"),
    ("铅笔", "pencil"),
    ("蘑菇", "mushroom"),
    ("星星", "star"),
]
STYLES = ["flat", "round", "outline"]
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 20), (150, 60, 200), (20, 170, 170)]


def _icon(word_index: int, style: str) -> Image.Image:
    """A 64 px RGBA shape: the word sets colour and shape, the style how it is drawn."""
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    colour = COLOURS[word_index % len(COLOURS)] + (255,)
    box = (8 + word_index % 3, 10, 56 - word_index % 4, 54)
    width = 6 if style == "outline" else 0
    if (word_index // len(COLOURS)) % 2 == 0:
        draw.ellipse(box, fill=None if width else colour, outline=colour, width=width or 1)
    else:
        draw.rectangle(box, fill=None if width else colour, outline=colour, width=width or 1)
    if style == "round":
        draw.ellipse((24, 24, 40, 40), fill=(255, 255, 255, 255))
    return image


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A words.json + icons/<style>/<word>/<slug>.png library in the build script's schema."""
    root = tmp_path_factory.mktemp("grid-icons")
    words = []
    for index, (word, en) in enumerate(WORDS):
        slug = en.replace(" ", "-")
        styles = STYLES if index % 4 else STYLES[:2]  # some words lack a style
        for style in styles:
            path = root / "icons" / style / word / f"{slug}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _icon(index, style).save(path)
        test_style = styles[int(hashlib.sha256(word.encode()).hexdigest(), 16) % len(styles)]
        related = ["猫脸"] if word == "猫" else ["猫"] if word == "猫脸" else []
        entry = {"word": word, "en": en, "emoji": "", "slug": slug, "group": "objects", "styles": styles}
        words.append({**entry, "test_style": test_style, "related": related})
    meta = {
        s: {"package": f"test-{s}", "version": "0", "license": "MIT", "credit": "drawn by the test"} for s in STYLES
    }
    library = {"styles": meta, "default_styles": STYLES, "holdout_style": None, "words": words}
    (root / "words.json").write_text(json.dumps(library, ensure_ascii=False), encoding="utf-8")
    return root


def _read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ cellstyle
def test_render_cell_is_deterministic_and_sized():
    icon = _icon(0, "flat")
    a = [render_cell(icon, 72, np.random.default_rng(5)).tobytes() for _ in range(2)]
    assert a[0] == a[1]
    cells = [render_cell(icon, 72, np.random.default_rng(seed)) for seed in range(12)]
    assert all(c.size == (72, 72) and c.mode == "RGB" for c in cells)
    assert len({c.tobytes() for c in cells}) == 12


def test_render_cell_strength_zero_is_clean_icon_on_white():
    cell = np.asarray(render_cell(_icon(0, "flat"), 60, np.random.default_rng(1), strength=0.0))
    assert (cell[0, 0] == 255).all() and (cell[-1, -1] == 255).all()
    assert tuple(cell[30, 30]) == COLOURS[0]  # centred, colours untouched


def test_render_cell_rejects_bad_input():
    with pytest.raises(CaptchalabError, match="strength"):
        render_cell(_icon(0, "flat"), 60, np.random.default_rng(1), strength=1.5)
    with pytest.raises(CaptchalabError, match="too small"):
        render_cell(_icon(0, "flat"), 4, np.random.default_rng(1))


# ------------------------------------------------------------------------------------------------ sources
def test_splits_never_share_an_icon(library: Path):
    train = load_icon_source(library, split="train")
    test = load_icon_source(library, split="test")
    every = load_icon_source(library, split="all")
    train_icons = {p for label in train.labels for p in label.images}
    test_icons = {p for label in test.labels for p in label.images}
    assert train_icons and test_icons and not train_icons & test_icons
    assert train_icons | test_icons == {p for label in every.labels for p in label.images}
    words = {w["word"]: w for w in json.loads((library / "words.json").read_text(encoding="utf-8"))["words"]}
    for label in test.labels:
        assert label.styles == (words[label.text]["test_style"],)


def test_styles_and_words_subset(library: Path):
    only = load_icon_source(library, styles=["outline"], split="all")
    assert all(label.styles == ("outline",) for label in only.labels)
    assert len(only.labels) == sum(1 for i in range(len(WORDS)) if i % 4)
    subset = load_icon_source(library, split="all", words=4)
    assert len(subset.labels) == 4
    assert subset == load_icon_source(library, split="all", words=4)  # fixed subset, no seed involved
    rest = load_icon_source(library, split="all", skip_words=4)  # e.g. a calibration set beside a benchmark set
    assert {lb.text for lb in rest.labels}.isdisjoint({lb.text for lb in subset.labels})
    assert len(rest.labels) == len(WORDS) - 4
    assert len(load_icon_source(library, split="all", words=3, skip_words=4).labels) == 3
    with pytest.raises(CaptchalabError, match="--skip-words 11: only 11 words"):
        load_icon_source(library, split="all", skip_words=11)
    with pytest.raises(CaptchalabError, match="unknown style nope"):
        load_icon_source(library, styles=["nope"])
    with pytest.raises(CaptchalabError, match="only 11 words"):
        load_icon_source(library, split="all", words=50)
    with pytest.raises(CaptchalabError, match="unknown split"):
        load_icon_source(library, split="valid")


def test_add_styles_gives_each_word_more_drawings(library: Path):
    words = {w["word"]: w for w in json.loads((library / "words.json").read_text(encoding="utf-8"))["words"]}
    more = load_icon_source(library, split="test", add_styles=["outline"])
    assert [lb.text for lb in more.labels] == [lb.text for lb in load_icon_source(library, split="test").labels]
    for label in more.labels:
        word = words[label.text]
        extra = ("outline",) if "outline" in word["styles"] and word["test_style"] != "outline" else ()
        assert label.styles == (word["test_style"], *extra)
    flat = load_icon_source(library, styles=["flat"], split="all", add_styles=["outline", "flat"])
    assert flat.styles == ("flat", "outline")
    assert all(set(label.styles) <= {"flat", "outline"} for label in flat.labels)
    with pytest.raises(CaptchalabError, match="unknown style nope"):
        load_icon_source(library, split="test", add_styles=["nope"])


# ------------------------------------------------------------------------------------------------ grids
def test_matching_cells_show_different_drawings_while_there_are_enough(library: Path):
    source = load_icon_source(library, split="all")
    images = {label.text: len(label.images) for label in source.labels}
    config = GridConfig(source, ("3x3",), cell_size=32, seed=3)
    short = 0
    for index in range(80):
        record = make_grid(config, index)[1]
        styles = [style for style, text in zip(record["cell_styles"], record["cells"]) if text == record["prompt"]]
        available = images[record["prompt"]]
        assert len(set(styles)) == min(available, len(styles))
        short += 1 < available < len(styles)
    assert short  # some grids had more matching cells than drawings: each drawing shown before any repeats


def test_grids_are_consistent(library: Path):
    source = load_icon_source(library, split="all")
    config = GridConfig(source, ("2x3", "3x3"), cell_size=40, seed=11)
    layouts = set()
    for index in range(60):
        image, record = make_grid(config, index)
        rows, cols = LAYOUTS[record["layout"]]
        layouts.add(record["layout"])
        assert record["layout"] == ("2x3", "3x3")[index % 2]
        size, gutter, border = record["cell_size"], record["gutter"], record["border"]
        assert 0 <= gutter <= 8 and 0 <= border <= 8
        assert image.size == (
            cols * size + (cols - 1) * gutter + 2 * border,
            rows * size + (rows - 1) * gutter + 2 * border,
        )
        assert (image.width - 2 * border - (cols - 1) * gutter) % cols == 0
        positions, cells = record["positions"], record["cells"]
        assert 1 <= len(positions) <= 4 and len(positions) < rows * cols == len(cells)
        assert positions == sorted(positions) and all(1 <= p <= rows * cols for p in positions)
        assert [i + 1 for i, text in enumerate(cells) if text == record["prompt"]] == positions
        negatives = [text for text in cells if text != record["prompt"]]
        assert len(set(negatives)) == len(negatives)  # each non-matching cell shows a different word
        related = {"猫": "猫脸", "猫脸": "猫"}.get(record["prompt"])
        assert related not in negatives
        assert record["en"] == dict(WORDS)[record["prompt"]]
        if gutter:  # gutters are one colour, between equal cells
            arr = np.asarray(image)
            strip = arr[:, border + size : border + size + gutter]
            assert (strip == strip[0, 0]).all()
    assert layouts == {"2x3", "3x3"}


def test_grid_set_is_reproducible_for_any_count_and_workers(library: Path, tmp_path: Path):
    config = GridConfig(load_icon_source(library, split="train"), ("3x3",), cell_size=32, seed=4)
    generate_grids(tmp_path / "a", 6, config)
    generate_grids(tmp_path / "b", 3, config, workers=2)
    generate_grids(tmp_path / "c", 6, config)
    for name in ("00000.png", "00001.png", "00002.png"):
        first = (tmp_path / "a" / "grids" / name).read_bytes()
        assert first == (tmp_path / "b" / "grids" / name).read_bytes() == (tmp_path / "c" / "grids" / name).read_bytes()
    assert _read_manifest(tmp_path / "a")[:3] == _read_manifest(tmp_path / "b")
    other = GridConfig(config.source, ("3x3",), cell_size=32, seed=5)
    assert make_grid(other, 0)[0].tobytes() != make_grid(config, 0)[0].tobytes()


def test_too_few_labels_for_layout(tmp_path: Path):
    for label in "abcdef":  # 6 labels: enough for 2x3, not for 3x3
        (tmp_path / label).mkdir()
        Image.new("RGB", (20, 20), "red").save(tmp_path / label / "x.png")
    source = load_folder_source(tmp_path)
    GridConfig(source, ("2x3",))
    with pytest.raises(CaptchalabError, match="too few for 3x3"):
        GridConfig(source, ("2x3", "3x3"))


def test_cells_cycle_through_icons(library: Path, tmp_path: Path):
    config = CellsConfig(load_icon_source(library, split="train"), cell_size=36, seed=2)
    summary = generate_cells(tmp_path / "cells", 5, config)
    assert summary["cells"] == 5 * len(config.source.labels)
    for label in config.source.labels:
        files = sorted((tmp_path / "cells" / label.text).glob("*.png"))
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
        assert Image.open(files[0]).size == (36, 36)
    again = generate_cells(tmp_path / "again", 5, CellsConfig(config.source, cell_size=36, seed=2), workers=2)
    assert again["cells"] == summary["cells"]
    for file in (tmp_path / "cells").rglob("*.png"):
        assert file.read_bytes() == (tmp_path / "again" / file.relative_to(tmp_path / "cells")).read_bytes()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_generate(library: Path, tmp_path: Path):
    out = tmp_path / "grids"
    options = ["--icons", str(library), "--cell-size", "40", "--seed", "9", "--split", "all"]
    result = run_cli("grid", "generate", str(out), "--count", "6", *options)
    assert "wrote 6 grids" in result.stdout_text and "2x3 3, 3x3 3" in result.stdout_text
    records = _read_manifest(out)
    assert [r["image"] for r in records] == [f"grids/{i:05d}.png" for i in range(6)]
    assert all((out / r["image"]).is_file() for r in records)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["count"] == 6 and summary["seed"] == 9 and summary["split"] == "all"
    assert summary["styles"] == STYLES and "grid generate" in summary["command"]
    # run again into the same folder with fewer grids: no stale grids are left behind
    run_cli("grid", "generate", str(out), "--count", "2", "--icons", str(library), "--layout", "2x3")
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["00000.png", "00001.png"]
    assert {r["layout"] for r in _read_manifest(out)} == {"2x3"}


def test_cli_cells_then_dataset_build_and_grids_from_cells(library: Path, tmp_path: Path):
    cells = tmp_path / "cells"
    result = run_cli("grid", "cells", str(cells), "--per-word", "6", "--icons", str(library), "--cell-size", "32")
    assert f"wrote {6 * len(WORDS)} cells of {len(WORDS)} words" in result.stdout_text
    listed = json.loads((cells / "words.json").read_text(encoding="utf-8"))["words"]
    assert {w["word"] for w in listed} == {w for w, _ in WORDS} and listed[0]["en"]
    dataset = tmp_path / "dataset"
    built = run_cli("grid", "dataset", "build", str(cells), "--out", str(dataset), "--split", "0.5,0.5,0")
    assert f"{len(WORDS)} labels" in built.stdout_text
    texts = [json.loads(line)["text"] for line in (dataset / "train_texts.jsonl").read_text("utf-8").splitlines()]
    assert set(texts) == {w for w, _ in WORDS}
    # the cells folder, with one unreadable image, as a --cells source of grids
    (cells / "猫" / "broken.png").write_bytes(b"not a png")
    grids = tmp_path / "grids"
    result = run_cli("grid", "generate", str(grids), "--count", "3", "--cells", str(cells), "--cell-size", "32")
    assert "wrote 3 grids" in result.stdout_text
    assert "skipped 1 unreadable" in result.stderr_text and "broken.png" in result.stderr_text
    assert all("en" not in r and "cell_styles" not in r for r in _read_manifest(grids))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "{out}", "--count", "2", "--icons", "{tmp}/none"], "no icon library"),
        (["generate", "{out}", "--count", "2", "--icons", "{tmp}"], "no words.json"),
        (["generate", "{out}", "--count", "0", "--icons", "{lib}"], "--count must be at least 1"),
        (["generate", "{out}", "--count", "2", "--icons", "{lib}", "--layout", "4x4"], "unknown layout"),
        (["generate", "{out}", "--count", "2", "--icons", "{lib}", "--styles", "flat,nope"], "unknown style nope"),
        (["generate", "{out}", "--count", "2", "--cells", "{tmp}/none"], "no such folder"),
        (["generate", "{out}", "--count", "2", "--cells", "{tmp}/empty"], "no <label>/ sub-folders"),
        (["generate", "{out}", "--count", "2", "--cells", "{tmp}/nolabel"], "label folder has no images"),
        (["generate", "{out}", "--count", "2", "--cells", "{tmp}/empty", "--styles", "flat"], "not --cells"),
        (["generate", "{out}", "--count", "2", "--cells", "{tmp}/empty", "--add-styles", "flat"], "not --cells"),
        (["generate", "{out}", "--count", "2", "--icons", "{lib}", "--add-styles", "nope"], "unknown style nope"),
        (["cells", "{out}", "--per-word", "0", "--icons", "{lib}"], "--per-word must be at least 1"),
        (["generate", "{out}", "--count", "1", "--icons", "{lib}", "--cell-size", "2100"], "16 to 1024 px"),
        (["cells", "{tmp}/busy", "--per-word", "1", "--icons", "{lib}"], "not empty"),
    ],
)
def test_cli_errors_are_one_line(library: Path, tmp_path: Path, args: list[str], message: str):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nolabel" / "猫").mkdir(parents=True)
    (tmp_path / "nolabel" / "猫" / "notes.txt").write_text("no image here")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("someone else's folder")
    values = {"out": str(tmp_path / "out"), "tmp": str(tmp_path), "lib": str(library)}
    result = run_cli("grid", *[a.format(**values) for a in args], check=False)
    assert result.returncode == 2, result.stderr_text
    assert "Traceback" not in result.stderr_text and len(result.stderr_text.strip().splitlines()) == 1
    assert message in result.stderr_text


def test_cli_never_takes_over_a_folder_that_only_looks_like_its_output(library: Path, tmp_path: Path):
    # an icon library (its index is also words.json) and a project folder with its own summary.json
    fake_cells = tmp_path / "lib"
    (fake_cells / "猫").mkdir(parents=True)
    (fake_cells / "words.json").write_text('{"words": [{"word": "猫"}]}', encoding="utf-8")
    (fake_cells / "猫" / "mine.txt").write_text("the user's")
    fake_grids = tmp_path / "proj"
    (fake_grids / "grids").mkdir(parents=True)
    (fake_grids / "summary.json").write_text('{"my": "notes"}', encoding="utf-8")
    (fake_grids / "grids" / "photo.png").write_bytes(b"the user's")
    cells = run_cli("grid", "cells", str(fake_cells), "--per-word", "1", "--icons", str(library), check=False)
    grids = run_cli("grid", "generate", str(fake_grids), "--count", "1", "--icons", str(library), check=False)
    for result in (cells, grids):
        assert result.returncode == 2 and "holds no earlier" in result.stderr_text
    assert (fake_cells / "猫" / "mine.txt").is_file() and (fake_grids / "grids" / "photo.png").is_file()
    assert json.loads((fake_grids / "summary.json").read_text(encoding="utf-8")) == {"my": "notes"}


def test_failed_run_can_be_rerun_into_its_folder(library: Path, tmp_path: Path):
    out = tmp_path / "grids"
    from captchalab.data.gridgen import _prepare_out

    _prepare_out(out, "grids")  # what a run leaves when it is killed right after making OUT
    (out / "grids").mkdir()
    (out / "grids" / "00000.png").write_bytes(b"half-written")
    result = run_cli("grid", "generate", str(out), "--count", "2", "--icons", str(library), "--cell-size", "32")
    assert "wrote 2 grids" in result.stdout_text
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["00000.png", "00001.png"]
    assert (out / "grids" / "00000.png").read_bytes().startswith(b"\x89PNG")


def test_rerun_into_its_own_folder_replaces_only_its_own_pictures(library: Path, tmp_path: Path):
    grids, cells = tmp_path / "grids", tmp_path / "cells"
    run_cli("grid", "generate", str(grids), "--count", "3", "--icons", str(library), "--cell-size", "32")
    run_cli("grid", "cells", str(cells), "--per-word", "3", "--icons", str(library), "--cell-size", "32")
    (grids / "grids" / "notes.txt").write_text("the user's")
    (cells / "猫" / "photo.jpg").write_bytes(b"the user's")
    run_cli("grid", "generate", str(grids), "--count", "1", "--icons", str(library), "--cell-size", "32")
    run_cli("grid", "cells", str(cells), "--per-word", "1", "--icons", str(library), "--cell-size", "32")
    assert sorted(p.name for p in (grids / "grids").iterdir()) == ["00000.png", "notes.txt"]
    assert sorted(p.name for p in (cells / "猫").iterdir()) == ["00000.png", "photo.jpg"]
    assert sorted(p.name for p in (cells / "狗").iterdir()) == ["00000.png"]
