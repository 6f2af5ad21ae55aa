"""Labelled image lists: from a folder (label in the file name) or from a TSV / JSONL labels file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from captchalab.errors import CaptchalabError
from captchalab.imaging import IMAGE_SUFFIXES, image_paths


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str
    key: str  # stable name used in split.json: path relative to the dataset root


def label_from_filename(name: str) -> str:
    """``00042-R865.png`` -> ``R865``; ``R865_0042.png`` -> ``R865``; ``R865.png`` -> ``R865``."""
    stem = Path(name).stem
    if "-" in stem:
        return stem.rsplit("-", 1)[1]
    if "_" in stem:
        return stem.split("_", 1)[0]
    return stem


def _from_folder(root: Path) -> list[LabelledImage]:
    files = image_paths(root)
    items = []
    for path in files:
        label = label_from_filename(path.name)
        if not label:
            raise CaptchalabError(f"{path}: no label in the file name (expected <anything>-<label>{path.suffix})")
        items.append(LabelledImage(path, label, path.relative_to(root).as_posix()))
    return items


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a labels file's non-blank lines; CaptchalabError if it cannot be read as UTF-8."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = _line_at(file.read_bytes(), exc.start)
        raise CaptchalabError(f"{file}:{line}: not UTF-8 text (save the labels file as UTF-8)") from None
    except OSError as exc:
        raise CaptchalabError(f"{file}: cannot read the labels file ({exc.strerror or exc})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line


def _line_at(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def _from_tsv(file: Path) -> list[LabelledImage]:
    items = _Listing(file)
    for number, line in _lines(file):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise CaptchalabError(f"{file}:{number}: expected 'path<TAB>label', got {line[:80]!r}")
        items.add(number, parts[0], parts[1])
    return items.items


def _from_jsonl(file: Path) -> list[LabelledImage]:
    items = _Listing(file)
    for number, line in _lines(file):
        try:
            record = json.loads(line)
            path = record.get("image") or record.get("path") or record.get("file")
            label = record.get("label", record.get("text"))
        except (json.JSONDecodeError, AttributeError):
            raise CaptchalabError(f"{file}:{number}: not a JSON object") from None
        if not path or not isinstance(path, str) or not isinstance(label, str) or not label:
            raise CaptchalabError(f'{file}:{number}: needs "image" (or "path") as a string and a non-empty "label"')
        items.add(number, path, label)
    return items.items


class _Listing:
    """The images a labels file lists, each once: a second line for the same path is an error naming both lines."""

    def __init__(self, file: Path):
        self.file, self.items, self._first_line = file, [], {}

    def add(self, number: int, path: str, label: str) -> None:
        if "\0" in path:
            raise CaptchalabError(f"{self.file}:{number}: the image path holds a NUL character")
        if label != label.strip():
            raise CaptchalabError(
                f"{self.file}:{number}: label {label!r} starts or ends with a space; a model would learn it as a "
                "character (remove it)"
            )
        item = _item(self.file, path, label)
        if item.key in self._first_line:
            raise CaptchalabError(
                f"{self.file}:{number}: lists {path} again (first on line {self._first_line[item.key]})"
            )
        self._first_line[item.key] = number
        self.items.append(item)


def _item(labels_file: Path, path: str, label: str) -> LabelledImage:
    resolved = Path(path) if Path(path).is_absolute() else labels_file.parent / path
    return LabelledImage(resolved, label, path)


def read_labelled_images(source: str | Path, case_sensitive: bool = True) -> list[LabelledImage]:
    """All labelled images of a dataset: a folder (searched recursively), a ``.tsv`` or a ``.jsonl`` file.

    ``case_sensitive=False`` folds every label to lower case.
    """
    root = Path(source)
    if root.is_dir():
        items = _from_folder(root)
    elif root.is_file() and root.suffix.lower() in (".tsv", ".txt"):
        items = _from_tsv(root)
    elif root.is_file() and root.suffix.lower() in (".jsonl", ".json"):
        items = _from_jsonl(root)
    elif not root.exists():
        raise CaptchalabError(f"{root}: no such file or folder")
    else:
        raise CaptchalabError(f"{root}: expected a folder of images, a .tsv or a .jsonl labels file")
    if not items:
        raise CaptchalabError(f"{root}: no labelled images found ({', '.join(IMAGE_SUFFIXES)})")
    if not case_sensitive:
        items = [LabelledImage(i.path, i.label.lower(), i.key) for i in items]
    return items
