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
