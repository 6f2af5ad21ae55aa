"""Bad input to `grid solve` / `grid eval`: one clear line naming the file, exit code 2, never a traceback."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import run_cli

from captchalab.runtime.bundle import default_bundle_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _one_line_error(result, *needles: str) -> None:  # noqa: ANN001
    err = result.stderr_text
    assert result.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    ("size", "colour", "message"),
    [
        ((1, 1), None, "one flat colour"),  # a single pixel is flat, whatever its colour
        ((3, 3), None, "too small"),
        ((300, 200), "white", "one flat colour"),
        ((200, 20000), "white", "one flat colour"),  # used to allocate a (1001, 1001, 1001) array
        ((2000, 5), None, "too small"),
    ],
)
def test_solve_refuses_images_that_are_no_grid(tmp_path: Path, size, colour, message):  # noqa: ANN001
    path = tmp_path / "odd.png"
    if colour:
        Image.new("RGB", size, colour).save(path)
    else:  # noise: not flat, just too small
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    _one_line_error(run_cli("grid", "solve", str(path), "-p", "猫", check=False), "odd.png", message)


def test_small_images_say_which_layouts_they_cannot_hold(tmp_path: Path):
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)
    result = run_cli("grid", "solve", str(path), "-p", "猫", check=False)
    _one_line_error(result, "small.png: the 10x10 image is too small for a 2x3, 3x2 or 3x3 grid")
    result = run_cli("grid", "solve", str(path), "-p", "猫", "--layout", "2x3", check=False)
    _one_line_error(result, "small.png: the 10x10 image is too small for a 2x3 grid")


def test_thin_noise_image_is_split_quickly(tmp_path: Path):
    noise = np.random.default_rng(1).integers(0, 256, (20000, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "tall.png")
    result = run_cli("grid", "solve", str(tmp_path / "tall.png"), "-p", "猫", "--json", timeout=60)
    answer = json.loads(result.stdout_text)
    assert answer["layout"] == "3x2"
    assert answer["unsure"] or len(answer["positions"]) < 6  # noise is no grid: an all-cells answer is flagged


def _manifest(tmp_path: Path, records: list[dict]) -> Path:
    folder = tmp_path / "grids"
    folder.mkdir()
    shutil.copy(next(iter(sorted((EXAMPLES / "grids" / "grids").glob("*.png")))), folder / "a.png")
    with (folder / "manifest.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return folder


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"image": "a.png", "prompt": "猫", "positions": 3}, "not a list of cell numbers"),
        ({"image": "a.png", "prompt": "猫", "positions": ["2"]}, "not a list of cell numbers"),
        ({"image": "a.png", "prompt": "猫", "layout": "3x3", "positions": [10]}, "do not fit a grid of 9 cells"),
        ({"image": "a.png", "prompt": "猫", "layout": "2x3", "positions": [0, -1]}, "do not fit a grid of 6 cells"),
        ({"image": "a.png", "prompt": "猫", "layout": "4x4", "positions": [1]}, "layout '4x4'"),
        ({"image": "a.png", "prompt": "", "positions": [1]}, "prompt '' is not a word"),
        ({"image": "a.png", "prompt": None, "positions": [1]}, "prompt None is not a word"),
        ({"image": "a.png", "positions": [1]}, "not a grid record"),
    ],
)
def test_eval_refuses_bad_manifest_lines_up_front(tmp_path: Path, record: dict, message: str):
    folder = _manifest(tmp_path, [record])
    for command in ("eval", "calibrate"):
        out = ["-o", str(tmp_path / "b")] if command == "calibrate" else []
        args = ["grid", command, "default", str(folder), *out]
        _one_line_error(run_cli(*args, check=False), "manifest.jsonl:1", message)


def test_eval_options_are_checked_before_the_work(tmp_path: Path):
    folder = _manifest(tmp_path, [{"image": "missing.png", "prompt": "猫", "layout": "2x3", "positions": [1]}])
    _one_line_error(run_cli("grid", "eval", "default", str(folder), "--limit", "0", check=False), "--limit")
    _one_line_error(run_cli("grid", "eval", "default", str(folder), "--rule", "bogus", check=False), "unknown rule")
    _one_line_error(run_cli("grid", "eval", "default", str(folder), "-o", str(tmp_path), check=False), "is a folder")
    refused = run_cli("grid", "eval", "default", str(folder), "--limit", "-2", "-o", str(tmp_path / "r.json"),
                      check=False)  # fmt: skip
    _one_line_error(refused, "--limit must be at least 1")
    assert not (tmp_path / "r.json").exists()  # a refused run leaves nothing behind
    # a missing grid is a failure of that grid, named on the console; the report's folder is made
    result = run_cli("grid", "eval", "default", str(folder), "-o", str(tmp_path / "new" / "r.json"))
    assert "missing.png" in result.stderr_text and "not scored (unreadable or mislabelled) 1" in result.stdout_text
    assert json.loads((tmp_path / "new" / "r.json").read_text(encoding="utf-8"))["errors"]


def test_broken_grid_bundle_names_its_manifest(tmp_path: Path):
    bundle = shutil.copytree(default_bundle_path("grid"), tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    del manifest["decision"]
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    grid = next(iter(sorted(EXAMPLES.rglob("*.png"))))
    result = run_cli("grid", "solve", str(grid), "-p", "猫", "--model", str(bundle), check=False)
    _one_line_error(result, "manifest.json", "no 'decision' entry")


def test_export_and_calibrate_check_their_options_before_the_work(tmp_path: Path):
    not_a_bundle = tmp_path / "notes"
    not_a_bundle.mkdir()
    (not_a_bundle / "mine.txt").write_text("the user's")
    grids = EXAMPLES / "grids"
    result = run_cli("grid", "calibrate", "default", str(grids), "-o", str(not_a_bundle), check=False)
    _one_line_error(result, "notes", "not a bundle")
    bad = tmp_path / "licences.json"
    for content, message in (('{"a": 1}', "JSON list"), ("{oops", "not valid JSON")):
        bad.write_text(content, encoding="utf-8")
        export = ["grid", "export", str(tmp_path), "-o", str(tmp_path / "b")]
        result = run_cli(*export, "--licenses", str(bad), check=False)
        _one_line_error(result, "licences.json", message)
    missing = run_cli(*export, "--licenses", "nope.json", check=False)
    _one_line_error(missing, "nope.json: no such file")
    # the destination is checked before the run is even read
    _one_line_error(run_cli("grid", "export", str(tmp_path), "-o", str(not_a_bundle), check=False), "not a bundle")
    assert (not_a_bundle / "mine.txt").is_file()


def test_calibrate_refuses_a_grid_without_matches_before_the_work(tmp_path: Path):
    folder = _manifest(tmp_path, [{"image": "a.png", "prompt": "猫", "positions": []}])
    result = run_cli("grid", "calibrate", "default", str(folder), "-o", str(tmp_path / "b"), check=False)
    _one_line_error(result, "a.png", "lists no positions")
    assert not (tmp_path / "b").exists()


def test_blank_cell_is_refused_by_name(tmp_path: Path):
    rng = np.random.default_rng(5)
    paths = []
    for n in range(6):
        path = tmp_path / f"c{n}.png"
        pixels = np.full((40, 40, 3), 255, np.uint8) if n == 4 else rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    result = run_cli("grid", "solve", "-p", "猫", "--cells", *paths, check=False)
    _one_line_error(result, "c4.png: the cell is one flat colour")


def test_gutters_of_a_two_by_two_grid_still_give_a_captcha_layout():
    from captchalab.runtime.grid_layout import LAYOUTS, guess_layout

    rng = np.random.default_rng(6)
    grid = np.full((206, 206, 3), 255, np.uint8)  # four 100 px cells with 6 px white gutters
    for top in (0, 106):
        for left in (0, 106):
            grid[top : top + 100, left : left + 100] = rng.integers(0, 200, (100, 100, 3), dtype=np.uint8)
    assert guess_layout(Image.fromarray(grid)) in LAYOUTS


def test_eval_auto_layout_positions_beyond_the_split_grid(tmp_path: Path):
    rng = np.random.default_rng(7)
    grid = np.full((207, 314, 3), 255, np.uint8)  # a 2x3 grid of 100 px cells, 7 px white gutters
    for top in (0, 107):
        for left in (0, 107, 214):
            grid[top : top + 100, left : left + 100] = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    folder = _manifest(tmp_path, [{"image": "six.png", "prompt": "猫", "layout": "auto", "positions": [8, 9]}])
    Image.fromarray(grid).save(folder / "six.png")
    result = run_cli("grid", "eval", "default", str(folder), "-o", str(tmp_path / "r.json"))
    message = "six.png: the manifest lists positions [8, 9], but the grid splits as 2x3 (6 cells)"
    assert message in result.stderr_text and "not scored (unreadable or mislabelled) 1" in result.stdout_text
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["solve_rate"] == 0.0 and report["failure_kinds"]["swapped"] == 0 and message in report["errors"][0]
