"""Chinese-CLIP image-text datasets made from labelled grid cells, and back again.

Input: a folder of ``<label>/<image>`` sub-folders, or a JSONL file of ``{"image": path, "text": label}`` lines.
Output (the file formats of Chinese-CLIP's fine-tuning data)::

    out/
      dataset.json            what was built: seed, ratios, labels, counts per split, skipped images
      {split}_imgs.tsv        <image id>\\t<standard base64 of the original image file bytes>
      {split}_texts.jsonl     {"text_id": 3, "text": "猫", "image_ids": [17, 21]}
      lmdb/{split}/imgs       LMDB, laid out as Chinese-CLIP's cn_clip/preprocess/build_lmdb_dataset.py does
      lmdb/{split}/pairs      (written and read by captchalab.data.cnclip_lmdb)

Ids: image ids run from 1 over all readable images sorted by (label, path), so they are unique across splits and
do not depend on the seed; a text's id is ``split number * number of labels + label number + 1`` (splits in the
order train, valid, test; labels sorted), unique across splits too.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from captchalab.data.split import SPLITS, check_ratios
from captchalab.errors import CaptchalabError
from captchalab.folders import rmdir_if_empty
from captchalab.imaging import IMAGE_SUFFIXES, image_paths, load_image
from captchalab.progress import track

logger = logging.getLogger(__name__)

FORMAT = "captchalab-cnclip"
ID_PATTERN = re.compile(r"[0-9]{1,18}")  # ids and counts fit in an int64 (longer digit strings are refused)
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_LMDB_FILES = ("data.mdb", "lock.mdb")
MAX_CELL_BYTES = 64 * 2**20  # a cell picture is an icon or a photo crop, never this large
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


@dataclass(frozen=True)
class Cell:
    """One labelled image of a split: its id, its text and the original image file bytes."""

    image_id: int
    text: str
    image_bytes: bytes


@dataclass(frozen=True)
class _Source:
    path: Path
    key: str  # path as given (relative to the cells folder or the JSONL's folder): the sort key
    text: str


@dataclass(frozen=True)
class _Image:
    source: _Source
    data: bytes


@dataclass(frozen=True)
class _Text:
    text_id: int
    text: str
    image_ids: list[int]


# ---------------------------------------------------------------------------------------------- building


def build_dataset(
    cells: str | Path, out: str | Path, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, lmdb: bool = False
) -> dict:
    """Write a Chinese-CLIP dataset (TSV + JSONL per split, LMDB too with ``lmdb``) into ``out``.

    The split is stratified: each label's images, sorted by path, are shuffled with
    ``random.Random(f"{seed}/{label}")`` (our own per-label shuffle, not ``split_keys``, which is not stratified)
    and cut by ``ratios``; every label keeps at least one image in train. Unreadable images are skipped with one
    warning. ``out`` must be new, empty or an earlier dataset of ours (only our own files there are replaced).

    Returns the summary also written to ``out/dataset.json``.
    """
    cells, out = Path(cells), Path(out)
    weights = check_ratios(ratios)
    images, skipped = _read_images(cells, _scan(cells))
    labels = sorted({image.source.text for image in images})
    splits = _stratify(cells, images, weights, seed)
    _prepare_out(out, cells)
    ids = {image.source: number for number, image in enumerate(images, 1)}
    for split_number, split in enumerate(SPLITS):
        text_ids = {label: split_number * len(labels) + number for number, label in enumerate(labels, 1)}
        _write_split(out, split, splits[split], ids, text_ids)
    if lmdb:
        from captchalab.data.cnclip_lmdb import build_lmdb  # its module imports this one

        build_lmdb(out)
    summary = {
        "format": FORMAT,
        "seed": seed,
        "ratios": list(weights),
        "labels": labels,
        "splits": {
            split: {"images": len(splits[split]), "texts": len({i.source.text for i in splits[split]})}
            for split in SPLITS
        },
        "skipped": [source.key for source in skipped],
        "lmdb": lmdb,
    }
    (out / "dataset.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return summary


def _scan(cells: Path) -> list[_Source]:
    if cells.is_dir():
        return _scan_folder(cells)
    if not cells.exists():
        raise CaptchalabError(f"{cells}: no such folder or file")
    if cells.suffix.lower() not in (".jsonl", ".json"):
        raise CaptchalabError(f"{cells}: expected a folder of <label>/<image> sub-folders or a .jsonl labels file")
    return _scan_jsonl(cells)


def labelled_cells(cells: str | Path) -> list[tuple[str, Path]]:
    """(label, image path) of every cell of a ``<label>/<image>`` folder or a ``{"image", "text"}`` JSONL file,
    sorted; images are not opened here."""
    return sorted((source.text, source.path) for source in _scan(Path(cells)))


def label_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """(label, image files) of each ``<label>/`` sub-folder of ``root`` (NFC-normalised label, files sorted).

    A stray image beside the label folders, no label folder, or a label folder without images is a user error.
    """
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if stray:
        raise CaptchalabError(f"{stray[0]}: image outside a label folder; put each image in a <label>/ sub-folder")
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        raise CaptchalabError(f"{root}: folder has no <label>/ sub-folders of images")
    found = []
    for folder in folders:
        if not folder.name.strip():
            raise CaptchalabError(f"{folder}: label folder name is blank; name each folder after its label")
        files = image_paths(folder)
        if not files:
            raise CaptchalabError(f"{folder}: label folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        found.append((unicodedata.normalize("NFC", folder.name), files))
    return found


def _scan_folder(root: Path) -> list[_Source]:
    return [_Source(p, p.relative_to(root).as_posix(), label) for label, files in label_folders(root) for p in files]


def _scan_jsonl(file: Path) -> list[_Source]:
    sources: list[_Source] = []
    lines: dict[Path, int] = {}
    for number, line in _numbered_lines(file):
        record = _json_object(file, number, line)
        image, text = record.get("image"), record.get("text")
        if not isinstance(image, str) or not image or not isinstance(text, str) or not text.strip():
            raise CaptchalabError(f'{file}:{number}: needs a non-empty "image" path and a non-empty "text" label')
        path = Path(image) if Path(image).is_absolute() else file.parent / image
        if not _is_file(path):
            raise CaptchalabError(f"{file}:{number}: image {image} not found")
        if path.resolve() in lines:
            raise CaptchalabError(f"{file}:{number}: image {image} is already listed on line {lines[path.resolve()]}")
        lines[path.resolve()] = number
        sources.append(_Source(path, Path(image).as_posix(), unicodedata.normalize("NFC", text.strip())))
    if not sources:
        raise CaptchalabError(f"{file}: no labelled images listed")
    return sources


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that says False for names the system refuses (too long, NUL bytes, no permission)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_images(cells: Path, sources: list[_Source]) -> tuple[list[_Image], list[_Source]]:
    """Original bytes of each readable image, sorted by (label, path); the unreadable ones are returned apart."""
    images, skipped, problems = [], [], []
    for source in track(sorted(sources, key=lambda s: (s.text, s.key)), len(sources), "checking images"):
        try:
            size = source.path.stat().st_size
            if size > MAX_CELL_BYTES:  # checked before reading: the bytes are kept in memory for the TSV / LMDB
                raise CaptchalabError(f"{source.path}: {size / 2**20:.0f} MB, too large for a cell picture")
            data = source.path.read_bytes()
            load_image(data, name=str(source.path))
        except (OSError, CaptchalabError) as exc:
            skipped.append(source)
            if isinstance(exc, CaptchalabError):
                problems.append(str(exc))
            else:
                why = "broken symbolic link" if source.path.is_symlink() else exc.strerror or exc
                problems.append(f"{source.path}: {why}")
            continue
        images.append(_Image(source, data))
    if problems:
        logger.warning("skipped %d unreadable image(s): %s", len(problems), "; ".join(problems))
    if not images:
        raise CaptchalabError(f"{cells}: no readable images")
    return images, skipped


def _stratify(
    cells: Path, images: list[_Image], ratios: tuple[float, float, float], seed: int
) -> dict[str, list[_Image]]:
    by_label: dict[str, list[_Image]] = {}
    for image in images:
        by_label.setdefault(image.source.text, []).append(image)
    splits: dict[str, list[_Image]] = {split: [] for split in SPLITS}
    for label, members in by_label.items():
        random.Random(f"{seed}/{label}").shuffle(members)
        n_train, n_valid, _ = _cut(len(members), ratios)
        splits["train"] += members[:n_train]
        splits["valid"] += members[n_train : n_train + n_valid]
        splits["test"] += members[n_train + n_valid :]
    for split, ratio in zip(SPLITS, ratios, strict=True):
        if ratio > 0 and not splits[split]:
            raise CaptchalabError(
                f"{cells}: dataset too small to split: {len(images)} readable images in "
                f"{len(by_label)} labels leave the {split} split empty; add images or set its "
                "ratio to 0"
            )
    return splits


def _cut(count: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of one label's train / valid / test parts (rounded half up); train keeps at least one image."""
    n_valid, n_test = int(count * ratios[1] + 0.5), int(count * ratios[2] + 0.5)
    while n_valid + n_test >= count and n_valid + n_test > 0:
        if n_test >= n_valid:
            n_test -= 1
        else:
            n_valid -= 1
    return count - n_valid - n_test, n_valid, n_test


