"""The image-search article's dataset helpers: class-folder split and per-channel statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.search import channel_stats, compute_channel_stats, split_class_folders


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    """cat: 10 images (mixed modes and formats), dog: 3, fox: 1, empty: none, plus one corrupt cat image."""
    root = tmp_path / "classes"
    rng = np.random.default_rng(0)
    for name, n in (("cat", 10), ("dog", 3), ("fox", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i % 3 == 1:
                image.convert("L").save(root / name / f"{i}.png")
            elif i % 3 == 2:
                image.convert("RGBA").save(root / name / f"{i}.gif")
            else:
                image.save(root / name / f"{i}.jpg")
    (root / "empty").mkdir()
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    return root


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_split_is_stratified_reproducible_and_rgb(tmp_path, classes):
    result = split_class_folders(classes, tmp_path / "a", seed=3, size=(8, 6))
    counts = result["counts"]
    # cat has 11 files (one corrupt): 9 train, 1 val, 1 test planned; the corrupt one is skipped wherever it fell
    assert sum(counts[s]["cat"] for s in counts) == 10
    assert [counts[s]["dog"] for s in ("train", "val", "test")] == [1, 1, 1]
    assert [counts[s]["fox"] for s in ("train", "val", "test")] == [1, 0, 0]
    assert counts["train"]["cat"] >= 8
    assert len(result["skipped"]) == 1 and "broken.png" in result["skipped"][0]
    written = [p for p in (tmp_path / "a").rglob("*") if p.is_file() and p.name != "split.json"]
    assert len(written) == 14
    for path in written:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (8, 6)
    assert not any(p.suffix == ".gif" for p in written)  # written as PNG
    record = json.loads((tmp_path / "a" / "split.json").read_text())
    assert record["seed"] == 3 and len(sum(record["files"].values(), [])) == 14

    split_class_folders(classes, tmp_path / "b", seed=3, size=(8, 6))
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    for path in written:  # same pixels too
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))
    split_class_folders(classes, tmp_path / "c", seed=4)
    assert listing(tmp_path / "c") != listing(tmp_path / "a")


def test_split_never_overwrites(tmp_path, classes):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(CaptchalabError, match="already exists and is not empty"):
        split_class_folders(classes, out)
    assert listing(out) == ["mine.txt"]
    with pytest.raises(CaptchalabError, match="must not be inside"):
        split_class_folders(classes, classes / "splits")
    with pytest.raises(CaptchalabError, match="bad split ratios"):
        split_class_folders(classes, tmp_path / "x", ratios=(0.8, -0.1, 0.3))
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))
    (tmp_path / "empty-out").mkdir()
    split_class_folders(classes, tmp_path / "empty-out")  # an existing empty folder is fine
    assert (tmp_path / "empty-out" / "split.json").is_file()


def test_channel_stats_match_numpy(tmp_path):
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((7, 9, 3), (30, 4, 3), (1, 1, 3))]
    arrays[1][..., 2] = 200  # a constant channel in one image
    for i, array in enumerate(arrays):
        (tmp_path / "d" / str(i)).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "d" / str(i) / "x.png")
    Image.fromarray(arrays[0][..., 0]).save(tmp_path / "d" / "gray.png")  # grayscale counts as R = G = B
    (tmp_path / "d" / "junk.jpg").write_bytes(b"")
    arrays.append(np.repeat(arrays[0][..., :1], 3, axis=2))
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    mean, std = channel_stats(tmp_path / "d")
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-10)
    stats = compute_channel_stats(tmp_path / "d")
    assert (stats.images, stats.pixels, len(stats.skipped)) == (4, len(pixels), 1)


def test_channel_stats_refuses_empty(tmp_path):
    with pytest.raises(CaptchalabError, match="no readable images"):
        channel_stats(tmp_path)
    with pytest.raises(CaptchalabError, match="no such folder"):
        channel_stats(tmp_path / "missing")
