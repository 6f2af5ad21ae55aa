"""Find TrueType fonts on this machine for the built-in captcha renderer (no downloads)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

# Searched in order; whatever exists is used. The captcha package's own font is the last resort.
_FONT_DIRS = (
    "/usr/share/fonts/truetype",
    "/usr/share/fonts/opentype",
    "/usr/local/share/fonts",
    "/Library/Fonts",
    "C:/Windows/Fonts",
)
_LATIN_HINTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed-Oblique.ttf",
    "DejaVuSerif-Italic.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSerif-Bold.ttf",
    "FreeSans.ttf",
    "arial.ttf",
    "times.ttf",
)
_CJK_HINTS = ("wqy-microhei.ttc", "NotoSansCJK-Regular.ttc", "NotoSerifCJK-Regular.ttc", "msyh.ttc", "simhei.ttf")


def _find(names: tuple[str, ...]) -> list[str]:
    wanted = set(names)
    found: dict[str, str] = {}
    for root in _FONT_DIRS:
        if not os.path.isdir(root):
            continue
        for path in sorted(Path(root).rglob("*")):
            if path.name in wanted and path.name not in found:
                found[path.name] = str(path)
    return [found[n] for n in names if n in found]


@functools.lru_cache(maxsize=1)
def latin_fonts() -> tuple[str, ...]:
    """Latin fonts for the built-in style, with the captcha package's DroidSansMono appended when installed."""
    fonts = _find(_LATIN_HINTS)
    try:
        from captcha.image import DEFAULT_FONTS

        fonts += [f for f in DEFAULT_FONTS if os.path.exists(f)]
    except ImportError:
        pass
    return tuple(fonts)


@functools.lru_cache(maxsize=1)
def cjk_fonts() -> tuple[str, ...]:
    """CJK-capable fonts (e.g. Debian's fonts-wqy-microhei), empty when none is installed."""
    return tuple(_find(_CJK_HINTS))
