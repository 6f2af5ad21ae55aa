"""Python API for text captchas (mirrors ``captchalab ocr``). Importing it does not import torch.

>>> from captchalab import ocr
>>> ocr.read("00042-R865.png").text
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from captchalab.data.labels import read_labelled_images
from captchalab.errors import CaptchalabError
from captchalab.evaluation import ocr_report
from captchalab.imaging import ImageInput, is_image_file, load_image
from captchalab.runtime.ocr import AUTO, OcrReader, Reading, read

__all__ = ["OcrReader", "Reading", "read", "load_reader", "evaluate", "expand_paths"]
log = logging.getLogger(__name__)


def load_reader(  # noqa: ANN201
    model: str | os.PathLike = "default",
    threads: int | None = None,
    case_sensitive: bool = True,
    charset: str | None = AUTO,
    refine: bool = True,
    average_shifts: bool = False,
):
    """A reader for ``default``, a bundle folder (onnxruntime) or a training run folder (torch); ``charset`` limits
    what it can read (e.g. ``'lower+digits'``; ``'auto'``: inferred among the model's training alphabets, ``'any'``:
    no limit); ``refine=False`` turns a bundle's refiner of look-alike characters off; ``average_shifts`` (bundles
    only) reads unsure captchas again shifted by a pixel (``OcrReader``)."""
    path = Path(model)
    if str(model) != "default" and path.is_dir() and not (path / "manifest.json").exists():
        if (path / "best.pt").exists():
            from captchalab.training.reader import TorchOcrReader

            if average_shifts:
                raise CaptchalabError(f"{path}: --average-shifts reads exported bundles only; export the run first")
            return TorchOcrReader(path, case_sensitive=case_sensitive, charset=charset)
        raise CaptchalabError(f"{path}: neither a model bundle (manifest.json) nor a training run (best.pt)")
    if str(model) != "default" and not path.exists():
        raise CaptchalabError(f"{path}: no such model bundle")
    return OcrReader(
        model, threads=threads, case_sensitive=case_sensitive, charset=charset, refine=refine,
        average_shifts=average_shifts,
    )  # fmt: skip


def image_files(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The images under ``folder`` (sorted, recursive) and one message per sub-folder that could not be listed. A
    broken link named like an image is listed too, so that reading it reports the problem."""
    problems: list[str] = []

    def note(exc: OSError) -> None:
        problems.append(f"{exc.filename or folder}: cannot list folder ({exc.strerror or exc})")

    files = [
        Path(root) / name
        for root, _dirs, names in os.walk(folder, onerror=note)
        for name in names
        if is_image_file(Path(root) / name)
    ]
    return sorted(files), problems


def expand_paths(
    paths: Sequence[str], stdin: BinaryIO | None = None
) -> Iterator[tuple[str, ImageInput | CaptchalabError]]:
    """Files stay as they are, folders become their images (sorted, recursive), ``-`` reads bytes from stdin once,
    pipes (``<(cat x.png)``) are read as bytes. A path that cannot give images yields a CaptchalabError in place of
    the image, so callers can report it and go on with the rest."""
    stdin_read = False
    for item in paths:
        if item == "-":
            if stdin is None:
                yield "<stdin>", CaptchalabError("<stdin>: '-' given but standard input is closed")
            elif stdin_read:
                yield "<stdin>", CaptchalabError("<stdin>: '-' given twice; standard input can be read only once")
            else:
                stdin_read = True
                try:
                    yield "<stdin>", stdin.read()
                except OSError as exc:
                    yield "<stdin>", CaptchalabError(f"<stdin>: cannot read ({exc.strerror or exc})")
        elif os.path.isdir(item):
            files, problems = image_files(item)
            yield from ((item, CaptchalabError(problem)) for problem in problems)
            if not files and not problems:
                yield item, CaptchalabError(f"{item}: folder holds no images")
            yield from ((str(p), str(p)) for p in files)
        elif os.path.exists(item) and not os.path.isfile(item):
            try:
                with open(item, "rb") as stream:  # a pipe or other non-regular file
                    yield item, stream.read()
            except OSError as exc:
                yield item, CaptchalabError(f"{item}: not a regular file and cannot be read ({exc.strerror or exc})")
        else:
            yield item, item


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    case_sensitive: bool = True,
    batch_size: int = 256,
    charset: str | None = AUTO,
    refine: bool = True,
    average_shifts: bool = False,
) -> dict:
    """Score ``model`` on a labelled folder / labels file; unreadable images are skipped and listed. ``charset``
    limits what the model may read (the alphabet of the captchas, when known)."""
    reader = load_reader(
        model, case_sensitive=case_sensitive, charset=charset, refine=refine, average_shifts=average_shifts
    )
    items = read_labelled_images(data)
    compare_case = reader.case_sensitive
    charset = set(reader.charset) | ({c.upper() for c in reader.charset} if not compare_case else set())
    for item in items:
        outside = sorted(set(item.label) - charset)
        if outside:
            raise CaptchalabError(
                f"{item.path}: label {item.label!r} has characters the model cannot output: {''.join(outside)!r}"
            )
    predictions, labels, skipped = [], [], []
    for start in range(0, len(items), batch_size):
        images, chunk_labels = [], []
        for item in items[start : start + batch_size]:
            try:
                images.append(load_image(item.path))
                chunk_labels.append(item.label)
            except CaptchalabError as exc:
                skipped.append(str(exc))
        if images:
            predictions += [r.text for r in reader.read_batch(images)]
            labels += chunk_labels
    if not labels:  # one line: the first problem tells what is wrong with all of them, more often than not
        raise CaptchalabError(f"{data}: none of the {len(items)} images could be read; first problem: {skipped[0]}")
    if skipped:
        log.warning("skipped %d unreadable images: %s", len(skipped), "; ".join(skipped[:20]))
    report = ocr_report(predictions, labels, compare_case)
    report.update({"model": str(model), "data": str(data), "skipped_images": skipped,
                   "refiner": getattr(reader, "refiner", None) is not None})  # fmt: skip
    return report
