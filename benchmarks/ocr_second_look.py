"""Does the refiner's second look (RefineSpec.shifts: crops shifted by a pixel or two, read where the two best
answers are close) help? Reads large development sets, made with seeds no benchmark or training set uses, with the
bundle's refiner with and without it (the bundle's own shifts, or the ones new refiners get when it has none).

    python benchmarks/ocr_second_look.py [--model default] [--count 5000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from ocr import SETS, png_set

from captchalab.ocr import OcrReader
from captchalab.runtime.ocr_refine import SECOND_LOOK_MARGIN, SECOND_LOOK_SHIFTS

# the benchmark's sets with look-alikes (seed 9002 -> 8102, 8202; 9004 -> 8104, 8204)
LOOKED_AT = {"captcha 160x60, 4 chars A-Z0-9": (8102, 8202), "captcha 160x60, 4-6 chars a-zA-Z0-9": (8104, 8204)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--count", type=int, default=5000, help="captchas per seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-second-look.json")
    args = parser.parse_args()
    readers = {"second_look": OcrReader(args.model, threads=1, case_sensitive=False),
               "centre_only": OcrReader(args.model, threads=1, case_sensitive=False)}  # fmt: skip
    if readers["second_look"].refiner is None:
        sys.exit(f"{args.model}: this bundle has no refiner")
    spec = readers["second_look"].refiner.spec
    if not spec.shifts:
        spec = dataclasses.replace(spec, shifts=SECOND_LOOK_SHIFTS, shift_margin=SECOND_LOOK_MARGIN)
    readers["second_look"].refiner.spec = spec
    readers["centre_only"].refiner.spec = dataclasses.replace(spec, shifts=())
    rows = {}
    for name, seeds in LOOKED_AT.items():
        for seed in seeds:
            images, labels = png_set(dataclasses.replace(SETS[name][0], seed=seed), args.count)
            row = {"images": len(labels)}
            for key, reader in readers.items():
                started = time.perf_counter()
                texts = [r.text for r in reader.read_batch(images, 256, workers=1)]
                row[f"{key}_seconds"] = round(time.perf_counter() - started, 2)
                row[f"{key}_misread"] = sum(t.lower() != y.lower() for t, y in zip(texts, labels))
            rows[f"{name}, seed {seed}"] = row
            print(f"{name}, seed {seed}: misread {row['centre_only_misread']} centre crop only, "
                  f"{row['second_look_misread']} with the second look", flush=True)  # fmt: skip
    total = {k: sum(r[f"{k}_misread"] for r in rows.values()) for k in readers}
    result = {"model": args.model, "shifts": [list(s) for s in spec.shifts], "shift_margin": spec.shift_margin,
              "sets": rows, "misread": total,
              "seconds_ratio_median": statistics.median(r["second_look_seconds"] / r["centre_only_seconds"]
                                                        for r in rows.values())}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(
        f"misread: {total['centre_only']} centre crop only, {total['second_look']} with the second look; "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
