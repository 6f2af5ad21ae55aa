"""Image loading with clear errors and a decompression-bomb guard, and the model preprocessing shared by
training (cache) and runtime (onnxruntime). Never imports torch: one implementation, so train and serve agree.
"""

from __future__ import annotations

import errno
import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from captchalab.errors import CaptchalabError

# Refused before decoding: a captcha never needs more pixels than this (about 5000 x 5000).
MAX_PIXELS = 25_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


def is_image_file(path: Path) -> bool:
    """Named like an image, and a file or a link. Broken links count, so that reading them reports the problem
    instead of the file silently going missing."""
    return path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink())


def image_paths(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursive, ``is_image_file``), sorted."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def _not_a_file(path: Path) -> str:
    """Why ``path`` is not a readable file, in a few words."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13
            return "symbolic link loop"
        except OSError as exc:
            return "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
    if path.is_dir():
        return "is a folder, not an image file"
    return "no such file" if not path.exists() else "not a regular file"


def load_image(source: ImageInput, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a path, encoded bytes (or a binary file object), a PIL image or an (H, W[, C]) uint8 array as RGB.

    Raises CaptchalabError naming the file for missing, unreadable, empty, corrupt, truncated or oversized images.
    """
    if isinstance(source, Image.Image):
        return _checked(source, name or "image", max_pixels)
    if isinstance(source, np.ndarray):
        return _checked(_from_array(source, name or "array"), name or "array", max_pixels)
    if isinstance(source, memoryview):
        source = source.tobytes()
    elif hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        source = source.read()  # an open binary file or BytesIO
    if isinstance(source, (bytes, bytearray)):
        label, stream = name or "<bytes>", io.BytesIO(source)
        if not source:
            raise CaptchalabError(f"{label}: empty input, not an image")
    elif isinstance(source, (str, os.PathLike)):
        label, path = name or str(source), Path(source)
        if not path.is_file():
            raise CaptchalabError(f"{label}: {_not_a_file(path)}")
        if path.stat().st_size == 0:
            raise CaptchalabError(f"{label}: file is empty (0 bytes), not an image")
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise CaptchalabError(f"{label}: cannot read ({exc.strerror or exc})") from None
    else:
        raise CaptchalabError(
            f"{name or type(source).__name__}: expected an image path, bytes, a PIL image or a uint8 array,"
            f" not {type(source).__name__}"
        )
    try:
        with _decoding(label), Image.open(stream) as image:
            return _checked(image, label, max_pixels)
    finally:
        stream.close()


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise CaptchalabError(f"{label}: expected a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _checked(image: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Size checks before decoding (for a file only the header has been read so far), then decode to RGB."""
    width, height = image.size
    if width * height > max_pixels:
        raise CaptchalabError(f"{label}: image is {width}x{height}, over the {max_pixels:,}-pixel limit")
    if width == 0 or height == 0:
        raise CaptchalabError(f"{label}: image is empty ({width}x{height} px)")
    with _decoding(label):
        image.load()
        return to_rgb(image)


@contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Pillow's errors for undecodable data -> one CaptchalabError naming the file."""
    try:
        yield
    except CaptchalabError:
        raise
    except Image.DecompressionBombError as exc:
        raise CaptchalabError(f"{label}: refused, image is too large to decode safely ({exc})") from None
    except UnidentifiedImageError as exc:
        raise CaptchalabError(f"{label}: not a readable image ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CaptchalabError(f"{label}: corrupt or truncated image ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Pillow's own conversion clips 16-bit and 32-bit grey (modes I;16, I, F) to 255,
    which turns a 16-bit PNG white; these are scaled down instead (16-bit range when the values fit it).
    Transparency is composited onto white. Always a new image, as ``convert`` gives: the caller may close the
    original."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if top > 255:
            values = values / (257.0 if top <= 65535 else top / 255.0)
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels are shown on white (as a web page shows them), not as the colour they happen to store:
        # black ink on a transparent canvas must not become black on black
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


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
        """Checked: ValueError naming the field when a size, the channel count, mean or std is unusable."""
        preprocess = cls(**{k: data[k] for k in ("height", "width", "channels", "mean", "std") if k in data})
        for name in ("height", "width"):
            value = getattr(preprocess, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                raise ValueError(f"preprocess {name} {value!r} is not a size in pixels")
        if preprocess.channels not in (1, 3) or isinstance(preprocess.channels, bool):
            raise ValueError(f"preprocess channels {preprocess.channels!r} is neither 1 nor 3")
        for name in ("mean", "std"):
            value = getattr(preprocess, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"preprocess {name} {value!r} is not a number")
        if preprocess.std == 0:
            raise ValueError("preprocess std is 0")
        return preprocess

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
