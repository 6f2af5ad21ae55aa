"""What does a bundle get wrong on upper-case captchas? Reads 4-char A-Z0-9 captcha-library sets (seeds no benchmark
or training set uses) as shipped and sorts the misread captchas: O <-> 0 alone, other substitutions, a character left
out or added; with the most frequent substitutions.

    python benchmarks/ocr_errors.py [--model default] [--count 5000] [--seeds 8102 8202]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

from ocr import SETS, png_set

from captchalab.ocr import OcrReader

UPPER = "captcha 160x60, 4 chars A-Z0-9"


def kind_of(truth: str, read: str) -> tuple[str, list[tuple[str, str]]]:
    """('O/0 only' | 'other' | 'length', the (true, read) substitutions) of one misread captcha."""
    if len(truth) != len(read):
        return "length", [(truth, read)]
    swaps = [(a, b) for a, b in zip(truth, read) if a != b]
    return ("O/0 only" if all({a, b} <= {"O", "0"} for a, b in swaps) else "other"), swaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--count", type=int, default=5000, help="captchas per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[8102, 8202])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-errors.json")
    args = parser.parse_args()
    reader = OcrReader(args.model, threads=1, case_sensitive=False)
    kinds, swaps, images = Counter(), Counter(), 0
    for seed in args.seeds:
        data, labels = png_set(dataclasses.replace(SETS[UPPER][0], seed=seed), args.count)
        images += len(labels)
        for reading, truth in zip(reader.read_batch(data, 256, workers=2), labels):
            if reading.text.upper() != truth.upper():
                kind, found = kind_of(truth.upper(), reading.text.upper())
                kinds[kind] += 1
                swaps.update(f"{a}->{b}" for a, b in found)
    misread = sum(kinds.values())
    result = {"model": args.model, "set": UPPER, "seeds": args.seeds, "images": images, "misread": misread,
              "accuracy": 1 - misread / images, "kinds": dict(kinds),
              "substitutions": dict(swaps.most_common(25))}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{misread} of {images} misread ({1 - misread / images:.2%} right): {dict(kinds)}")
    print("most frequent:", ", ".join(f"{k} {v}" for k, v in swaps.most_common(12)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
