"""How much weight should the CTC model's own score get next to the refiner's, per alphabet? Reads a bundle's
refiner on its held-out crops (the split ``ocr refine`` used: seed 0, 10 %), grouped by the look-alikes the inferred
alphabet allowed (0/O in A-Z0-9 captchas, 0/o in a-z0-9, 0/O/o in a-zA-Z0-9), for each candidate weight.

    python benchmarks/ocr_refiner_weights.py [--model default] [--data data/ocr-refiner] [--crops FILE.npz]

``--crops`` reuses crops saved by an earlier run (collected again and saved there when the file is missing; the
default refiner's 460k captchas take about 6 minutes and 1.9 GB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from captchalab.export.ocr_refine import REFINER_FP32_FILE
from captchalab.runtime.bundle import load_bundle
from captchalab.runtime.ocr_refine import Refiner, RefineSpec
from captchalab.training.ocr_refine import (
    MAIN_WEIGHTS,
    collect_crops,
    combined_accuracy,
    load_crops,
    save_crops,
    split_crops,
    weights_by_alphabet,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=Path("data/ocr-refiner"))
    parser.add_argument("--crops", type=Path, help="crops saved by an earlier run (.npz), or where to save them")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-refiner-weights.json")
    args = parser.parse_args()
    bundle = load_bundle(args.model, "ocr")
    spec = RefineSpec.from_dict(bundle.manifest["refiner"])
    if args.crops is not None and args.crops.is_file():
        crops = load_crops(args.crops)
    else:
        crops = collect_crops(args.model, args.data, spec)
        if args.crops is not None:
            save_crops(crops, args.crops)
    _, valid = split_crops(crops, 0.1, 0)
    main_scores, labels = crops.main[valid], crops.labels[valid]
    files = {"as shipped": bundle.file("refiner")}  # int8 in the default bundle
    if (bundle.path / REFINER_FP32_FILE).is_file():
        files["fp32 original"] = bundle.path / REFINER_FP32_FILE
    result = {"model": args.model, "shipped_main_weight": spec.main_weight, "shipped_main_weights": spec.main_weights,
              "held_out_crops": len(valid), "refiners": {}}  # fmt: skip
    for precision, file in files.items():
        refiner = Refiner(file, spec, None, None)
        images = crops.images[valid]
        cnn = np.concatenate([refiner.log_probs(images[i : i + 1024]) for i in range(0, len(images), 1024)])
        groups = weights_by_alphabet(cnn, main_scores, labels, spec.chars)
        for options, group in groups.items():
            cells = "  ".join(f"{w}: {a:.4f}" for w, a in group["accuracy_by_main_weight"].items())
            print(f"{precision:13s}  {options:4s} {group['crops']:6d} crops  {cells}  -> {group['chosen']}")
        everything = {w: combined_accuracy(cnn, main_scores, labels, w) for w in MAIN_WEIGHTS}
        groups["all"] = {"crops": len(valid), "accuracy_by_main_weight": everything}
        cells = "  ".join(f"{w}: {a:.4f}" for w, a in everything.items())
        print(f"{precision:13s}  all  {len(valid):6d} crops  {cells}")
        result["refiners"][precision] = groups
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
