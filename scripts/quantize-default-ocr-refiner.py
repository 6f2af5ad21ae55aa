#!/usr/bin/env python3
"""Make the shipped default OCR bundle's refiner int8 (static QDQ, onnxruntime), keeping the fp32 original beside it.

    python scripts/quantize-default-ocr-refiner.py [--bundle src/captchalab/assets/ocr-default]

Run after scripts/train-default-ocr-refiner.sh. Calibration: the crops the bundle cuts from 1,000 captchas of the
training mix (ocr generate seeds 7001-7005, none of them in the refiner's training data). Gate: on the development
sets (seeds 8001-8005, 2,000 images each; the benchmark uses 9001-9005) the bundle with the int8 refiner must read
within 0.3 points of the one with the fp32 refiner on every set, or nothing is written. About 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]
from ocr import int8_gate  # noqa: E402

from captchalab.data.charset import parse_charset_spec  # noqa: E402
from captchalab.data.generate import GenerateConfig, iter_samples  # noqa: E402
from captchalab.export.common import bundle_copy, install_bundle, quantize_int8  # noqa: E402
from captchalab.export.ocr_refine import REFINER_FILE, REFINER_FP32_FILE  # noqa: E402
from captchalab.runtime.bundle import onnx_session, sha256_file  # noqa: E402
from captchalab.runtime.ocr_refine import RefineSpec  # noqa: E402
from captchalab.training.ocr_refine import collect_crops  # noqa: E402

# (alphabet, min length, max length, style, seed, images): the mix of scripts/train-default-ocr-refiner.sh
CALIBRATION = [("upper+digits", 4, 4, "captcha", 7001, 400), ("alnum", 4, 6, "captcha", 7002, 250),
               ("lower+digits", 4, 6, "captcha", 7003, 100), ("alnum", 4, 6, "builtin", 7004, 250)]  # fmt: skip
MAX_DROP = 0.003


def calibration_crops(bundle: Path, spec: RefineSpec, folder: Path) -> np.ndarray:
    """(N, 1, H, W) classifier inputs: the crops ``bundle`` cuts from the calibration captchas."""
    for k, (alphabet, low, high, style, seed, count) in enumerate(CALIBRATION):
        config = GenerateConfig(parse_charset_spec(alphabet), low, high, style=style, seed=seed,
                                favour=spec.chars, favour_rate=0.3)  # fmt: skip
        for i, (label, image) in enumerate(iter_samples(config, count)):
            image.save(folder / f"{k}{i:05d}-{label}.png")
    crops = collect_crops(bundle, folder, spec).images
    return spec.normalize(crops)[np.random.default_rng(0).permutation(len(crops))]


def ms_per_crop(model: Path, crops: np.ndarray, rounds: int = 40) -> float:
    """Median milliseconds per crop of ``model`` on one thread, batches of 32 crops."""
    session, batch = onnx_session(model, threads=1), crops[:32]
    session.run(None, {"crop": batch})
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        session.run(None, {"crop": batch})
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000 / len(batch), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "src" / "captchalab" / "assets" / "ocr-default")
    bundle = parser.parse_args().bundle
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    spec = RefineSpec.from_dict(manifest["refiner"])
    fp32 = bundle / (REFINER_FP32_FILE if (bundle / REFINER_FP32_FILE).exists() else REFINER_FILE)
    with bundle_copy(bundle, bundle, leave_out=(REFINER_FILE, REFINER_FP32_FILE)) as work:
        shutil.copy2(fp32, work / REFINER_FP32_FILE)
        with tempfile.TemporaryDirectory() as images:
            calibration = calibration_crops(bundle, spec, Path(images))
        quantize_int8(work / REFINER_FP32_FILE, work / REFINER_FILE, "crop", calibration[:1024])
        report = int8_gate(work, manifest, "refiner", REFINER_FP32_FILE, 2000, MAX_DROP, threads=1)
        files = {"fp32": REFINER_FP32_FILE, "int8": REFINER_FILE}
        speed = {k: ms_per_crop(work / f, calibration) for k, f in files.items()}
        print(f"ms per crop, one thread: fp32 {speed['fp32']}, int8 {speed['int8']}")
        manifest["sha256"] = {**manifest["sha256"], REFINER_FILE: sha256_file(work / REFINER_FILE),
                              REFINER_FP32_FILE: sha256_file(work / REFINER_FP32_FILE)}  # fmt: skip
        manifest["refiner"]["quantization"] = {
            "from": f"{REFINER_FP32_FILE} (the fp32 refiner, kept in the bundle)",
            "method": "onnxruntime static QDQ: per-channel int8 weights, uint8 activations",
            "calibration": f"{min(len(calibration), 1024)} crops cut by the bundle from 1,000 captchas, ocr generate "
            "seeds 7001-7004 with --favour 0Oo:0.3",
            "development_sets": "2,000 captchas each, seeds 8001-8005, read case-insensitively, charset auto",
            "accuracy": report,
            "ms_per_crop_one_thread": speed,
            "command": "python scripts/quantize-default-ocr-refiner.py",
        }
        install_bundle(work, bundle, manifest)
    print(f"wrote {bundle} (int8 refiner; fp32 original kept as {REFINER_FP32_FILE})")


if __name__ == "__main__":
    main()
