"""Finding images under a folder (stat only) and reading them in a small thread pool, one batch ahead."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.imaging import IMAGE_SUFFIXES, load_image


@dataclass(frozen=True)
class FileStat:
    path: str  # relative to the root, with "/" separators
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Scan:
    files: list[FileStat]  # sorted by path
    skipped: list[str]  # one line per sub-folder that could not be listed or image-named non-file


def scan_images(root: Path, exclude: Iterable[Path] = ()) -> Scan:
    """Every regular image file under ``root`` (recursive, by suffix), sorted by path; symlinked folders are not
    followed. A named pipe or device called ``x.png`` is never opened, and a sub-folder that cannot be listed is
    reported in ``skipped`` rather than silently missing."""
    skip = {os.path.normcase(os.path.realpath(p)) for p in exclude}
    found: list[FileStat] = []
    skipped: list[str] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if folder == root:
                raise CaptchalabError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
            skipped.append(f"{folder}: cannot list the folder ({exc.strerror or exc})")
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if os.path.normcase(os.path.realpath(entry.path)) not in skip:
                    stack.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                try:
                    info = entry.stat()
                except OSError as exc:
                    if entry.is_symlink():  # else it vanished since the listing: nothing to report
                        skipped.append(f"{entry.path}: broken symbolic link ({exc.strerror or exc})")
                    continue
                if not stat.S_ISREG(info.st_mode):
                    skipped.append(f"{entry.path}: not a regular file")
                    continue
                rel = Path(entry.path).relative_to(root).as_posix()
                found.append(FileStat(rel, info.st_size, info.st_mtime_ns))
    found.sort(key=lambda f: f.path)
    return Scan(found, sorted(skipped))


def read_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@dataclass(frozen=True)
class Job:
    stat: FileStat
    old_sha256: str | None  # set for a known file whose size or mtime changed


@dataclass(frozen=True)
class Loaded:
    job: Job
    sha256: str | None
    image: Image.Image | None  # None when unchanged content (touched) or unreadable
    error: str | None = None

    @property
    def touched(self) -> bool:
        return self.error is None and self.image is None


def load_job(root: Path, job: Job) -> Loaded:
    """Read once: hash the bytes, and decode them only when the content is new."""
    full = root / job.stat.path
    try:
        data = read_bytes(full)
    except OSError as exc:
        return Loaded(job, None, None, f"{full}: cannot read ({exc.strerror or exc})")
    sha = hashlib.sha256(data).hexdigest()
    if sha == job.old_sha256:
        return Loaded(job, sha, None)
    try:
        return Loaded(job, sha, load_image(data, name=str(full)))
    except CaptchalabError as exc:
        return Loaded(job, sha, None, str(exc))


def load_batches(root: Path, jobs: Iterable[Job], batch_size: int, pool: Executor | None) -> Iterator[list[Loaded]]:
    """Yield loaded batches in order; with a pool, the next batch is read while the caller embeds this one."""
    iterator = iter(jobs)
    if pool is None:
        while batch := list(islice(iterator, batch_size)):
            yield [load_job(root, job) for job in batch]
        return

    def submit() -> list[Future]:
        return [pool.submit(load_job, root, job) for job in islice(iterator, batch_size)]

    ahead = submit()
    while ahead:
        current, ahead = ahead, submit()
        yield [future.result() for future in current]
