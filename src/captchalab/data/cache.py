"""Decode and resize a dataset once into a uint8 array on disk, so training never re-decodes images."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captchalab.data.labels import LabelledImage
from captchalab.errors import CaptchalabError
from captchalab.imaging import Preprocess, load_image
from captchalab.parallel import pool_map
from captchalab.progress import track

log = logging.getLogger(__name__)


@dataclass
class CachedSplit:
    images: np.ndarray  # (N, H, W, C) uint8, memory-mapped
    labels: list[str]
    keys: list[str]
    skipped: list[str]  # "file: problem" for images that could not be read
    files: tuple[Path, ...] = ()  # the .npy and .json it was read from


_CACHE_FILE = re.compile(r"[a-z]+-[0-9a-f]{16}(\.npy|\.json|\.npy\.tmp\.npy|\.json\.tmp)")


def remove_other_caches(cache_dir: Path, in_use: list[CachedSplit]) -> None:
    """Delete the cache files in ``cache_dir`` that none of ``in_use`` was read from: caches of earlier attempts with
    other sizes or data, and half-written ones left by a killed run. They can be large and are never read again."""
    keep = {f.name for split in in_use for f in split.files}
    stale = [f for f in cache_dir.iterdir() if _CACHE_FILE.fullmatch(f.name) and f.name not in keep]
    if stale:
        size = sum(f.stat().st_size for f in stale)
        for f in stale:
            f.unlink(missing_ok=True)
        log.info("removed %d cache files no longer used (%.1f MB) from %s", len(stale), size / 1e6, cache_dir)


def _load_one(job: tuple[str, dict]) -> np.ndarray | str:
    path, spec = job
    try:
        return Preprocess.from_dict(spec).to_uint8(load_image(path))
    except CaptchalabError as exc:
        return str(exc)


def _fingerprint(items: list[LabelledImage], spec: Preprocess) -> str:
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for item in items:
        try:
            stat = item.path.stat()
            digest.update(f"{item.key}\0{item.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{item.key}\0missing\n".encode())
    return digest.hexdigest()[:16]


def build_cache(
    items: list[LabelledImage], spec: Preprocess, cache_dir: Path, name: str, workers: int | None = None
) -> CachedSplit:
    """Preprocess ``items`` into ``cache_dir/<name>-<fingerprint>.npy`` (reused when files are unchanged)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_dir / f"{name}-{_fingerprint(items, spec)}"
    array_path, meta_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if array_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return CachedSplit(
            np.load(array_path, mmap_mode="r"), meta["labels"], meta["keys"], meta["skipped"], (array_path, meta_path)
        )

    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(str(item.path), spec.to_dict()) for item in items]
    out = np.lib.format.open_memmap(
        str(array_path) + ".tmp.npy",
        mode="w+",
        dtype=np.uint8,
        shape=(len(items), spec.height, spec.width, spec.channels),
    )
    kept: list[int] = []
    skipped: list[str] = []
    results = pool_map(_load_one, jobs, workers, chunksize=256)
    try:
        for index, result in enumerate(track(results, len(jobs), f"caching {name}")):
            if isinstance(result, str):
                skipped.append(result)
            else:
                out[len(kept)] = result
                kept.append(index)
    except BaseException:  # Ctrl-C: no half-written cache left behind
        results.close()  # stops the workers now, not at exit
        del out
        Path(str(array_path) + ".tmp.npy").unlink(missing_ok=True)
        raise
    out.flush()
    del out
    if not kept:
        os.remove(str(array_path) + ".tmp.npy")
        raise CaptchalabError(f"none of the {len(items)} {name} images could be read; first problem: {skipped[0]}")
    full = np.load(str(array_path) + ".tmp.npy", mmap_mode="r")
    if len(kept) < len(items):  # compact: drop the rows of unreadable files
        np.save(array_path, full[: len(kept)])
        del full
        os.remove(str(array_path) + ".tmp.npy")
    else:
        del full
        os.replace(str(array_path) + ".tmp.npy", array_path)
    meta = {"labels": [items[i].label for i in kept], "keys": [items[i].key for i in kept], "skipped": skipped}
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    files = (array_path, meta_path)
    return CachedSplit(np.load(array_path, mmap_mode="r"), meta["labels"], meta["keys"], skipped, files)
