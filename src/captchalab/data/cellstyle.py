"""Grid cells that look like the "AI-generated pictures" of picture-grid captchas rather than flat icons.

``render_cell`` puts a transparent icon on a random background (pastel, gradient, colour blobs, noise, blurred
photo-like texture) at a random scale, offset and rotation, jitters its colours a little (hue only slightly, so a
red apple stays red), and finishes with optional blur, noise and JPEG re-encoding. ``render_photo_cell`` lightly
jitters a picture that is already a cell (user-supplied cells). Pure numpy/Pillow; deterministic given the rng.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captchalab.errors import CaptchalabError

_WHITE = (255, 255, 255)
# YIQ: hue is the angle in the (I, Q) plane.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def render_cell(icon: Image.Image, size: int, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A ``size`` x ``size`` RGB cell showing ``icon`` (RGBA, transparent background), styled at random.

    ``strength`` scales every effect: 0 gives the icon centred at 80 % of the cell on white, 1 the full range
    (icon fills 45-95 % of the cell, rotation up to 25 degrees, hue shift up to 8 degrees, noise, blur, JPEG).
    """
    if size < 8:
        raise CaptchalabError(f"cell size {size} is too small (8 pixels at least)")
    if not 0.0 <= strength <= 1.0:
        raise CaptchalabError(f"style strength must be between 0 and 1, got {strength}")
    s = float(strength)
    background = _background(size, rng) if rng.random() < s else Image.new("RGB", (size, size), _WHITE)
    sprite = _crop_to_content(icon.convert("RGBA") if icon.mode != "RGBA" else icon)

    fill = rng.uniform(0.8 - 0.35 * s, 0.8 + 0.15 * s)
    partial = rng.random() < 0.08 * s  # a close-up: the icon runs over the cell's edge
    if partial:
        fill = rng.uniform(1.0, 1.35)
    scale = fill * size / max(sprite.size)
    width, height = max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale))
    sprite = sprite.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if rng.random() < 0.8 * s:
        sprite = _jitter_colours(sprite, rng, s)
    angle = rng.uniform(-25.0, 25.0) * s
    if abs(angle) > 0.5:
        sprite = sprite.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)

    slack_x, slack_y = max(0, size - sprite.width) / 2, max(0, size - sprite.height) / 2
    spread = s * (1.0 if not partial else 1.5)
    x = round(
        (size - sprite.width) / 2 + rng.uniform(-1, 1) * (slack_x * spread + (0.15 * sprite.width if partial else 0))
    )
    y = round(
        (size - sprite.height) / 2 + rng.uniform(-1, 1) * (slack_y * spread + (0.15 * sprite.height if partial else 0))
    )
    if rng.random() < 0.25 * s:
        _drop_shadow(background, sprite, (x, y), rng)
    background.paste(sprite, (x, y), sprite)
    return _finish(background, rng, s)


