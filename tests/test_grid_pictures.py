"""Prototype pictures of each word (runtime.grid_pictures) and `grid calibrate --pictures`."""

import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import GRID_WORDS, run_cli

from captchalab.errors import CaptchalabError
from captchalab.runtime.grid_pictures import WordPictures, blend, kmeans_prototypes


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_similarity_is_the_best_prototype_of_each_word_and_survives_a_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    groups = {"猫": rng.normal(size=(3, 8)), "狗": rng.normal(size=(1, 8)), "鱼": rng.normal(size=(2, 8))}
    pictures = WordPictures.from_groups(groups)
    cells = _unit(rng.normal(size=(5, 8))).astype(np.float32)
    expected = np.stack([(cells @ _unit(groups[w]).T).max(1) for w in ("猫", "狗", "鱼")], 1)
    np.testing.assert_allclose(pictures.similarity(cells), expected, rtol=1e-5)
    pictures.save(tmp_path / "p.npz")
    loaded = WordPictures.load(tmp_path / "p.npz")
    assert loaded.words == ("猫", "狗", "鱼") and "狗" in loaded and "龙" not in loaded
    np.testing.assert_allclose(loaded.similarity(cells), expected, atol=2e-3)  # stored as float16
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(CaptchalabError, match="not a readable pictures file"):
        WordPictures.load(tmp_path / "bad.npz")


def test_blend_mixes_where_a_word_has_pictures_and_keeps_text_elsewhere():
    text = np.array([[0.2, 0.4]])
    picture = np.array([[0.8, np.nan]])
    np.testing.assert_allclose(blend(text, picture, 0.25), [[0.25 * 0.2 + 0.75 * 0.8, 0.4]])
    assert blend(text, picture, 1.0) is text and blend(text, None, 0.5) is text


def test_kmeans_finds_each_drawing_of_a_word():
    rng = np.random.default_rng(1)
    a, b = _unit(rng.normal(size=16)), _unit(rng.normal(size=16))
    vectors = _unit(np.concatenate([a + 0.05 * rng.normal(size=(20, 16)), b + 0.05 * rng.normal(size=(12, 16))]))
    centres = kmeans_prototypes(vectors, 2, seed=3)
    assert sorted(np.round(centres @ np.stack([a, b]).T, 2).max(0) > 0.99) == [True, True]
    assert kmeans_prototypes(vectors[:1], 8).shape == (1, 16)  # never more centres than vectors
    np.testing.assert_array_equal(kmeans_prototypes(vectors, 2, seed=3), centres)  # seeded


