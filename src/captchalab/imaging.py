"""Image loading with clear errors and a decompression-bomb guard, and the model preprocessing shared by
training (cache) and runtime (onnxruntime). Never imports torch: one implementation, so train and serve agree.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from captchalab.errors import CaptchalabError

# Refused before decoding: a captcha never needs more pixels than this (about 5000 x 5000).
MAX_PIXELS = 25_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


def load_image(source: ImageInput, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array as an RGB image.

    Raises CaptchalabError naming the file for missing, empty, corrupt, truncated or oversized images.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise CaptchalabError(f"{name or 'array'}: expected a uint8 (H, W) or (H, W, C) array")
        return Image.fromarray(source).convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        label, stream = name or "<bytes>", io.BytesIO(source)
        if not source:
            raise CaptchalabError(f"{label}: empty input, not an image")
    else:
        label, path = name or str(source), Path(source)
        if not path.is_file():
            raise CaptchalabError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise CaptchalabError(f"{label}: file is empty (0 bytes), not an image")
        stream = path.open("rb")
    try:
        with Image.open(stream) as image:
            width, height = image.size
            if width * height > max_pixels:  # header only so far: nothing big has been decoded
                raise CaptchalabError(f"{label}: image is {width}x{height}, over the {max_pixels:,}-pixel limit")
            image.load()
            return image.convert("RGB")
    except CaptchalabError:
        raise
    except Image.DecompressionBombError as exc:
        raise CaptchalabError(f"{label}: refused, image is too large to decode safely ({exc})") from None
    except UnidentifiedImageError as exc:
        raise CaptchalabError(f"{label}: not a readable image ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CaptchalabError(f"{label}: corrupt or truncated image ({exc})") from None
    finally:
        stream.close()


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input; saved in checkpoints and bundle manifests."""

    height: int
    width: int
    channels: int = 1  # 1 = grayscale, 3 = RGB
    mean: float = 0.5
    std: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(**{k: data[k] for k in ("height", "width", "channels", "mean", "std") if k in data})

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> resized (H, W, C) uint8, the form kept in the training cache."""
        mode = "L" if self.channels == 1 else "RGB"
        resized = image.convert(mode).resize((self.width, self.height), Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.uint8)
        return array.reshape(self.height, self.width, self.channels)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """(B, H, W, C) uint8 -> (B, C, H, W) float32 model input."""
        x = batch.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        return (x - np.float32(self.mean)) / np.float32(self.std)


@dataclass(frozen=True)
class ClipPreprocess:
    """Image-text models: squash-resize the whole image to (size, size) RGB, scale to [0, 1], per-channel mean/std.

    This is Chinese-CLIP's transform (no crop, aspect ratio not kept); saved in checkpoints and bundle manifests.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict) -> ClipPreprocess:
        return cls(int(data["size"]), tuple(data["mean"]), tuple(data["std"]), data.get("interpolation", "bicubic"))

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (size, size, 3) uint8, the form kept in training caches."""
        resample = Image.Resampling[self.interpolation.upper()]
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.asarray(rgb.resize((self.size, self.size), resample), dtype=np.uint8)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 model input."""
        x = batch.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (x - mean) / std
