"""Synthetic text captchas with the label in the file name (``00042-R865.png``).

Two styles: ``captcha`` (the PyPI ``captcha`` library's ImageCaptcha) and ``builtin`` (our own renderer: several
fonts, colours, rotation, overlap, noise lines and dots, sine warp); ``mixed`` alternates at random.
Image ``i`` depends only on ``(seed, i)``, so a set is reproducible whatever the number of workers.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from captchalab.data.charset import parse_charset_spec
from captchalab.data.fonts import cjk_fonts, latin_fonts
from captchalab.errors import CaptchalabError
from captchalab.folders import make_folder
from captchalab.parallel import pool_map
from captchalab.progress import track

log = logging.getLogger(__name__)

STYLES = ("captcha", "builtin", "mixed")
MAX_LABEL_BYTES = 200  # a file name holds 255 bytes: room for the index, '-' and '.png'
# a path separator, or '-' (the label is what follows the last '-' of the name), or a control character
_NOT_IN_FILE_NAMES = "/\\-" + "".join(map(chr, range(32))) + "\x7f"


@dataclass(frozen=True)
class GenerateConfig:
    charset: str = parse_charset_spec("alnum")
    min_length: int = 4
    max_length: int = 4
    width: int = 160
    height: int = 60
    style: str = "captcha"
    seed: int = 0
    favour: str = ""  # characters drawn more often: each position is one of them with probability favour_rate
    favour_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise CaptchalabError(f"unknown style {self.style!r}; choose one of {', '.join(STYLES)}")
        if not 1 <= self.min_length <= self.max_length:
            raise CaptchalabError(f"bad length range {self.min_length}-{self.max_length}")
        if self.width < 16 or self.height < 16:
            raise CaptchalabError(f"image size {self.width}x{self.height} is too small (16x16 at least)")
        if not 0.0 <= self.favour_rate <= 1.0:
            raise CaptchalabError(f"--favour rate must be between 0 and 1, got {self.favour_rate}")
        if not self.charset:
            raise CaptchalabError("--charset is empty: give the characters to draw labels from")
        unsafe = sorted(c for c in set(self.charset) if c in _NOT_IN_FILE_NAMES or c.isspace())
        if unsafe:
            raise CaptchalabError(
                f"--charset holds {''.join(unsafe)!r}: labels go in file names NNNNN-<label>.png, which cannot "
                "hold '/', '\\', '-', spaces or control characters"
            )
        longest = self.max_length * max(len(c.encode("utf-8")) for c in self.charset)
        if longest > MAX_LABEL_BYTES:
            raise CaptchalabError(
                f"--length {self.max_length}: labels go in file names, which hold at most 255 bytes; "
                f"use at most {MAX_LABEL_BYTES // (longest // self.max_length)} characters with this charset"
            )
        if self.favour_rate and not set(self.favour) & set(self.charset):
            raise CaptchalabError(f"--favour {self.favour!r}: none of these characters is in the charset")


def parse_length(text: str) -> tuple[int, int]:
    """``'4'`` -> (4, 4); ``'4-6'`` -> (4, 6)."""
    try:
        low, dash, high = text.partition("-")
        return int(low), int(high if dash else low)
    except ValueError:
        raise CaptchalabError(f"bad --length {text!r}: use a number such as 4 or a range such as 4-6") from None


def parse_favour(text: str) -> tuple[str, float]:
    """``'0Oo:0.3'`` -> ('0Oo', 0.3)."""
    chars, sep, rate = text.rpartition(":")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if not sep or not chars or not 0.0 < value <= 1.0:
        raise CaptchalabError(f"--favour {text!r}: expected CHARS:RATE with 0 < RATE <= 1, e.g. 0Oo:0.3")
    return chars, value


MAX_SIDE = 4096  # pixels; a larger captcha or model input is a typo, and would exhaust memory


def parse_size(text: str) -> tuple[int, int]:
    """``'160x60'`` -> (160, 60); each side 1 to ``MAX_SIDE`` pixels."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CaptchalabError(f"bad --size {text!r}: use WIDTHxHEIGHT such as 160x60") from None
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise CaptchalabError(f"bad --size {text}: each side must be 1 to {MAX_SIDE} pixels")
    return width, height


def sample_rng(seed: int, index: int) -> random.Random:
    """The random stream of sample ``index``: independent of worker count and order."""
    return random.Random(seed * 0x9E3779B1 + index)


def _draw_label(cfg: GenerateConfig, rng: random.Random) -> str:
    """The label of a sample: the first draws of its random stream (the picture is drawn from the rest)."""
    length = rng.randint(cfg.min_length, cfg.max_length)
    if cfg.favour_rate:  # (sets without favoured characters draw exactly as before: same seed, same images)
        favoured = "".join(c for c in cfg.charset if c in set(cfg.favour))
        return "".join(
            rng.choice(favoured) if rng.random() < cfg.favour_rate else rng.choice(cfg.charset) for _ in range(length)
        )
    return "".join(rng.choice(cfg.charset) for _ in range(length))