def test_calibrate_with_pictures_writes_them_fits_the_blend_and_solve_uses_it(
    tiny_grid_bundle: Path, tiny_grid_cells: Path, tmp_path: Path
):
    grids = tmp_path / "grids"
    run_cli("grid", "generate", str(grids), "--count", "30", "--cells", str(tiny_grid_cells), "--layout", "2x3",
            "--cell-size", "40", "--seed", "6")  # fmt: skip
    out = tmp_path / "with-pictures"
    result = run_cli("grid", "calibrate", str(tiny_grid_bundle), str(grids), "--out", str(out),
                     "--pictures", str(tiny_grid_cells))  # fmt: skip
    assert "prototypes of 6 words" in result.stdout_text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["pictures"] == "pictures.npz" and (out / "pictures.npz").is_file()
    decision = manifest["decision"]
    assert decision["picture_weight"] in (1.0, 0.75, 0.5, 0.25)
    pictures = WordPictures.load(out / "pictures.npz")
    assert set(pictures.words) == set(GRID_WORDS) and len(pictures.vectors) <= 8 * len(GRID_WORDS)
    run_cli("grid", "eval", str(out), str(grids), "--out", str(tmp_path / "report.json"))
    report = decision["recalibrated"]
    assert json.loads((tmp_path / "report.json").read_text())["solve_rate"] == report["rules"][report["rule"]]["after"]
    # recalibrating a bundle that has pictures keeps them
    again = tmp_path / "again"
    run_cli("grid", "calibrate", str(out), str(grids), "--out", str(again))
    assert (again / "pictures.npz").read_bytes() == (out / "pictures.npz").read_bytes()
    bad = run_cli("grid", "calibrate", str(out), str(grids), "--out", str(tmp_path / "x"), "--keep-threshold",
                  "--pictures", str(tiny_grid_cells), check=False)  # fmt: skip
    assert bad.returncode == 2 and "do not go together" in bad.stderr_text
    # a share chosen elsewhere is kept, not fitted; it needs pictures and a value in [0, 1]
    for share in (0.3, 1.0):
        fixed = tmp_path / f"share-{share}"
        result = run_cli("grid", "calibrate", str(out), str(grids), "--out", str(fixed), "--text-share", str(share))
        assert f"text share {share:.2f}" in result.stdout_text
        assert json.loads((fixed / "manifest.json").read_text())["decision"]["picture_weight"] == share
    for args, message in (
        ([str(out), "--text-share", "1.5"], "between 0 and 1"),
        ([str(tiny_grid_bundle), "--text-share", "0.5"], "has no word pictures"),
        ([str(out), "--text-share", "0.5", "--keep-threshold"], "do not go together"),
    ):
        bad = run_cli("grid", "calibrate", args[0], str(grids), "--out", str(tmp_path / "y"), *args[1:], check=False)
        assert bad.returncode == 2 and message in bad.stderr_text and "Traceback" not in bad.stderr_text


def test_pictures_of_unknown_words_only_is_one_clear_error(
    tiny_grid_bundle: Path, tiny_grid_cells: Path, tmp_path: Path
):
    from PIL import Image

    cells = tmp_path / "cells"
    (cells / "恐龙").mkdir(parents=True)
    Image.new("RGB", (40, 40), "green").save(cells / "恐龙" / "a.png")
    grids = tmp_path / "grids"
    run_cli("grid", "generate", str(grids), "--count", "4", "--cells", str(tiny_grid_cells), "--layout", "2x3",
            "--cell-size", "40", "--seed", "2")  # fmt: skip
    result = run_cli("grid", "calibrate", str(tiny_grid_bundle), str(grids), "--out", str(tmp_path / "o"),
                     "--pictures", str(cells), check=False)  # fmt: skip
    assert result.returncode == 2 and "no cell is labelled with a word the bundle knows" in result.stderr_text
    assert "Traceback" not in result.stderr_text and not (tmp_path / "o").exists()


def test_the_shipped_default_is_complete_and_solves_the_example_grids():
    from captchalab.grid import evaluate
    from captchalab.runtime.bundle import load_bundle, sha256_file
    from captchalab.runtime.grid import load_solver

    bundle = load_bundle("default", "grid")
    for name, digest in bundle.manifest["sha256"].items():
        assert sha256_file(bundle.path / name) == digest, name
    solver = load_solver("default")
    assert solver.pictures is not None and set(solver.pictures.words) == set(solver.prompts)
    assert 0 < solver.picture_weight < 1
    examples = Path(__file__).resolve().parents[1] / "examples" / "grids"
    assert evaluate("default", examples)["solve_rate"] >= 0.75  # guards the bundle; the benchmark measures it


def test_a_pictures_file_that_does_not_fit_is_one_clear_error(tmp_path: Path):
    vectors = np.eye(4, dtype=np.float16)
    np.savez(tmp_path / "p.npz", words=np.asarray(["猫", "狗"]), vectors=vectors, starts=np.array([0, 9]))
    with pytest.raises(CaptchalabError, match="not a readable pictures file"):
        WordPictures.load(tmp_path / "p.npz")
    np.savez(tmp_path / "q.npz", words=np.asarray(["猫", "狗"]), vectors=vectors, starts=np.array([2, 1]))
    with pytest.raises(CaptchalabError, match="not a readable pictures file"):
        WordPictures.load(tmp_path / "q.npz")
