"""``captchalab search split|stats`` through the real entry point."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli


def _classes(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_split_and_stats(tmp_path: Path):
    classes = _classes(tmp_path / "classes")
    out = run_cli("search", "split", str(classes), "--out", str(tmp_path / "split"), "--size", "8x8", "--seed", "1")
    assert "train 16" in out.stdout_text
    with Image.open(next((tmp_path / "split" / "train" / "cat").iterdir())) as image:
        assert image.size == (8, 8)
    row = json.loads(run_cli("search", "stats", str(classes), "--json").stdout_text)
    pixels = np.concatenate(
        [np.asarray(Image.open(p), dtype=np.float64).reshape(-1, 3) / 255 for p in sorted(classes.rglob("*.png"))]
    )
    assert row["images"] == 20
    assert np.allclose(row["mean"], pixels.mean(0), atol=1e-5) and np.allclose(row["std"], pixels.std(0), atol=1e-5)


def test_stats_of_an_empty_folder_is_one_line(tmp_path: Path):
    result = run_cli("search", "stats", str(tmp_path), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert len(result.stderr_text.strip().splitlines()) == 1
