"""Does a bundle's refiner of look-alike characters help? Reads the development sets (the benchmark's five sets with
seeds 8001-8005 instead of 9001-9005, so choices made on them never touch the benchmark's numbers) with and without
the refiner, as shipped (charset auto, scored case-insensitively). Exits 1 if any set loses more than 0.3 pt, which is
the gate for putting a refiner into the default bundle (scripts/train-default-ocr-refiner.sh).

    python benchmarks/ocr_refiner_dev.py --model runs/ocr-refined [--count 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ocr import development_sets

from captchalab.evaluation import ocr_report
from captchalab.ocr import OcrReader

MAX_LOSS = 0.003


def only_o_zero(texts: list[str], labels: list[str]) -> int:
    """Misread captchas whose every mistake is an O read as 0 or a 0 read as O (case-insensitively)."""
    fold = str.maketrans("o", "0")
    pairs = [(t.lower(), y.lower()) for t, y in zip(texts, labels)]
    return sum(t != y and t.translate(fold) == y.translate(fold) for t, y in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-refiner-dev.json")
    args = parser.parse_args()
    refined = OcrReader(args.model, threads=1, case_sensitive=False)
    if refined.refiner is None:
        sys.exit(f"{args.model}: this bundle has no refiner")
    plain = OcrReader(args.model, threads=1, case_sensitive=False, refine=False)
    rows, worst = {}, 0.0
    for name, images, labels in development_sets(args.count):
        texts = {k: [r.text for r in reader.read_batch(images, 256, workers=2)] for k, reader in
                 (("refined", refined), ("no_refiner", plain))}  # fmt: skip
        with_it, without = (ocr_report(texts[k], labels, False)["exact_accuracy"] for k in ("refined", "no_refiner"))
        rows[name] = {"images": len(labels), "refined": with_it, "no_refiner": without,
                      "misread": {k: sum(t.lower() != y.lower() for t, y in zip(v, labels)) for k, v in texts.items()},
                      "misread_only_O_0": {k: only_o_zero(v, labels) for k, v in texts.items()}}  # fmt: skip
        worst = min(worst, with_it - without)
        print(f"{name:38s} no refiner {without:.4f}   refined {with_it:.4f}   ({(with_it - without) * 100:+.2f} pt)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "refiner": refined.refiner.spec.to_dict(), "sets": rows,
              "worst_change": worst, "gate_max_loss": MAX_LOSS, "passed": worst >= -MAX_LOSS}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")
    if worst < -MAX_LOSS:
        sys.exit(f"refiner refused: a development set loses {-worst * 100:.2f} pt (more than {MAX_LOSS * 100:.1f})")


if __name__ == "__main__":
    main()
