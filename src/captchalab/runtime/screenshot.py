"""Read a whole screenshot of a picture-grid captcha: the prompt's target word (OCR by rapidocr) and the grid image.

rapidocr (the ``[screenshot]`` extra) runs its bundled PP-OCR det + rec ONNX models on onnxruntime; it is imported
lazily and told the model files explicitly, so nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.imaging import ImageInput, load_image
from captchalab.runtime.grid_layout import Box, locate_grid

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'captchalab[screenshot]'"


@dataclass(frozen=True)
class ScreenshotParse:
    """What a screenshot says: the target word, the OCR'd line it came from, where the grid is and the grid."""

    prompt: str
    prompt_line: str
    grid_box: Box
    grid: Image.Image


@dataclass(frozen=True)
class TextLine:
    """One OCR'd line of text; ``top``/``bottom`` in the coordinates of the image that was read."""

    text: str
    top: float
    bottom: float
    score: float


# --- the OCR engine --------------------------------------------------------------------------------------------------

_engine: Any = None
_engine_lock = threading.Lock()  # creation
_call_lock = threading.Lock()  # calls: rapidocr's __call__ updates settings on the shared instance


def _bundled_models(package_dir: Path) -> dict[str, str]:
    """The detection and recognition ONNX files shipped in the rapidocr wheel (the default version first)."""
    models = package_dir / "models"
    found = {}
    for task in ("det", "rec"):
        files = sorted(models.glob(f"*_{task}_*.onnx"), key=lambda p: ("PP-OCRv6" not in p.name, p.name))
        if not files:
            raise CaptchalabError(
                f"rapidocr's bundled {task} model is missing from {models}; reinstall it ({INSTALL_HINT}): "
                "captchalab never downloads models"
            )
        found[task] = str(files[0])
    return found


