"""make_folder: creates what is missing, refuses files and impossible paths in one line naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from captchalab.errors import CaptchalabError
from captchalab.folders import make_folder


def test_creates_nested_and_accepts_existing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert make_folder(target) == target and target.is_dir()
    assert make_folder(target) == target  # already there: fine


def test_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(CaptchalabError, match=r"f: exists and is not a folder; pick another"):
        make_folder(tmp_path / "f", hint="; pick another")
    with pytest.raises(CaptchalabError, match=r"f/sub: cannot create the run folder"):
        make_folder(tmp_path / "f" / "sub", "run folder")