def _prepare_out(out: Path, cells: Path) -> None:
    """Make ``out`` ready: new or empty, or an earlier dataset of ours (its old LMDB files are removed)."""
    if out.exists() and not out.is_dir():
        raise CaptchalabError(f"{out}: exists and is not a folder")
    if cells.is_dir() and out.resolve().is_relative_to(cells.resolve()):
        raise CaptchalabError(f"{out}: the output folder must not be inside the cells folder {cells}")
    if out.is_dir() and any(out.iterdir()):
        if not _is_our_dataset(out):
            raise CaptchalabError(
                f"{out}: folder is not empty and holds no {FORMAT} dataset.json; choose a new or empty folder"
            )
        _remove_old_lmdb(out)  # the TSV, JSONL and dataset.json files are overwritten
    out.mkdir(parents=True, exist_ok=True)
    # Mark the folder first, so a build that is interrupted can be run again into the same folder.
    (out / "dataset.json").write_text(json.dumps({"format": FORMAT, "complete": False}) + "\n", encoding="utf-8")


def _is_our_dataset(folder: Path) -> bool:
    try:
        marker = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT


def _remove_old_lmdb(out: Path) -> None:
    """Remove the LMDB files an earlier build wrote, and nothing else (folders only when left empty)."""
    for split in SPLITS:
        for env in ("imgs", "pairs"):
            for name in _LMDB_FILES:
                (out / "lmdb" / split / env / name).unlink(missing_ok=True)
            rmdir_if_empty(out / "lmdb" / split / env)
        rmdir_if_empty(out / "lmdb" / split)
    rmdir_if_empty(out / "lmdb")


