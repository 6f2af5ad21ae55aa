"""How separable are capital 'O' and digit '0' as the captcha library draws them (DroidSansMono, random warps)?

A small CNN is trained to convergence on single-character captchas at native resolution (64x64) and tested on fresh
ones; its accuracy is evidence of how far any reader can go on this pair (it bounds the upper-case captcha accuracy
we can hope for). About 25 minutes on 2 CPU cores:

    python benchmarks/ocr_o_vs_zero.py [--out benchmarks/results/ocr-o-vs-zero.json]

With ``--paired`` the training images come in twins drawn with the same random numbers, one 'O' and one '0' (the
library's text box, and so every later draw, is the same for both): the clutter is identical within a twin, so only
the glyph tells them apart. Twins sit in the same batch; the test images are drawn as usual.

With ``--clean`` each image is the library's glyph pipeline alone (font size, ink crop, rotation, stretch to the
text box, warp), black on white: no background noise, no curve, no dots, no neighbouring characters. What the
classifier still gets wrong then was lost in drawing the glyph, not in the clutter around it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw
from torch import nn

from captchalab.data.generate import CaptchaLibRenderer


def clean_glyph(generator: ImageCaptcha, char: str) -> Image.Image:
    """One glyph as the library draws it (its private ``_draw_character``), black on a white 64x64 canvas."""
    glyph = generator._draw_character(char, ImageDraw.Draw(Image.new("RGB", (1, 1))), (0, 0, 0))
    canvas = Image.new("L", (64, 64), 255)
    canvas.paste(0, ((64 - glyph.width) // 2, (64 - glyph.height) // 2), glyph.getchannel("A"))
    return canvas


def make_twins(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images as ``count // 2`` twins ('O', '0') drawn with the same random numbers, twin by twin."""
    renderer = CaptchaLibRenderer(64, 64)
    images, labels = [], []
    for k in range(count // 2):
        for label, char in enumerate("O0"):
            image = renderer.render(char, random.Random(seed * 1_000_003 + k)).convert("L")
            images.append(np.asarray(image, dtype=np.float32) / 255.0)
            labels.append(label)
    return torch.tensor(np.stack(images))[:, None], torch.tensor(labels)


def make(generator: ImageCaptcha, count: int, clean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 64, 64) grey images in [0, 1] and labels (0: 'O', 1: '0')."""
    images, labels = [], []
    for _ in range(count):
        label = random.randint(0, 1)
        char = "O0"[label]
        image = clean_glyph(generator, char) if clean else generator.generate_image(char).convert("L")
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
        labels.append(label)
    return torch.tensor(np.stack(images))[:, None], torch.tensor(labels)


def block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40000)
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--clean", action="store_true", help="the glyph alone: no noise, no neighbours")
    parser.add_argument("--paired", action="store_true", help="train on twins that differ only in the glyph")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.paired and args.clean:
        parser.error("--paired and --clean do not go together")
    name = (
        "ocr-o-vs-zero-clean.json"
        if args.clean
        else "ocr-o-vs-zero-paired.json"
        if args.paired
        else "ocr-o-vs-zero.json"
    )
    args.out = args.out or Path(__file__).parent / "results" / name
    random.seed(0)
    torch.manual_seed(0)
    started = time.time()
    generator = ImageCaptcha(width=64, height=64)
    x_train, y_train = make_twins(args.train, seed=1) if args.paired else make(generator, args.train, args.clean)
    x_test, y_test = make(generator, args.test, args.clean)
    layers = [*block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 96), nn.MaxPool2d(2)]
    net = nn.Sequential(*layers, *block(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 2))
    steps = args.epochs * (len(x_train) // 128)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    curve = []
    for epoch in range(args.epochs):
        net.train()
        if args.paired:  # whole twins, kept side by side
            order = (2 * torch.randperm(len(x_train) // 2)[:, None] + torch.arange(2)).flatten()
        else:
            order = torch.randperm(len(x_train))
        for i in range(0, len(x_train) - 127, 128):
            batch = order[i : i + 128]
            loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            guesses = torch.cat([net(x_test[j : j + 500]).argmax(1) for j in range(0, len(x_test), 500)])
        accuracy = (guesses == y_test).float().mean().item()
        curve.append({"epoch": epoch, "train_loss": loss.item(), "test_accuracy": accuracy})
        print(f"epoch {epoch} loss {loss.item():.3f} test accuracy {accuracy:.4f} ({time.time() - started:.0f} s)")
    result = {"clean": args.clean, "paired": args.paired, "train": args.train, "test": args.test,
              "test_accuracy": accuracy, "curve": curve, "seconds": time.time() - started}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"O vs 0: {accuracy:.4f} on {args.test} fresh images; wrote {args.out}")


if __name__ == "__main__":
    main()
