"""The dataset helpers of the image-search article: split class folders into train/val/test, and per-channel
mean/std of a folder of images.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from captchalab.data.split import check_ratios
from captchalab.errors import CaptchalabError
from captchalab.imaging import MAX_PIXELS, image_paths, load_image
from captchalab.progress import track

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # others are written as PNG
HISTOGRAM_CHUNK = 1 << 20  # pixels counted at once


def _split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split for one class: rounded shares, one train image first, then one per other non-zero split."""
    n_val = round(n * ratios[1])
    n_test = round(n * ratios[2])
    if n >= 3:
        n_val = max(n_val, 1 if ratios[1] > 0 else 0)
        n_test = max(n_test, 1 if ratios[2] > 0 else 0)
    while n > 0 and n - n_val - n_test < 1:  # every class with an image gets a train image
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def _check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as (width, height): positive, and no larger than the largest image captchalab reads."""
    if size is None:
        return None
    width, height = (size, size) if isinstance(size, int) else size
    if width < 1 or height < 1:
        raise CaptchalabError(f"bad --size {width}x{height}: width and height must be at least 1")
    if width * height > MAX_PIXELS:
        raise CaptchalabError(f"bad --size {width}x{height}: over the {MAX_PIXELS:,}-pixel limit for one image")
    return width, height


def split_class_folders(
    class_dir: str | os.PathLike,
    out: str | os.PathLike,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    size: int | tuple[int, int] | None = None,
) -> dict:
    """Copy ``class_dir/<class>/...`` images into ``out/{train,val,test}/<class>/...`` as RGB, optionally resized.

    The split is stratified (per class) and reproducible from ``seed``; it is recorded in ``out/split.json``.
    ``out`` must not exist or be empty: everything is written to a temporary sibling folder that is renamed
    into place at the end, so no user file is overwritten and an interrupted run leaves no half-made ``out``.
    Unreadable images are skipped and listed.

    Returns:
        {"out", "seed", "ratios", "size", "counts": {split: {class: n}}, "skipped": [...]}
    """
    class_dir, out = Path(class_dir), Path(out)
    ratios = check_ratios(ratios)
    target = _check_size(size)
    if not class_dir.is_dir():
        raise CaptchalabError(f"{class_dir}: no such folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CaptchalabError(f"{out}: already exists and is not empty; choose a new output folder")
    if out.resolve().is_relative_to(class_dir.resolve()):
        raise CaptchalabError(f"{out}: the output folder must not be inside the class folder {class_dir}")
    classes = {d.name: image_paths(d) for d in sorted(class_dir.iterdir()) if d.is_dir()}
    if not any(classes.values()):
        raise CaptchalabError(f"{class_dir}: no class sub-folders with images found")
    plan: list[tuple[Path, str, str, str]] = []  # (source, split, class, relative destination)
    for name, files in classes.items():
        order = list(files)
        random.Random(f"{seed}/{name}").shuffle(order)  # string seeds are stable across runs and platforms
        n_train, n_val, _ = _split_counts(len(order), ratios)
        for i, source in enumerate(order):
            split = SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
            plan.append((source, split, name, _destination(source.relative_to(class_dir / name))))
    _dedupe_destinations(plan)

    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    counts = {split: {name: 0 for name in classes} for split in SPLITS}
    skipped: list[str] = []
    record: dict[str, list[list[str]]] = {split: [] for split in SPLITS}
    try:
        for source, split, name, rel in track(plan, len(plan), "splitting"):
            try:
                image = load_image(source)
            except CaptchalabError as exc:
                skipped.append(str(exc))
                continue
            if target is not None:
                image = image.resize(target, Image.Resampling.BICUBIC)
            dest = tmp / split / name / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            image.save(dest)
            counts[split][name] += 1
            record[split].append([source.relative_to(class_dir).as_posix(), f"{split}/{name}/{rel}"])
        result = {
            "out": str(out),
            "seed": seed,
            "ratios": list(ratios),
            "size": list(target) if target else None,
            "counts": counts,
            "skipped": skipped,
        }
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "split.json").write_text(
            json.dumps({**result, "files": record}, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own temporary folder
        raise
    for message in skipped:
        log.warning("skipped %s", message)
    return result


def _destination(rel: Path) -> str:
    suffix = rel.suffix.lower()
    return rel.as_posix() if suffix in WRITABLE_SUFFIXES else rel.with_suffix(".png").as_posix()


def _dedupe_destinations(plan: list[tuple[Path, str, str, str]]) -> None:
    """``a.gif`` and ``a.png`` both become ``a.png``: give later ones ``a-2.png``, ``a-3.png``..."""
    seen: set[tuple[str, str, str]] = set()
    for i, (source, split, name, rel) in enumerate(plan):
        candidate, n = rel, 1
        while (split, name, candidate) in seen:
            n += 1
            path = Path(rel)
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}").as_posix()
        seen.add((split, name, candidate))
        plan[i] = (source, split, name, candidate)


@dataclass(frozen=True)
class ChannelStats:
    mean: np.ndarray  # (3,) float64, RGB, pixels scaled to [0, 1]
    std: np.ndarray  # (3,) float64, population standard deviation
    images: int
    pixels: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "images": self.images,
            "pixels": self.pixels,
            "skipped": self.skipped,
        }


def compute_channel_stats(folder: str | os.PathLike) -> ChannelStats:
    """Per-channel mean and std over every pixel of every image under ``folder``, in one streaming pass.

    Pixels are counted into 256-bin histograms per channel (exact integers), so any number of images fits in
    constant memory and the result does not depend on the order the images are read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptchalabError(f"{folder}: no such folder")
    files = image_paths(folder)
    histogram = np.zeros((3, 256), dtype=np.int64)
    skipped: list[str] = []
    images = 0
    for path in track(files, len(files), "measuring"):
        try:
            pixels = np.asarray(load_image(path), dtype=np.uint8).reshape(-1, 3)
        except CaptchalabError as exc:
            skipped.append(str(exc))
            log.warning("skipped %s", exc)
            continue
        for start in range(0, len(pixels), HISTOGRAM_CHUNK):
            chunk = pixels[start : start + HISTOGRAM_CHUNK]
            for channel in range(3):
                histogram[channel] += np.bincount(chunk[:, channel], minlength=256)
        images += 1
    if images == 0:
        raise CaptchalabError(f"{folder}: no readable images found")
    values = np.arange(256, dtype=object)  # Python ints: sums of squares stay exact at any size
    n = int(histogram[0].sum())
    mean, std = np.zeros(3), np.zeros(3)
    for channel in range(3):
        counts = histogram[channel].astype(object)
        total, squares = int((values * counts).sum()), int((values * values * counts).sum())
        mean[channel] = total / n / 255.0
        std[channel] = float(np.sqrt((n * squares - total * total) / (n * n))) / 255.0
    return ChannelStats(mean, std, images, n, skipped)


def channel_stats(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mean (3,), std (3,)) of all pixels under ``folder`` scaled to [0, 1]; see ``compute_channel_stats``."""
    stats = compute_channel_stats(folder)
    return stats.mean, stats.std
