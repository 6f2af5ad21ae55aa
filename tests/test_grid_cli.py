"""``captchalab grid dataset`` through the real entry point."""

import json
from pathlib import Path

from PIL import Image

from conftest import run_cli


def _cells(root: Path) -> Path:
    for label, colour in (("猫", "red"), ("狗", "blue"), ("汽车", "green")):
        (root / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (24, 24), colour).rotate(i * 9).save(root / label / f"{i}.png")
    return root


def test_build_lmdb_and_unpack_round_trip(tmp_path: Path):
    cells = _cells(tmp_path / "cells")
    dataset = tmp_path / "dataset"
    out = run_cli("grid", "dataset", "build", str(cells), "--out", str(dataset), "--lmdb", "--seed", "3")
    assert "3 labels" in out.stdout_text
    for split in ("train", "valid", "test"):
        assert (dataset / f"{split}_imgs.tsv").is_file() and (dataset / "lmdb" / split / "pairs").is_dir()
    first = json.loads((dataset / "train_texts.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"text_id", "text", "image_ids"} and first["text"] in {"猫", "狗", "汽车"}
    run_cli("grid", "dataset", "unpack", str(dataset), "--out", str(tmp_path / "back"), "--split", "train")
    back = {(p.parent.name, p.read_bytes()) for p in (tmp_path / "back").rglob("*.png")}
    original = {(p.parent.name, p.read_bytes()) for p in cells.rglob("*.png")}
    assert back and back <= original


def test_missing_cells_folder_is_one_line(tmp_path: Path):
    result = run_cli("grid", "dataset", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "d"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert len(result.stderr_text.strip().splitlines()) == 1 and "nope" in result.stderr_text


def test_split_ratio_errors_quote_what_was_typed(tmp_path: Path):
    cells = _cells(tmp_path / "cells")
    for typed in ("nan,1,1", "inf,1,1", "0,1,1", "1,2", "a,b,c"):
        result = run_cli("grid", "dataset", "build", str(cells), "--out", str(tmp_path / "d"), "--split", typed,
                         check=False)  # fmt: skip
        assert result.returncode == 2 and len(result.stderr_text.strip().splitlines()) == 1
        assert f"bad split ratios '{typed}'" in result.stderr_text and "finite" in result.stderr_text
    assert not (tmp_path / "d").exists()


def test_grid_help_names_every_kind_of_command():
    line = next(row for row in run_cli("--help", env={"COLUMNS": "80"}).stdout_text.splitlines() if " grid " in row)
    for word in ("solve", "eval", "calibrate", "generate", "cells", "train", "export"):
        assert word in line
