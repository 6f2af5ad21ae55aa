"""Name matching of the icon-library build script (scripts/build_grid_icons.py), on hand-made Iconify sets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_grid_icons.py"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_grid_icons", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def icon_set(build, names: list[str]):
    return build.IconSet("test", {"icons": {n: {"body": ""} for n in names}}, {}, {})


def emoji(label: str, hexcode: str = "1F600") -> dict:
    return {"label": label, "hexcode": hexcode}


def test_plain_slug_then_suffixes(build) -> None:
    icons = icon_set(build, ["cloud-1", "cloud-2", "wolf-face", "dog", "dog-1"])
    source = build.StyleSource("x", "1", slug_suffixes=("-1", "-face"))
    assert build.match_name(emoji("cloud"), icons, source, {}) == ("cloud-1", "slug-1")
    assert build.match_name(emoji("wolf"), icons, source, {}) == ("wolf-face", "slug-face")
    assert build.match_name(emoji("dog"), icons, source, {}) == ("dog", "slug")  # the plain name wins
    assert build.match_name(emoji("cat"), icons, source, {}) == (None, "")


def test_suffix_never_takes_another_emojis_name(build) -> None:
    # "tiger-face" is the icon of the emoji "tiger face"; the whole tiger must not borrow it
    icons = icon_set(build, ["tiger-face"])
    source = build.StyleSource("x", "1", slug_suffixes=("-face",))
    slugs = frozenset({"tiger", "tiger-face"})
    assert build.match_name(emoji("tiger"), icons, source, {}, slugs) == (None, "")
    assert build.match_name(emoji("tiger face"), icons, source, {}, slugs) == ("tiger-face", "slug")


def test_sets_without_suffixes_match_as_before(build) -> None:
    icons = icon_set(build, ["cloud-1", "rose"])
    source = build.StyleSource("x", "1")
    assert build.match_name(emoji("cloud"), icons, source, {}) == (None, "")
    assert build.match_name(emoji("rose", "1F339"), icons, source, {"1f339": "rose"}) == ("rose", "chars")


def test_every_training_only_style_has_a_family_rule(build) -> None:
    extras = [s for s in build.STYLES if s not in build.DEFAULT_STYLES and s != build.HOLDOUT_STYLE]
    assert set(extras) == set(build.EXTRA_STYLES)


def tiny_font(codepoints: list[int]) -> bytes:
    """A TrueType font whose every listed code point draws a filled square (fontTools' FontBuilder)."""
    import io

    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    pen = TTGlyphPen(None)
    pen.moveTo((100, 100))
    pen.lineTo((100, 700))
    pen.lineTo((700, 700))
    pen.lineTo((700, 100))
    pen.closePath()
    square = pen.glyph()
    names = [".notdef"] + [f"u{c:X}" for c in codepoints]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({c: f"u{c:X}" for c in codepoints})
    builder.setupGlyf({name: square for name in names})
    builder.setupHorizontalMetrics({name: (800, 100) for name in names})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Tiny", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()


def test_font_set_matches_by_code_point_and_draws_each_glyph_from_its_subset(build) -> None:
    pytest.importorskip("fontTools")
    fonts = build.FontSet("mono", [tiny_font([0x1F408]), tiny_font([0x2600, 0x1F408])])
    source = build.StyleSource("x", "1", font_files="*.woff")
    assert fonts.where == {"1f408": 0, "2600": 1}  # the first subset that maps a code point draws it
    assert build.match_name(emoji("cat", "1F408"), fonts, source, fonts.chars) == ("1f408", "chars")
    assert build.match_name(emoji("sun", "2600-FE0F"), fonts, source, fonts.chars) == ("2600", "chars")
    assert build.match_name(emoji("dog", "1F415"), fonts, source, fonts.chars) == (None, "")
    image = fonts.draw("2600")
    assert image.size == (build.ICON_SIZE, build.ICON_SIZE) and image.mode == "RGBA"
    left, top, right, bottom = image.getchannel("A").getbbox()
    assert max(right - left, bottom - top) == round(0.9 * build.ICON_SIZE)  # scaled to fit, centred
    assert abs((left + right) / 2 - build.ICON_SIZE / 2) <= 1 and abs((top + bottom) / 2 - build.ICON_SIZE / 2) <= 1
