"""Creating the folders users name on the command line, with one clear error when that cannot be done."""

from __future__ import annotations

from pathlib import Path

from captchalab.errors import CaptchalabError


def make_folder(path: Path, what: str = "folder", hint: str = "") -> Path:
    """Create ``path`` (and its parents) unless it is a folder already; CaptchalabError naming it when it is a file
    or cannot be created. ``what`` names the folder in the message (e.g. "run folder"), ``hint`` is appended."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CaptchalabError(f"{path}: exists and is not a folder{hint}") from None
    except OSError as exc:
        raise CaptchalabError(f"{path}: cannot create the {what} ({exc.strerror or exc})") from None
    return path


def rmdir_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it is an empty folder (not a link to one)."""
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
