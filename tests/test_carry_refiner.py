"""scripts/carry-ocr-refiner.py: a bundle gets another bundle's refiner, and reads as that bundle does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from captchalab.data.generate import GenerateConfig, iter_samples
from captchalab.ocr import OcrReader
from captchalab.runtime.bundle import default_bundle_path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "carry-ocr-refiner.py"


def test_carried_refiner_reads_as_the_source(tmp_path: Path) -> None:
    target = tmp_path / "plain"
    shutil.copytree(default_bundle_path("ocr"), target)
    manifest = json.loads((target / "manifest.json").read_text())
    for name in ("refiner.onnx", "refiner.fp32.onnx"):
        (target / name).unlink()
        manifest["sha256"].pop(name)
    del manifest["files"]["refiner"], manifest["refiner"]
    (target / "manifest.json").write_text(json.dumps(manifest))
    assert OcrReader(str(target)).refiner is None

    subprocess.run([sys.executable, str(SCRIPT), "default", str(target)], check=True, capture_output=True)
    images = [image for _, image in iter_samples(GenerateConfig("0O123", 4, 4, seed=3), 40)]
    carried, source = OcrReader(str(target)), OcrReader("default")
    assert carried.refiner is not None
    assert [r.text for r in carried.read_batch(images)] == [r.text for r in source.read_batch(images)]
    written = json.loads((target / "manifest.json").read_text())
    assert written["refiner"] == json.loads((default_bundle_path("ocr") / "manifest.json").read_text())["refiner"]


def test_a_bundle_of_another_charset_is_refused(tiny_bundle: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "default", str(tiny_bundle)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "another charset" in done.stderr
