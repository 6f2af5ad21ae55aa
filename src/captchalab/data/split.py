"""Seeded train/valid/test splits, recorded in ``split.json`` so a run can be reproduced exactly."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from captchalab.errors import CaptchalabError

SPLITS = ("train", "valid", "test")


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``--split`` as typed (``0.8,0.1,0.1``, any scale: ``8,1,1``) -> train, valid, test ratios summing to 1."""
    try:
        values: list[float] = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    return check_ratios(values, shown=text)


def check_ratios(ratios: Sequence[float], shown: str | None = None) -> tuple[float, float, float]:
    """Three finite ratios >= 0 with train > 0, normalised; an error quotes ``shown`` (what the user typed)."""
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or values[0] <= 0:
        typed = shown if shown is not None else ",".join(str(r) for r in ratios)
        raise CaptchalabError(
            f"bad split ratios {typed!r}: use three finite numbers >= 0 with train > 0, such as 0.8,0.1,0.1"
        )
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def split_keys(
    keys: Sequence[str], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, min_per_split: int = 1
) -> dict[str, list[str]]:
    """Shuffle the sorted keys with ``seed`` and cut them by ``ratios``; every split gets ``min_per_split``."""
    ordered = sorted(keys)
    if len(set(ordered)) != len(ordered):
        raise CaptchalabError("the dataset lists the same image twice")
    need = min_per_split * sum(1 for r in ratios if r > 0)
    if len(ordered) < need:
        raise CaptchalabError(f"dataset too small to split: {len(ordered)} images, at least {need} needed")
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_valid = max(min_per_split, round(n * ratios[1])) if ratios[1] > 0 else 0
    n_test = max(min_per_split, round(n * ratios[2])) if ratios[2] > 0 else 0
    n_train = n - n_valid - n_test
    return {
        "train": ordered[:n_train],
        "valid": ordered[n_train : n_train + n_valid],
        "test": ordered[n_train + n_valid :],
    }


def write_split(path: Path, split: dict[str, list[str]], seed: int, ratios: tuple[float, float, float]) -> None:
    data = {"seed": seed, "ratios": list(ratios), **{k: split[k] for k in SPLITS}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=0), encoding="utf-8")
    tmp.replace(path)


def read_split(path: Path) -> dict[str, list[str]]:
    """The keys of each split in ``split.json``; CaptchalabError when it is missing or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptchalabError(f"{path}: no such file; is this a training run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptchalabError(f"{path}: cannot read the split ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) and all(isinstance(key, str) for key in data[k]) for k in SPLITS
    ):
        raise CaptchalabError(f"{path}: not a split file (needs lists of image names under {', '.join(SPLITS)})")
    return {k: data[k] for k in SPLITS}
