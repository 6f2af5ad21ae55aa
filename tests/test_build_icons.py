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