def _write_split(
    out: Path, split: str, images: list[_Image], ids: dict[_Source, int], text_ids: dict[str, int]
) -> None:
    members = sorted(images, key=lambda image: ids[image.source])
    with (out / f"{split}_imgs.tsv").open("w", encoding="utf-8", newline="\n") as tsv:
        for image in members:
            tsv.write(f"{ids[image.source]}\t{base64.b64encode(image.data).decode('ascii')}\n")
    by_text: dict[str, list[int]] = {}
    for image in members:
        by_text.setdefault(image.source.text, []).append(ids[image.source])
    with (out / f"{split}_texts.jsonl").open("w", encoding="utf-8", newline="\n") as jsonl:
        for text in sorted(by_text, key=text_ids.__getitem__):
            record = {"text_id": text_ids[text], "text": text, "image_ids": by_text[text]}
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------- reading


def read_split(dataset_dir: str | Path, split: str) -> list[Cell]:
    """The cells of one split, read from its TSV + JSONL, in JSONL order (the order of the LMDB pairs).

    A cell is one (image, text) pair, so an image listed by two texts gives two cells. Images no text lists (as
    in Chinese-CLIP test splits with ``"image_ids": []``) are left out, with an info log line.
    """
    tsv, jsonl = split_files(existing_folder(Path(dataset_dir)), split)
    images = read_tsv(tsv)
    texts = read_texts(jsonl, images, tsv)
    used = {image_id for text in texts for image_id in text.image_ids}
    if len(used) < len(images):
        logger.info("%s: %d image(s) listed by no text in %s, left out", tsv, len(images) - len(used), jsonl.name)
    data = {image_id: decode_b64(images[image_id], f"{tsv}: image {image_id}") for image_id in used}
    return [Cell(image_id, text.text, data[image_id]) for text in texts for image_id in text.image_ids]


def export_cells(dataset_dir: str | Path, split: str, out_folder: str | Path) -> int:
    """Write a split's cells back out as ``<text>/<image_id>.<ext>`` (original bytes) and list them with their exact
    texts in ``<split>_labels.jsonl`` (``{"image", "text"}``, which ``build_dataset`` reads); returns how many.

    The extension comes from the image format. A text that cannot be a folder name (a '/', a '\\', '.', '..')
    gets a stand-in folder, named in a warning; the JSONL keeps the text. Existing files with other bytes are never
    overwritten: that is checked for every file before any is written.
    """
    out = Path(out_folder)
    cells = read_split(dataset_dir, split)
    folders = _folder_names(sorted({cell.text for cell in cells}))
    plan: list[tuple[Path, bytes, str]] = []  # (target, bytes, text)
    for cell in cells:
        where = f"{dataset_dir}: {split} image {cell.image_id}"
        name = f"{cell.image_id}{_extension(cell.image_bytes, where)}"
        plan.append((out / folders[cell.text] / name, cell.image_bytes, cell.text))
    lines = "".join(
        json.dumps({"image": target.relative_to(out).as_posix(), "text": text}, ensure_ascii=False) + "\n"
        for target, _, text in plan
    )
    plan.append((out / f"{split}_labels.jsonl", lines.encode("utf-8"), ""))
    for target, data, _ in plan:
        if target.exists() and not (target.is_file() and target.read_bytes() == data):
            raise CaptchalabError(f"{target}: already exists with other content; export into a new folder")
    stand_ins = {text: folder for text, folder in folders.items() if folder != text}
    if stand_ins:
        shown = ", ".join(f"{text!r} -> {folder}/" for text, folder in list(stand_ins.items())[:5])
        logger.warning("%d texts cannot be folder names (%s); %s keeps the exact texts: build from it",
                       len(stand_ins), shown, out / f"{split}_labels.jsonl")  # fmt: skip
    for target, data, _ in track(plan, len(plan), f"exporting {split}"):
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return len(cells)


