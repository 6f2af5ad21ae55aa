"""Grid training data: Chinese-CLIP-format splits decoded once into uint8 arrays, and GPU/CPU batch augmentation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from captchalab.data.cnclip import read_split
from captchalab.data.cnclip_lmdb import read_lmdb_split
from captchalab.errors import CaptchalabError
from captchalab.imaging import ClipPreprocess, load_image
from captchalab.progress import track

log = logging.getLogger(__name__)


@dataclass
class CellSet:
    """Decoded cells of one split: ``pixels`` (N, S, S, 3) uint8 and each cell's text."""

    pixels: np.ndarray
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def split_exists(dataset: Path, split: str) -> bool:
    """Whether the split's files are there (it may still hold no pairs: ``optional_cells`` tells)."""
    return (dataset / f"{split}_imgs.tsv").is_file() or (dataset / "lmdb" / split / "pairs").is_dir()


def _raw_cells(dataset: str | Path, split: str, allow_empty: bool = False) -> list:
    folder = Path(dataset)
    if not folder.is_dir():
        raise CaptchalabError(f"{folder}: no such dataset folder")
    if (folder / f"{split}_imgs.tsv").is_file():
        cells = read_split(folder, split)
    elif (folder / "lmdb" / split / "pairs").is_dir():
        cells = read_lmdb_split(folder / "lmdb" / split)
    else:
        raise CaptchalabError(f"{folder}: no {split} split ({split}_imgs.tsv or lmdb/{split}/)")
    if not cells and not allow_empty:
        raise CaptchalabError(f"{folder}: the {split} split has no image-text pairs")
    return cells


def split_texts(dataset: str | Path, split: str, allow_empty: bool = False) -> list[str]:
    """The text of every pair of a split, images not decoded."""
    return [cell.text for cell in _raw_cells(dataset, split, allow_empty)]


def read_cells(dataset: str | Path, split: str, preprocess: ClipPreprocess) -> CellSet:
    """One split of a Chinese-CLIP dataset folder (TSV + JSONL, or only ``lmdb/{split}``), decoded and resized.

    Unreadable images are skipped with one warning that lists them.
    """
    return _decode(Path(dataset), split, _raw_cells(dataset, split), preprocess)


def optional_cells(dataset: str | Path, split: str, preprocess: ClipPreprocess) -> CellSet | None:
    """A split that may be missing, or empty as ``grid dataset build`` writes a split of ratio 0: None then."""
    folder = Path(dataset)
    if not split_exists(folder, split):
        return None
    cells = _raw_cells(folder, split, allow_empty=True)
    if not cells:
        log.info("%s: the %s split is empty, used as if absent", folder, split)
        return None
    return _decode(folder, split, cells, preprocess)


def _decode(folder: Path, split: str, cells: list, preprocess: ClipPreprocess) -> CellSet:
    pixels, texts, bad = [], [], []
    for cell in track(cells, len(cells), f"decoding {split}"):
        try:
            image = load_image(cell.image_bytes, name=f"{split} image {cell.image_id}")
        except CaptchalabError as exc:
            bad.append(str(exc))
            continue
        pixels.append(preprocess.to_uint8(image))
        texts.append(cell.text)
    if bad:
        log.warning("skipped %d unreadable image(s) in %s/%s: %s", len(bad), folder, split, "; ".join(bad[:10]))
    if not pixels:
        raise CaptchalabError(f"{folder}: no readable image in the {split} split")
    return CellSet(np.stack(pixels), texts)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) float in [0, 1] -> same, randomly zoomed, shifted, rotated, flipped, light- and
    saturation-jittered (emoji sets differ in palette more than in shape)."""
    b = batch.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    scale = uniform(0.8, 1.15)
    angle = uniform(-15, 15) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, uniform(-0.12, 0.12)], 1),
            torch.stack([sin * flip, cos, uniform(-0.12, 0.12)], 1),
        ],
        1,
    ).to(batch)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = uniform(-0.12, 0.12).to(batch)[:, None, None, None]
    contrast = uniform(0.75, 1.25).to(batch)[:, None, None, None]
    saturation = uniform(0.6, 1.3).to(batch)[:, None, None, None]
    grey = (out * torch.tensor([0.299, 0.587, 0.114]).to(batch)[None, :, None, None]).sum(1, keepdim=True)
    out = grey + (out - grey) * saturation
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)


def to_model_input(
    pixels: np.ndarray, preprocess: ClipPreprocess, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) normalised float on ``device``; augmented when a generator is given.

    Without augmentation this is exactly ``ClipPreprocess.normalize`` (the runtime's), so train and serve agree.
    """
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if generator is not None:
        x = augment(x.cpu(), generator).to(device)
    mean = torch.tensor(preprocess.mean, device=device)[None, :, None, None]
    std = torch.tensor(preprocess.std, device=device)[None, :, None, None]
    return (x - mean) / std
