"""Shared fixtures: tiny generated datasets, one tiny trained run and its exported bundle (built once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("CAPTCHALAB_PROGRESS", "0")
CLI = [sys.executable, "-m", "captchalab"]  # the real entry point, in this interpreter


def run_cli(
    *args: str, input: bytes | None = None, check: bool = True, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real ``captchalab`` entry point in a subprocess; returns the completed process (text output)."""
    process = subprocess.run(
        [*CLI, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    process.stdout_text = process.stdout.decode("utf-8", "replace")  # type: ignore[attr-defined]
    process.stderr_text = process.stderr.decode("utf-8", "replace")  # type: ignore[attr-defined]
    if check and process.returncode != 0:
        raise AssertionError(f"captchalab {' '.join(args)} failed ({process.returncode}):\n{process.stderr_text}")
    return process


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 digit captchas, length 3-4, small images, made by the real generator."""
    from captchalab.data.generate import GenerateConfig, generate

    out = tmp_path_factory.mktemp("tiny-data")
    generate(
        out,
        160,
        GenerateConfig(charset="0123456789", min_length=3, max_length=4, width=80, height=32, style="mixed", seed=7),
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ctc run trained for two epochs through the CLI."""
    run = tmp_path_factory.mktemp("runs") / "ctc"
    run_cli(
        "ocr", "train", str(tiny_data), "--out", str(run), "--max-epochs", "2", "--batch-size", "32", "--size", "48x16"
    )
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("bundles") / "ctc"
    run_cli("ocr", "export", str(tiny_run), "--out", str(bundle))
    return bundle


# ------------------------------------------------------------------------------------------- picture grids (issue #3)
GRID_WORDS = {"猫": (220, 40, 40), "狗": (40, 170, 40), "自行车": (40, 60, 220), "热狗": (210, 190, 30),
              "苹果": (200, 60, 200), "鱼": (30, 190, 200)}  # fmt: skip
TINY_GRIDCLIP = (
    '{"image_size": 32, "trunk_blocks": 3, "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2}'
)


def draw_grid_cell(word_index: int, rng, size: int = 40):  # noqa: ANN001, ANN201
    """A cell: a word-coloured shape (its kind fixed per word) on a random light background."""
    from PIL import Image, ImageDraw

    colour = list(GRID_WORDS.values())[word_index]
    background = tuple(int(v) for v in rng.integers(150, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(2, size // 3, 2))
    box = [x, y, x + size // 2, y + size // 2]
    (draw.ellipse if word_index % 2 else draw.rectangle)(box, fill=colour)
    return image


@pytest.fixture(scope="session")
def tiny_grid_cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six words x 30 labelled cells in <word>/<n>.png folders."""
    import numpy as np

    root = tmp_path_factory.mktemp("grid-cells")
    rng = np.random.default_rng(3)
    for index, word in enumerate(GRID_WORDS):
        (root / word).mkdir()
        for n in range(30):
            draw_grid_cell(index, rng).save(root / word / f"{n:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_grid_dataset(tiny_grid_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grid-ds") / "ds"
    run_cli("grid", "dataset", "build", str(tiny_grid_cells), "--out", str(out), "--split", "0.7,0.15,0.15")
    return out


@pytest.fixture(scope="session")
def tiny_grid_run(tiny_grid_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gridclip trained from scratch through the real CLI (about 20 s on 2 CPU cores)."""
    run = tmp_path_factory.mktemp("grid-runs") / "run"
    run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(run), "--init", "scratch", "--epochs", "12",
            "--batch-size", "32", "--lr", "3e-3", "--warmup", "5", "--model-config", TINY_GRIDCLIP)  # fmt: skip
    return run


@pytest.fixture(scope="session")
def tiny_grid_bundle(tiny_grid_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported: image.onnx, text.onnx, vocab.txt, weights.safetensors, manifest.json."""
    bundle = tmp_path_factory.mktemp("grid-bundles") / "tiny"
    run_cli("grid", "export", str(tiny_grid_run), "--out", str(bundle))
    return bundle


def random_grid_truth(rng, grid_number: int):  # noqa: ANN001, ANN201
    """The truth of a simulated grid: 6 cells for even numbers, 9 for odd ones, 1-4 of them matching."""
    import numpy as np

    size = 9 if grid_number % 2 else 6
    truth = np.zeros(size, dtype=bool)
    truth[rng.choice(size, int(rng.integers(1, 5)), replace=False)] = True
    return truth