def render_photo_cell(image: Image.Image, size: int, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A picture that already is a cell, lightly jittered: small crop, brightness/contrast, sometimes JPEG."""
    s = float(strength)
    image = image.convert("RGB")
    keep = rng.uniform(1.0 - 0.12 * s, 1.0)
    width, height = image.size
    side = min(width, height) * keep  # square crop, as grid cells are square
    left = rng.uniform(0, width - side)
    top = rng.uniform(0, height - side)
    cell = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    if rng.random() < 0.7 * s:
        arr = np.asarray(cell, dtype=np.float32)
        mean = arr.mean()
        arr = (arr - mean) * rng.uniform(1 - 0.12 * s, 1 + 0.12 * s) + mean * rng.uniform(1 - 0.1 * s, 1 + 0.1 * s)
        cell = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3 * s:
        cell = _jpeg(cell, int(rng.integers(60, 96)))
    return cell


# ------------------------------------------------------------------------------------------------ backgrounds
def _colour(rng: np.random.Generator, pastel: bool = True) -> np.ndarray:
    hue = rng.random()
    if pastel:
        sat, val = rng.uniform(0.05, 0.45), rng.uniform(0.82, 1.0)
    else:
        sat, val = rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    kind = rng.choice(6, p=[0.18, 0.2, 0.14, 0.2, 0.1, 0.18])
    dark = rng.random() < 0.12
    first, second = _colour(rng, pastel=not dark), _colour(rng, pastel=not dark)
    if dark:
        first, second = first * 0.45, second * 0.45
    if kind == 0:  # solid
        return Image.new("RGB", (size, size), tuple(int(c) for c in first))
    if kind in (1, 2):  # linear or radial gradient
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        if kind == 1:
            theta = rng.uniform(0, 2 * np.pi)
            t = grid[None, :] * np.cos(theta) + grid[:, None] * np.sin(theta) + 0.5
        else:
            cx, cy = rng.uniform(-0.3, 0.3, size=2)
            t = np.sqrt((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / rng.uniform(0.5, 0.9)
        t = np.clip(t, 0, 1)[..., None]
        return Image.fromarray((first * (1 - t) + second * t).astype(np.uint8))
    if kind == 3:  # soft colour blobs
        return _blobs(size, rng, first, pastel=not dark)
    if kind == 4:  # noise texture on a pastel base
        cells = int(rng.integers(4, 17))
        noise = rng.standard_normal((cells, cells, 3), dtype=np.float32) * rng.uniform(8, 30)
        tex = Image.fromarray(np.clip(first + noise, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
        grain = rng.standard_normal((size, size, 1), dtype=np.float32) * rng.uniform(2, 8)
        return Image.fromarray(np.clip(np.asarray(tex, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    return _photo_texture(size, rng)


def _blobs(size: int, rng: np.random.Generator, base: np.ndarray, pastel: bool) -> Image.Image:
    small = 24
    canvas = Image.new("RGB", (small, small), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(-4, small + 4, size=2)
        rx, ry = rng.uniform(3, 10, size=2)
        colour = tuple(int(c) for c in _colour(rng, pastel=pastel))
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 4.0)))
    return canvas.resize((size, size), Image.Resampling.BICUBIC)


def _photo_texture(size: int, rng: np.random.Generator) -> Image.Image:
    """A blurred, photo-like backdrop: a few octaves of value noise mapped through a random palette."""
    field = np.zeros((size, size), dtype=np.float32)
    for cells, weight in ((3, 1.0), (6, 0.5), (12, 0.25)):
        octave = rng.random((cells, cells), dtype=np.float32)
        up = Image.fromarray(octave).resize((size, size), Image.Resampling.BICUBIC)
        field += weight * np.asarray(up, dtype=np.float32)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    stops = np.stack([_colour(rng, pastel=rng.random() < 0.5) for _ in range(3)])
    t = field[..., None] * 2
    low = stops[0] * (1 - np.clip(t, 0, 1)) + stops[1] * np.clip(t, 0, 1)
    arr = np.where(t < 1, low, stops[1] * (2 - t) + stops[2] * (t - 1))
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:  # out-of-focus highlights
        spots = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(spots)
        for _ in range(int(rng.integers(2, 7))):
            cx, cy = rng.uniform(0, size, size=2)
            r = rng.uniform(0.04, 0.12) * size
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(40, 110)))
        spots = spots.filter(ImageFilter.GaussianBlur(size / 40))
        image = Image.composite(Image.new("RGB", (size, size), _WHITE), image, spots)
    return image


# ------------------------------------------------------------------------------------------------ icon
def _crop_to_content(icon: Image.Image) -> Image.Image:
    box = icon.getchannel("A").getbbox()
    return icon.crop(box) if box else icon


def _jitter_colours(sprite: Image.Image, rng: np.random.Generator, s: float) -> Image.Image:
    arr = np.asarray(sprite, dtype=np.float32)
    rgb, alpha = arr[..., :3], arr[..., 3:]
    yiq = rgb @ _RGB2YIQ.T
    angle = np.deg2rad(rng.uniform(-8.0, 8.0) * s)
    saturation = rng.uniform(1 - 0.4 * s, 1 + 0.3 * s)
    cos, sin = np.cos(angle) * saturation, np.sin(angle) * saturation
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = i * cos - q * sin, i * sin + q * cos
    contrast, brightness = rng.uniform(1 - 0.3 * s, 1 + 0.3 * s), rng.uniform(1 - 0.2 * s, 1 + 0.2 * s)
    yiq[..., 0] = (yiq[..., 0] - 128.0) * contrast + 128.0 * brightness
    rgb = np.clip(yiq @ _YIQ2RGB.T, 0, 255)
    return Image.fromarray(np.concatenate([rgb, alpha], axis=-1).astype(np.uint8), "RGBA")


def _drop_shadow(background: Image.Image, sprite: Image.Image, at: tuple[int, int], rng: np.random.Generator) -> None:
    opacity = rng.uniform(0.2, 0.5)
    mask = sprite.getchannel("A").point(lambda a: int(a * opacity))
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 4.0)))
    dx, dy = (int(v) for v in rng.integers(1, 6, size=2))
    background.paste((0, 0, 0), (at[0] + dx, at[1] + dy), mask)


# ------------------------------------------------------------------------------------------------ finishing
def _finish(cell: Image.Image, rng: np.random.Generator, s: float) -> Image.Image:
    if rng.random() < 0.25 * s:
        cell = cell.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5 * s:
        arr = np.asarray(cell, dtype=np.float32)
        shape = arr.shape if rng.random() < 0.3 else (*arr.shape[:2], 1)  # colour or grey grain
        noise = rng.standard_normal(shape, dtype=np.float32) * rng.uniform(1.0, 8.0)
        cell = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.7 * s:
        cell = _jpeg(cell, int(rng.integers(35, 96)))
    return cell


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded if decoded.mode == "RGB" else decoded.convert("RGB")