def ocr_engine() -> Any:
    """The process-wide rapidocr engine, created once (thread-safe) on first use."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                try:
                    import rapidocr
                except ImportError:
                    raise CaptchalabError(f"reading screenshots needs rapidocr: {INSTALL_HINT}") from None
                models = _bundled_models(Path(rapidocr.__file__).parent)
                params = {
                    "Global.log_level": "error",  # its "detection result is empty" warnings would add to our own error
                    "Global.use_cls": False,  # prompts are never upside down; saves a model run
                    # Scale down only: rapidocr's default scales the short side *up* to 736 px, which turns a
                    # 60-px prompt strip into a 5000-px image (seconds instead of a tenth of one).
                    "Det.limit_type": "max",
                    "Det.limit_side_len": 960,
                    "Det.model_path": models["det"],
                    "Rec.model_path": models["rec"],
                }
                _engine = rapidocr.RapidOCR(params=params)
                log.debug("rapidocr engine with %s", models)
    return _engine


def ocr_lines(image: Image.Image) -> list[TextLine]:
    """OCR an image into lines, top to bottom; text boxes on one line are joined left to right."""
    engine = ocr_engine()
    with _call_lock:
        result = engine(np.asarray(image.convert("RGB")))
    if result.boxes is None or not result.txts:
        return []
    pieces = []
    for box, text, score in zip(result.boxes, result.txts, result.scores):
        ys, xs = np.asarray(box)[:, 1], np.asarray(box)[:, 0]
        pieces.append((float(ys.min()), float(ys.max()), float(xs.min()), text, float(score)))
    pieces.sort(key=lambda p: (p[0] + p[1]) / 2)
    groups: list[list[tuple]] = []
    for piece in pieces:
        centre = (piece[0] + piece[1]) / 2
        if groups:
            top, bottom = min(p[0] for p in groups[-1]), max(p[1] for p in groups[-1])
            if top <= centre <= bottom:
                groups[-1].append(piece)
                continue
        groups.append([piece])
    lines = []
    for group in groups:
        group.sort(key=lambda p: p[2])
        text = ""
        for piece in group:
            word = piece[3].strip()
            if text and word and text[-1].isascii() and text[-1].isalnum() and word[0].isascii() and word[0].isalnum():
                text += " "
            text += word
        score = min(p[4] for p in group)
        lines.append(TextLine(text, min(p[0] for p in group), max(p[1] for p in group), score))
    return lines


# --- the target word in a prompt line --------------------------------------------------------------------------------

_QUOTES = [
    re.compile(re.escape(a) + "([^" + re.escape(b) + "]{1,20})" + re.escape(b))
    for a, b in [("「", "」"), ("『", "』"), ("“", "”"), ('"', '"'), ("【", "】"), ("‘", "’"), ("'", "'"), ("《", "》")]
]
_END = r"(?:的(?:所有)?(?:图片|图像|照片|图|格子|方格|方块|区域|选项)|图片|图像|照片|[。，,.!！?？;；]|$)"
_CHINESE = [
    re.compile(r"(?:包含|含有|带有|包括)(?:了|有)?(?P<t>.+?)" + _END),
    re.compile(r"(?:所有|全部)(?:的)?(?P<t>.+?)" + _END),
    re.compile(r"(?:选择|点击|选出|找出|勾选|选中|挑出)(?:出)?(?P<t>.+?)" + _END),
]
_ENGLISH = [
    re.compile(
        r"\b(?:images?|pictures?|photos?|squares?|tiles?|boxes|cells)\s+(?:with|containing|that\s+contains?|showing|of)"
        r"\s+(?:(?:an?|the)\s+)?(?P<t>[a-z][a-z \-']*?)\s*(?:[.!?,;:]|\bin\b|\bthen\b|\bif\b|$)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:select|click|choose|pick|tap|find)\s+(?:on\s+)?(?:all\s+|each\s+|every\s+)?(?:of\s+)?(?:the\s+)?"
        r"(?:(?:an?)\s+)?(?P<t>[a-z][a-z \-']*?)\s*(?:[.!?,;:]|$)",
        re.IGNORECASE,
    ),
]
# Words of the frame around a target, never a target themselves.
_PREFIXES = tuple("下图中 下图 图中 下面 以下 下列 图片中 所有的 所有 全部的 全部 包含 含有 的".split())
_BOILERPLATE = re.compile(
    r"请您?|选择|点击|选出|找出|勾选|选中|挑出|下图中|下图|图中|所有|全部|包含|含有|图片|图像|照片|安全验证|验证码?|"
    r"确认|确定|提交|刷新|换一张|看不清|重试|跳过|完成|关闭|按顺序|依次"
)
_ENGLISH_BOILERPLATE = {"images", "image", "verify", "skip", "submit", "next", "refresh", "all", "none"}
_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")
# "in the pictures below" and the like, dropped before matching: 请选择下列图片中的狗 -> 请选择的狗
_WHERE = re.compile(r"在?(?:下列|下面的?|以下|下方)?(?:图片|图像|图)(?:中|里)的?")


def _clean(target: str) -> str:
    target = target.strip(" \t:：,，.。!！?？;；、-—~()（）[]<>\"'「」『』“”‘’【】《》")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if target.startswith(prefix) and len(target) > len(prefix):
                target, changed = target[len(prefix) :].strip(" :："), True
    return target.removesuffix("的").strip()


def _is_boilerplate(text: str) -> bool:
    return not _BOILERPLATE.sub("", text).strip(" 的中在") or text.lower() in _ENGLISH_BOILERPLATE


def _normalise(line: str) -> str:
    line = unicodedata.normalize("NFKC", line)  # full-width letters, digits and colons -> ASCII
    line = re.sub(r"\s+", " ", line).strip()
    return re.sub(r"(?<=[\u3400-\u9fff]) (?=[\u3400-\u9fff])", "", line)  # OCR drops these anyway


def _extract(line: str) -> tuple[str, int] | None:
    """(target, strength): 2 for a quoted word or a known prompt pattern, 1 for the fallback guess."""
    line = _normalise(line)
    if not line:
        return None
    for quoted in _QUOTES:
        for match in quoted.finditer(line):
            word = _clean(match.group(1))
            if word and not _is_boilerplate(word):
                return word, 2
    compact = _WHERE.sub("", line.replace(" ", "")) if _CJK_RUN.search(line) else line
    for pattern in _CHINESE:
        for match in pattern.finditer(compact):
            word = _clean(match.group("t"))
            if word and len(word) <= 12 and not _is_boilerplate(word) and (_CJK_RUN.search(word) or word.isalpha()):
                return word, 2
    for pattern in _ENGLISH:
        match = pattern.search(line)
        if match:
            word = _clean(match.group("t"))
            if word and word.lower() not in _ENGLISH_BOILERPLATE:
                return word, 2
    # Fallback: the longest run of Chinese characters left once the boilerplate words are cut out.
    pieces = [_clean(piece.strip("的中在和与")) for piece in _CJK_RUN.findall(_BOILERPLATE.sub(" ", compact))]
    pieces = [piece for piece in pieces if piece and not _is_boilerplate(piece)]
    if pieces:
        return max(pieces, key=len), 1
    return None


def extract_target(line: str) -> str | None:
    """The word a prompt line asks for, or None.

    Quoted words first (「」 『』 “” "" 【】 ‘’ ''), then the words between 包含/所有的/选择… and 的图片/的图像/the end,
    then English ("Select all images with a cat" -> "cat"), then the longest Chinese run that is not boilerplate.
    """
    found = _extract(line)
    return found[0] if found else None


# --- the whole screenshot ----------------------------------------------------------------------------------------


def _prompt_from(lines: list[TextLine], order_key) -> tuple[int, str, str] | None:
    """The best (strength, target, line) among OCR'd lines: a pattern match (2) beats a fallback guess (1); ties go
    by ``order_key``."""
    best = None
    for line in sorted(lines, key=order_key):
        found = _extract(line.text)
        if found and (best is None or found[1] > best[0]):
            best = (found[1], found[0], line.text)
    return best


def _pad(image: Image.Image, colour: tuple[int, ...], margin: int = 12) -> Image.Image:
    """Text that touches the image edge is often missed by the detector: give it a margin."""
    padded = Image.new("RGB", (image.width + 2 * margin, image.height + 2 * margin), colour)
    padded.paste(image, (margin, margin))
    return padded


def read_screenshot(image: ImageInput, name: str | None = None, read_prompt: bool = True) -> ScreenshotParse:
    """A screenshot of a grid captcha -> ScreenshotParse(prompt, prompt_line, grid_box, grid).

    The grid is found by ``locate_grid``; the prompt is read from the region above it, or, when that holds no
    prompt, from the whole screenshot with the grid blanked out. Raises CaptchalabError naming the file when no grid
    or no prompt is found, or when the ``[screenshot]`` extra is not installed. ``read_prompt=False`` (the caller
    knows the word) only locates the grid: no OCR, and the prompt is returned empty.
    """
    label = name or (os.fspath(image) if isinstance(image, (str, os.PathLike)) else "screenshot")
    shot = load_image(image, name=label)
    if read_prompt:
        ocr_engine()  # a missing extra is reported before any work
    try:
        box = locate_grid(shot)
    except CaptchalabError as exc:
        raise CaptchalabError(f"{label}: {exc}") from None
    if not read_prompt:
        return ScreenshotParse("", "", box, shot.crop(box))
    _, top, _, bottom = box
    pixels = np.asarray(shot)
    colour = tuple(int(v) for v in np.median(np.concatenate([pixels[0], pixels[-1]]), axis=0))
    found = None
    if top >= 10:
        above = ocr_lines(_pad(shot.crop((0, 0, shot.width, top)), colour))
        found = _prompt_from(above, lambda line: -line.bottom)  # nearest the grid first
    if found is None or found[0] < 2:  # nothing, or only a guess: look around the grid too
        rest = shot.copy()
        rest.paste(colour, box)
        centre = 12 + (top + bottom) / 2
        around = _prompt_from(ocr_lines(_pad(rest, colour)), lambda line: abs((line.top + line.bottom) / 2 - centre))
        if around and (found is None or around[0] > found[0]):
            found = around
    if found is None:
        raise CaptchalabError(f"{label}: no prompt text found in the screenshot")
    _, target, line = found
    log.debug("%s: prompt %r from %r, grid at %s", label, target, line, box)
    return ScreenshotParse(target, line, box, shot.crop(box))
