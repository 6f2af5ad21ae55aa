#!/usr/bin/env python3
"""Give OCR bundle TO the look-alike refiner of bundle FROM: refiner.onnx (and refiner.fp32.onnx) and the manifest's
``refiner`` entry, rewriting TO in place (atomically).

    python scripts/carry-ocr-refiner.py src/captchalab/assets/ocr-default runs/ocr-tuned-bundle

The refiner reads full-resolution crops and does not depend on the main model, except for the weights its answer gives
the main model's own scores (``main_weight`` / ``main_weights``), which were chosen next to FROM's main model. They are
kept as they are: for A-Z0-9 captchas that weight is 0 (the refiner alone decides 0 / O), so there nothing changes.
Used after fine-tuning the default's main model with `ocr train --init` (README: Three more epochs).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]
from captchalab.export.common import bundle_copy, install_bundle  # noqa: E402
from captchalab.export.ocr_refine import REFINER_FILE, REFINER_FP32_FILE  # noqa: E402
from captchalab.runtime.bundle import load_bundle, sha256_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="bundle with a refiner (or 'default')")
    parser.add_argument("target", type=Path, help="bundle to give it to")
    args = parser.parse_args()
    source, target = load_bundle(args.source, "ocr"), load_bundle(args.target, "ocr")
    if "refiner" not in source.manifest.get("files", {}):
        sys.exit(f"{source.path}: has no refiner")
    if source.manifest["charset"] != target.manifest["charset"]:
        sys.exit(f"{target.path}: another charset than {source.path}")
    manifest = dict(target.manifest)
    with bundle_copy(target.path, target.path, leave_out=(REFINER_FILE, REFINER_FP32_FILE)) as work:
        carried = [name for name in (REFINER_FILE, REFINER_FP32_FILE) if (source.path / name).is_file()]
        for name in carried:
            shutil.copy2(source.path / name, work / name)
        manifest["files"] = {**manifest["files"], "refiner": REFINER_FILE}
        manifest["refiner"] = source.manifest["refiner"]
        manifest["sha256"] = {**manifest.get("sha256", {}), **{name: sha256_file(work / name) for name in carried}}
        install_bundle(work, target.path, manifest)
    print(f"{target.path}: now has the refiner of {source.path} ({', '.join(carried)})")


if __name__ == "__main__":
    main()