def label_of(config: GenerateConfig, index: int) -> str:
    """The label sample ``index`` will have, without drawing its picture."""
    return _draw_label(config, sample_rng(config.seed, index))


class _SeededSecrets:
    """Stands in for the ``secrets`` module inside ``captcha.image``, which otherwise cannot be seeded."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):  # noqa: ANN001, ANN201 - mirrors secrets.choice
        return self._rng.choice(seq)


class CaptchaLibRenderer:
    """The ``captcha`` library's ImageCaptcha, made deterministic per sample."""

    def __init__(self, width: int, height: int):
        try:
            import captcha.image as captcha_image
        except ImportError:  # pragma: no cover - the base install has it
            raise CaptchalabError("style 'captcha' needs the 'captcha' package: pip install captcha") from None
        self._module = captcha_image
        self._generator = captcha_image.ImageCaptcha(width=width, height=height)

    def render(self, text: str, rng: random.Random) -> Image.Image:
        original = self._module.secrets
        self._module.secrets = _SeededSecrets(rng)  # single-threaded per process: safe to swap
        try:
            return self._generator.generate_image(text).convert("RGB")
        finally:
            self._module.secrets = original


class BuiltinRenderer:
    """Our own style: per-character font/colour/size/rotation, overlap, noise, optional sine warp and blur."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        paths = list(latin_fonts()) + list(cjk_fonts())
        if not paths:
            raise CaptchalabError("no TrueType font found for the builtin style (install fonts-dejavu or captcha)")
        sizes = [int(height * f) for f in (0.55, 0.65, 0.75, 0.85)]
        self._fonts = [ImageFont.truetype(p, s) for p in paths for s in sizes]

    def render(self, text: str, rng: random.Random) -> Image.Image:
        w, h = self.width, self.height
        dark_bg = rng.random() < 0.15
        bg = tuple(rng.randint(0, 70) if dark_bg else rng.randint(180, 255) for _ in range(3))
        image = Image.new("RGB", (w, h), bg)
        if rng.random() < 0.5:  # background gradient / blotches
            arr = np.asarray(image, dtype=np.float32)
            ramp = np.linspace(rng.uniform(-40, 0), rng.uniform(0, 40), w, dtype=np.float32)
            arr = np.clip(arr + ramp[None, :, None] * np.array([rng.uniform(0, 1) for _ in range(3)]), 0, 255)
            image = Image.fromarray(arr.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        self._noise_dots(draw, rng, bg, dark_bg, count=rng.randint(0, 150))
        glyphs = [self._glyph(c, rng, dark_bg) for c in text]
        total = sum(g.width for g in glyphs)
        squeeze = min(1.0, (w * 0.92) / max(total, 1))
        overlap = rng.uniform(0.0, 0.25)
        step_sum = sum(int(g.width * squeeze * (1 - overlap)) for g in glyphs)
        x = max(0, int((w - step_sum) / 2 + rng.uniform(-0.05, 0.05) * w))
        for glyph in glyphs:
            if squeeze < 1.0:
                glyph = glyph.resize((max(1, int(glyph.width * squeeze)), glyph.height))
            y = int((h - glyph.height) / 2 + rng.uniform(-0.12, 0.12) * h)
            image.paste(glyph, (min(x, w - 1), y), glyph)
            x += int(glyph.width * (1 - overlap))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(0, 4)):
            self._noise_line(draw, rng, dark_bg)
        if rng.random() < 0.5:
            image = self._warp(image, rng)
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        return image

    def _ink(self, rng: random.Random, dark_bg: bool) -> tuple[int, int, int]:
        return tuple(rng.randint(150, 255) if dark_bg else rng.randint(0, 150) for _ in range(3))

    def _glyph(self, char: str, rng: random.Random, dark_bg: bool) -> Image.Image:
        font = rng.choice(self._fonts)
        left, top, right, bottom = font.getbbox(char)
        pad = 4
        glyph = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((pad - left, pad - top), char, font=font, fill=self._ink(rng, dark_bg) + (255,))
        return glyph.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BICUBIC, expand=True)

    def _noise_dots(self, draw: ImageDraw.ImageDraw, rng: random.Random, bg, dark_bg: bool, count: int) -> None:
        for _ in range(count):
            x, y = rng.randrange(self.width), rng.randrange(self.height)
            r = rng.choice((0, 0, 1))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=self._ink(rng, dark_bg))

    def _noise_line(self, draw: ImageDraw.ImageDraw, rng: random.Random, dark_bg: bool) -> None:
        w, h = self.width, self.height
        if rng.random() < 0.5:
            points = [(rng.uniform(0, w * 0.3), rng.uniform(0, h)), (rng.uniform(w * 0.7, w), rng.uniform(0, h))]
        else:  # sine curve across the image
            amp, phase, period = rng.uniform(2, h / 4), rng.uniform(0, 6.3), rng.uniform(w / 3, w * 1.5)
            y0 = rng.uniform(h * 0.25, h * 0.75)
            points = [(x, y0 + amp * math.sin(phase + 2 * math.pi * x / period)) for x in range(0, w + 1, 4)]
        draw.line(points, fill=self._ink(rng, dark_bg), width=rng.randint(1, 3))

    def _warp(self, image: Image.Image, rng: random.Random) -> Image.Image:
        arr = np.asarray(image)
        h, w = arr.shape[:2]
        amp, period, phase = rng.uniform(1, h * 0.08), rng.uniform(w * 0.4, w * 1.2), rng.uniform(0, 6.3)
        shift = (amp * np.sin(phase + 2 * np.pi * np.arange(w) / period)).astype(np.int64)
        rows = (np.arange(h)[:, None] + shift[None, :]) % h
        return Image.fromarray(arr[rows, np.arange(w)[None, :]])


class CaptchaGenerator:
    """Renders sample ``i`` of a seeded set; picklable configuration, renderers built lazily per process."""

    def __init__(self, config: GenerateConfig):
        self.config = config
        self._renderers: dict[str, CaptchaLibRenderer | BuiltinRenderer] = {}

    def _renderer(self, style: str) -> CaptchaLibRenderer | BuiltinRenderer:
        if style not in self._renderers:
            cls = CaptchaLibRenderer if style == "captcha" else BuiltinRenderer
            self._renderers[style] = cls(self.config.width, self.config.height)
        return self._renderers[style]

    def sample(self, index: int) -> tuple[str, Image.Image]:
        cfg = self.config
        rng = sample_rng(cfg.seed, index)
        text = _draw_label(cfg, rng)
        style = cfg.style if cfg.style != "mixed" else rng.choice(("captcha", "builtin"))
        return text, self._renderer(style).render(text, rng)


_worker_generator: CaptchaGenerator | None = None


def _init_worker(config: GenerateConfig) -> None:
    global _worker_generator
    _worker_generator = CaptchaGenerator(config)


def _write_one(job: tuple[int, str, int]) -> str:
    index, out_dir, digits = job
    assert _worker_generator is not None
    text, image = _worker_generator.sample(index)
    name = f"{index:0{digits}d}-{text}.png"
    target = Path(out_dir) / name
    partial = target.with_name(f".{name}.part")
    try:  # renamed when complete: Ctrl-C or a full disk never leaves a truncated captcha behind
        image.save(partial, format="PNG")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return name


def generate(out_dir: str | Path, count: int, config: GenerateConfig, workers: int = 1, start: int = 0) -> list[str]:
    """Write ``count`` captchas ``<index>-<label>.png`` into ``out_dir``; returns the file names in index order."""
    if count < 1:
        raise CaptchalabError(f"--count must be at least 1, got {count}")
    if start < 0 or workers < 1:
        raise CaptchalabError(f"--start must be >= 0 and --workers >= 1, got {start} and {workers}")
    out = make_folder(Path(out_dir))
    digits = max(5, len(str(start + count - 1)))
    _refuse_other_runs(out, config, range(start, start + count), digits)
    jobs = ((i, str(out), digits) for i in range(start, start + count))  # made as they are needed: --count may be huge
    try:
        if workers == 1:
            _init_worker(config)
            names = [_write_one(j) for j in track(jobs, count, "generating")]
        else:
            results = pool_map(_write_one, jobs, workers, initializer=_init_worker, initargs=(config,))
            names = list(track(results, count, "generating"))
    except OSError as exc:  # a read-only folder, a full disk
        raise CaptchalabError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    log.debug("wrote %d captchas to %s", len(names), out)
    return names


def _refuse_other_runs(folder: Path, config: GenerateConfig, indices: range, digits: int) -> None:
    """CaptchalabError when ``folder`` already holds ``<index>-<label>.png`` files at ``indices`` that this run
    would not write (another seed, charset or length, or the user's own images): two captchas at one index would
    mix two sets, and deleting them could lose the user's work. The same command run again is fine."""
    numbered = {}
    for path in folder.glob("*-*.png"):
        number = path.name.split("-", 1)[0]
        if number.isdigit():
            numbered[path.name] = int(number)
    others = sorted(
        name
        for name, index in numbered.items()
        if index in indices and name != f"{index:0{digits}d}-{label_of(config, index)}.png"
    )
    if others:
        raise CaptchalabError(
            f"{folder}: already holds {len(others)} captchas at the indices this run writes that it would not "
            f"write (e.g. {others[0]}): use another folder, --start {max(numbered.values()) + 1}, or remove them"
        )


def iter_samples(config: GenerateConfig, count: int, start: int = 0) -> Iterator[tuple[str, Image.Image]]:
    """In-memory samples ``start .. start+count-1`` (benchmarks and tests use this instead of files)."""
    generator = CaptchaGenerator(config)
    for i in range(start, start + count):
        yield generator.sample(i)
