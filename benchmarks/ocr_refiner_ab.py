"""Which refiner network tells 0 / O apart best? Trains candidate networks on the same crops (cut by the shipped
default model from labelled captchas, as ``ocr refine`` does) and scores them on the same held-out crops.

    captchalab ocr generate data/ocr-refiner/a --count 70000 --style captcha --charset upper+digits --length 4 \\
        --favour 0O:0.3 --seed 111 --workers 2        # as scripts/train-default-ocr-refiner.sh does
    python benchmarks/ocr_refiner_ab.py data/ocr-refiner/a --images 30000 --epochs 6   # ~20 min on 2 cores

Candidates: ``stride2-small``, the network shipped until 2026-12-07 (first convolution strides by 2, widths
16,32,64,96), and ``default``, today's RefinerNet (first convolution at full resolution, widths 32,64,96,128).
Writes benchmarks/results/ocr-refiner-ab.json. ``--crop-width 64 --candidates default`` asks whether a wider crop
(more of the overlapping neighbours) helps.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from torch import nn

import captchalab.training.ocr_refine as refine_training
from captchalab.models.ocr_refiner import RefinerNet, _conv
from captchalab.runtime.ocr_refine import RefineSpec


class Stride2Small(RefinerNet):
    """The earlier refiner network: a stride-2 first convolution instead of full resolution and a pooling."""

    def __init__(self, n_classes: int, widths: tuple[int, int, int, int] = (16, 32, 64, 96)):
        super().__init__(n_classes, widths)
        stride2 = _conv(1, widths[0])
        stride2[0].stride = (2, 2)
        self.features = nn.Sequential(*stride2, *list(self.features)[4:])  # drops conv, BN, ReLU, pooling


CANDIDATES = {"stride2-small": (Stride2Small, (16, 32, 64, 96)), "default": (RefinerNet, (32, 64, 96, 128))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of labelled captchas (NNNNN-<label>.png)")
    parser.add_argument("--images", type=int, default=30000, help="use the first N images of DATA")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--crop-width", type=int, default=48, help="crop width in source pixels (the runtime's: 48)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated: {', '.join(CANDIDATES)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr-refiner-ab.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = sorted(args.data.glob("*.png"))[: args.images]
    spec = RefineSpec("0Oo", 60, args.crop_width)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "subset.tsv"
        listing.write_text("".join(f"{f.resolve()}\t{f.stem.rsplit('-', 1)[-1]}\n" for f in files), encoding="utf-8")
        crops = refine_training.collect_crops("default", listing, spec)
    train, valid = refine_training.split_crops(crops, 0.15, 0)
    results = {}
    for name in args.candidates.split(","):
        network, widths = CANDIDATES[name]
        refine_training.RefinerNet = network  # train_refiner builds RefinerNet(n_classes, opts.channels)
        started = time.time()
        opts = refine_training.RefineOptions(chars=spec.chars, epochs=args.epochs, channels=widths)
        _, _, report = refine_training.train_refiner(crops, spec, opts, train, valid)
        results[name] = {"widths": widths, **report["valid_accuracy"], "seconds": round(time.time() - started)}
        print(f"{name}: {results[name]}", flush=True)
    refine_training.RefinerNet = RefinerNet
    out = {"data": str(args.data), "images": len(files), "crop": [spec.height, spec.width], "epochs": args.epochs,
           "crops": {"train": len(train), "valid": len(valid)}, "candidates": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
