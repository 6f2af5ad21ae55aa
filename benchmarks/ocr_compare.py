"""Which of several OCR bundles reads best? Reads the same captchas with each, as shipped (charset auto, scored
case-insensitively), and counts the misread ones per set and in all. Never on the benchmark's seeds (9001-9005):

- ``dev``: the benchmark's five sets with seeds 8001-8005, and upper case 8102 / 8202 (where choices are made);
- ``check``: the same with seeds 8021-8025 and 8302 / 8402 (to confirm a choice once, on captchas it was not made on).

    python benchmarks/ocr_compare.py default runs/candidate-bundle [--sets dev|check] [--count 2000] [--upper 5000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ocr import SETS, development_sets, png_set

from captchalab.ocr import OcrReader

UPPER = "captcha 160x60, 4 chars A-Z0-9"
SEEDS = {"dev": (-1000, (8102, 8202)), "check": (-980, (8302, 8402))}  # offset to the benchmark's seeds, upper seeds


def sets(which: str, count: int, upper: int) -> list[tuple[str, list[bytes], list[str]]]:
    offset, upper_seeds = SEEDS[which]
    out = [(f"{name} (seed {SETS[name][0].seed + offset})", images, labels)
           for name, images, labels in development_sets(count, offset)]  # fmt: skip
    for seed in upper_seeds:
        out.append((f"{UPPER} (seed {seed})", *png_set(dataclasses.replace(SETS[UPPER][0], seed=seed), upper)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="bundles (or 'default')")
    parser.add_argument("--sets", choices=sorted(SEEDS), default="dev")
    parser.add_argument("--count", type=int, default=2000, help="captchas per benchmark-like set")
    parser.add_argument("--upper", type=int, default=5000, help="captchas per extra upper-case set")
    parser.add_argument("--average-shifts", action="store_true", help="read with OcrReader(average_shifts=True)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-compare.json")
    args = parser.parse_args()
    data = sets(args.sets, args.count, args.upper)
    readers = {
        m: OcrReader(m, threads=1, case_sensitive=False, average_shifts=args.average_shifts) for m in args.models
    }
    table: dict[str, dict[str, int]] = {}
    for name, images, labels in data:
        row = {}
        for model, reader in readers.items():
            texts = [r.text for r in reader.read_batch(images, 256, workers=2)]
            row[model] = sum(t.lower() != y.lower() for t, y in zip(texts, labels))
        table[name] = row
        print(f"{name:52s} " + "  ".join(f"{row[m]:5d}" for m in args.models), flush=True)
    totals = {m: sum(row[m] for row in table.values()) for m in args.models}
    upper = {m: sum(row[m] for name, row in table.items() if name.startswith(UPPER)) for m in args.models}
    print(f"{'misread in all':52s} " + "  ".join(f"{totals[m]:5d}" for m in args.models))
    upper_images = sum(len(labels) for name, _, labels in data if name.startswith(UPPER))
    print(f"{f'misread upper case ({upper_images})':52s} " + "  ".join(f"{upper[m]:5d}" for m in args.models))
    result = {"sets": args.sets, "models": args.models, "average_shifts": args.average_shifts,
              "images": {name: len(labels) for name, _, labels in data}, "misread": table,
              "misread_total": totals, "misread_upper_case": upper}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