def _folder_names(texts: list[str]) -> dict[str, str]:
    """Text -> the folder its images go in: the text itself, or for a text no folder can be named (path separators,
    NUL, '.', '..', blank) a stand-in built from it that no other text of the split is named."""
    names = {text: text for text in texts if text.strip() and text not in (".", "..") and not set(text) & set("/\\\0")}
    taken = set(names.values())
    for text in texts:
        if text in names:
            continue
        base = "".join("_" if c in "/\\\0" else c for c in text).strip(" .") or "_"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}~{k}"
        names[text] = name
        taken.add(name)
    return names


def existing_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise CaptchalabError(f"{folder}: no such folder")
    return folder


def split_files(folder: Path, split: str) -> tuple[Path, Path]:
    if split not in SPLITS:
        raise CaptchalabError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return folder / f"{split}_imgs.tsv", folder / f"{split}_texts.jsonl"


def _numbered_lines(file: Path) -> list[tuple[int, str]]:
    """(line number, line) for each non-blank line of a UTF-8 text file."""
    if not file.is_file():
        raise CaptchalabError(f"{file}: no such file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CaptchalabError(f"{file}: not UTF-8 text") from None
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _json_object(file: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # also numbers of over 4300 digits and arrays nested too deep
        raise CaptchalabError(f"{file}:{number}: not valid JSON") from None
    if not isinstance(record, dict):
        raise CaptchalabError(f"{file}:{number}: expected a JSON object")
    return record


def read_tsv(file: Path) -> dict[int, str]:
    """Image id -> base64 text, in file order; every line checked (id an integer, base64 decodable)."""
    images: dict[int, str] = {}
    for number, line in _numbered_lines(file):
        parts = line.strip().split("\t")
        if len(parts) != 2:
            raise CaptchalabError(f"{file}:{number}: expected '<image id><TAB><base64 image>'")
        id_text, b64 = parts
        if not ID_PATTERN.fullmatch(id_text):
            raise CaptchalabError(
                f"{file}:{number}: image id {id_text[:20]!r} is not a whole number of at most 18 digits"
            )
        image_id = int(id_text)
        if image_id in images:
            raise CaptchalabError(f"{file}:{number}: image id {image_id} appears twice")
        decode_b64(b64, f"{file}:{number}")
        images[image_id] = b64
    return images


def decode_b64(data: str | bytes, where: str) -> bytes:
    """Decode standard or URL-safe base64 (Chinese-CLIP reads with ``urlsafe_b64decode``, which takes both)."""
    try:
        text = data.decode("ascii") if isinstance(data, bytes) else data
        decoded = base64.b64decode(text.translate(_URLSAFE_TO_STANDARD), validate=True)
    except (UnicodeDecodeError, ValueError, binascii.Error):
        raise CaptchalabError(f"{where}: bad base64 image data") from None
    if not decoded:
        raise CaptchalabError(f"{where}: empty image data")
    return decoded


def read_texts(file: Path, images: dict[int, str], tsv: Path) -> list[_Text]:
    texts: list[_Text] = []
    seen: set[int] = set()
    for number, line in _numbered_lines(file):
        record = _json_object(file, number, line)
        text_id, text, image_ids = record.get("text_id"), record.get("text"), record.get("image_ids")
        if not (
            is_int(text_id)
            and isinstance(text, str)
            and isinstance(image_ids, list)
            and all(is_int(i) for i in image_ids)
        ):
            raise CaptchalabError(
                f'{file}:{number}: needs an integer "text_id", a string "text" and a list of integer "image_ids"'
            )
        if not text.strip():
            raise CaptchalabError(f'{file}:{number}: "text" is blank')
        if text_id in seen:
            raise CaptchalabError(f"{file}:{number}: text id {text_id} appears twice")
        missing = [i for i in image_ids if i not in images]
        if missing:
            raise CaptchalabError(f"{file}:{number}: image id {missing[0]} is not in {tsv.name}")
        seen.add(text_id)
        texts.append(_Text(text_id, text, image_ids))
    return texts


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _extension(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise CaptchalabError(f"{where}: not a readable image") from None
    return _EXTENSIONS.get(image_format, f".{image_format.lower() or 'bin'}")
