"""Training benchmark: from scratch on N generated captcha-library images, on this machine, against the clock.

    python benchmarks/ocr_train.py [--count 20000] [--minutes 17] [--work /tmp/ocr-train-bench]

Generates the set (not timed), then times `captchalab ocr train` end to end (cache + epochs + test report) and writes
benchmarks/results/ocr-train.json with the wall time, test accuracy and the per-epoch validation curve.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "captchalab", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--minutes", type=float, default=17.0, help="--max-minutes given to the trainer")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ocr-train-bench"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more 'ocr train' options")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-train.json")
    args = parser.parse_args()

    data, run = args.work / "data", args.work / "run"
    if not data.exists():
        cli(
            "ocr",
            "generate",
            str(data),
            "--count",
            str(args.count),
            "--style",
            "captcha",
            "--charset",
            "lower+digits",
            "--length",
            "4",
            "--seed",
            str(args.seed),
            "--workers",
            str(os.cpu_count()),
        )
    train = [
        "ocr",
        "train",
        str(data),
        "--out",
        str(run),
        "--max-minutes",
        str(args.minutes),
        "--schedule",
        "cosine",
        "--max-epochs",
        "40",
        "--patience",
        "40",
        *args.extra,
    ]
    started = time.perf_counter()
    cli(*train)
    wall = time.perf_counter() - started
    report = json.loads((run / "report.json").read_text())
    with open(run / "log.csv", newline="") as handle:
        curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    result = {
        "images": args.count,
        "command": "captchalab " + " ".join(train),
        "wall_seconds": round(wall, 1),
        "test_exact_accuracy": report["exact_accuracy"],
        "test_char_accuracy": report["char_accuracy"],
        "test_images": report["images"],
        "epochs": report["epochs_run"],
        "cpus": os.cpu_count(),
        "curve": curve,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(
        f"{args.count} images: test exact {report['exact_accuracy']:.4f} after {report['epochs_run']} epochs, "
        f"{wall / 60:.1f} min wall time; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
