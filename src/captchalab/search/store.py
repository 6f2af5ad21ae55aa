"""The index folder on disk, crash-safe by construction.

Layout of one index folder::

    meta.json            format, version, model_id, dim (written once, atomically; its presence = "an index")
    index.sqlite         WAL-mode SQLite: files (row, path, size, mtime_ns, sha256, segment, pos), segments,
                         skipped (unreadable files, so unchanged ones are not re-read), info (root, counters)
    segments/seg-*.npy   append-only float32 (n, dim) vector files; a file only counts once a committed
                         ``segments`` row names it, so a crash leaves at worst an orphan, removed on the next update
    ann.json, ann-*      the approximate (FAISS) index, see ann.py
    lock                 flock()ed by the one process allowed to write

A batch is committed by (1) writing a new segment file (temp name, fsync, rename) and then (2) one SQLite
transaction that inserts its rows. Deleted rows only leave garbage in their segment; ``compact`` rewrites small or
mostly-dead segments and deletes the old files after the transaction that stops referring to them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError

try:  # POSIX; elsewhere the single-writer rule is the user's to keep
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "captchalab-image-index"
VERSION = 1
META, DB, SEGMENTS, LOCK = "meta.json", "index.sqlite", "segments", "lock"
INDEX_NAME = ".captchalab-index"  # the default index folder, inside the indexed folder (and never indexed)
OWN_NAMES = frozenset({META, DB, f"{DB}-wal", f"{DB}-shm", f"{DB}-journal", SEGMENTS, LOCK})  # what creation makes
BIG_SEGMENT = 65_536  # segments with at least this many rows are left alone by compaction unless mostly dead
MIN_LIVE_FRACTION = 0.75

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    segment INTEGER NOT NULL,
    pos INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_segment ON files(segment);
CREATE TABLE IF NOT EXISTS segments (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, n INTEGER);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value);
"""


@dataclass(frozen=True)
class FileEntry:
    """One indexed file: path relative to the root (POSIX), its stat and content hash."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Segment:
    vectors: np.ndarray  # (n, dim) float32, memory-mapped
    rows: np.ndarray  # (n,) int64 row id at each position, -1 where the row was deleted


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of the live vectors, as of one read transaction."""

    generation: int  # bumped when rows are added or removed
    layout: int  # bumped when rows move between segments (compaction)
    segments: tuple[Segment, ...]
    count: int

    def blocks(self, max_rows: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (vectors (c, dim), rows (c,)) slices in storage order; rows is -1 for deleted positions."""
        for segment in self.segments:
            for start in range(0, len(segment.rows), max_rows):
                yield segment.vectors[start : start + max_rows], segment.rows[start : start + max_rows]

    def live_rows(self) -> np.ndarray:
        """Sorted row ids of all live vectors."""
        if not self.segments:
            return np.zeros(0, np.int64)
        return np.sort(np.concatenate([s.rows[s.rows >= 0] for s in self.segments]))

    def gather(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Live vectors (N, dim) in memory and their row ids, optionally only those in ``rows``."""
        parts, ids = [], []
        for vectors, block_rows in self.blocks():
            keep = block_rows >= 0 if rows is None else np.isin(block_rows, rows)
            if keep.any():
                parts.append(np.asarray(vectors[keep], dtype=np.float32))
                ids.append(block_rows[keep])
        if not parts:
            dim = self.segments[0].vectors.shape[1] if self.segments else 0
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        return np.concatenate(parts), np.concatenate(ids)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _did_you_mean(folder: Path) -> str:
    """A hint when ``folder`` is the indexed folder, not its index (``photos`` for ``photos/.captchalab-index``)."""
    inner = folder / INDEX_NAME
    return f"; did you mean --index {inner}?" if (inner / META).is_file() else ""


def _ours(name: str) -> bool:
    """Whether ``name`` in an index folder is something creating an index makes (a half-made index's leftovers)."""
    return name in OWN_NAMES or (name.startswith(f".{META}.") and name.endswith(".tmp"))


def no_index_error(folder: Path) -> CaptchalabError:
    hint = _did_you_mean(folder) or "; run 'captchalab search index DIR' first"
    return CaptchalabError(f"{folder}: no index here{hint}")


def busy_error(folder: Path) -> CaptchalabError:
    return CaptchalabError(f"{folder}: another process is updating this index; try again when it has finished")


def removed_error(folder: Path) -> CaptchalabError:
    return CaptchalabError(f"{folder}: the index was removed meanwhile (by another run that failed); try again")


def to_db(value: str) -> str | bytes:
    """A path as SQLite can keep it: text, or its raw bytes where the name is not valid UTF-8 (surrogateescape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(value)
    return value


def from_db(value: object) -> object:
    """The inverse of ``to_db``: a stored BLOB path becomes the ``str`` os functions accept again."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


class Store:
    """Metadata and vectors of one index folder. Reads are safe from many threads; one process writes."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder = folder
        self.meta = meta
        self.made: list[str] = []  # names this process created in the folder ("." for the folder itself)
        self.conn = sqlite3.connect(folder / DB, isolation_level=None, check_same_thread=False, timeout=60)
        try:
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.conn.execute("PRAGMA journal_mode=WAL")  # needs an exclusive lock: only done once, at creation
            self.conn.execute("PRAGMA synchronous=FULL")  # compaction deletes files after commit: commits must stick
        except sqlite3.OperationalError as exc:
            self.conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise busy_error(folder) from None
            if not (folder / DB).is_file():
                raise removed_error(folder) from None
            raise CaptchalabError(f"{folder / DB}: cannot open the index database ({exc})") from None

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Store:
        folder = Path(folder)
        meta_path = folder / META
        if not meta_path.is_file():
            raise no_index_error(folder)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            ok = meta.get("format") == FORMAT and isinstance(meta.get("dim"), int) and "model_id" in meta
        except (OSError, ValueError, AttributeError) as exc:
            raise CaptchalabError(f"{meta_path}: not a readable index description ({exc})") from None
        if not ok:
            raise CaptchalabError(f"{meta_path}: not a captchalab image index")
        if not (folder / DB).is_file():
            raise CaptchalabError(f"{folder / DB}: missing; the index is damaged, index the folder again")
        if meta.get("version", 0) > VERSION:
            raise CaptchalabError(f"{folder}: index format {meta['version']} is newer than this captchalab reads")
        return cls(folder, meta)

    @classmethod
    def create(cls, folder: str | os.PathLike, model_id: str, dim: int) -> Store:
        """Make a new empty index folder (or finish one whose creation was interrupted), holding the write lock.

        A second process creating the same index at the same time is refused (or opens the finished index);
        ``made`` lists what this call created, so a failed first run can remove exactly that.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise CaptchalabError(f"{folder}: exists and is not a folder; choose another index path")
        before: set[str] | None = None  # what was there already; None: this call made the folder
        try:
            folder.mkdir(parents=True)  # atomic: of two processes creating the index, one makes the folder
        except FileExistsError:
            try:
                before = {p.name for p in folder.iterdir()}
            except OSError as exc:
                raise CaptchalabError(f"{folder}: cannot list the index folder ({exc.strerror or exc})") from None
        except OSError as exc:
            raise CaptchalabError(f"{folder}: cannot create the index folder ({exc.strerror or exc})") from None
        if before is not None and any(not _ours(name) for name in before):
            hint = _did_you_mean(folder) or "; choose another index path"
            raise CaptchalabError(f"{folder}: folder is not empty and holds no index{hint}")
        with _lock(folder):
            if (folder / META).is_file():  # another process finished creating it meanwhile
                return cls.open(folder)
            (folder / SEGMENTS).mkdir(exist_ok=True)
            meta = {"format": FORMAT, "version": VERSION, "model_id": model_id, "dim": int(dim)}
            store = cls(folder, meta)
            store.conn.executescript(SCHEMA)
            write_json_atomic(folder / META, meta)  # last: until it exists, the folder is not an index
        store.made = ["."] if before is None else sorted(OWN_NAMES - before)
        return store

    def discard_if_empty(self) -> bool:
        """Remove what ``create`` made here if the index is still empty (e.g. the first run found no images).

        Done under the write lock, and only for what this process created: an index another process is
        filling, or a folder the user made, is left alone. Returns whether anything was removed.
        """
        if not self.made:
            return False
        try:
            with self.writer():
                if self.count():
                    return False
                self.close()
                if self.made == ["."]:
                    shutil.rmtree(self.folder, ignore_errors=True)
                else:
                    for name in self.made:
                        path = self.folder / name
                        if path.is_dir():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
        except CaptchalabError:  # another process holds the lock: the index is its now
            return False
        self.made = []
        return True

    def close(self) -> None:
        self.conn.close()

    # -- transactions and the writer lock ---------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def writer(self) -> contextlib.AbstractContextManager[None]:
        """Hold the folder's write lock; a second writer gets a one-line error instead of waiting."""
        return _lock(self.folder)

    def _bump(self, key: str) -> None:
        self.conn.execute(
            "INSERT INTO info(key, value) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET value = value + 1", (key,)
        )

    def get_info(self, key: str, default: object = None) -> object:
        row = self.conn.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return default if row is None else from_db(row[0])

    def set_info(self, key: str, value: object) -> None:
        value = to_db(value) if isinstance(value, str) else value
        self.conn.execute("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", (key, value))

    def counters(self) -> tuple[int, int]:
        rows = dict(self.conn.execute("SELECT key, value FROM info WHERE key IN ('generation', 'layout')"))
        return int(rows.get("generation", 0)), int(rows.get("layout", 0))

    # -- reading ------------------------------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def known_files(self) -> dict[str, FileEntry]:
        query = "SELECT path, size, mtime_ns, sha256 FROM files"
        return {entry.path: entry for entry in (FileEntry(from_db(r[0]), *r[1:]) for r in self.conn.execute(query))}

    def known_skipped(self) -> dict[str, tuple[int, int, str]]:
        query = "SELECT path, size, mtime_ns, reason FROM skipped"
        return {from_db(r[0]): (r[1], r[2], r[3]) for r in self.conn.execute(query)}

    def paths(self, rows: Iterable[int]) -> dict[int, str]:
        wanted = sorted({int(r) for r in rows if r >= 0})
        found: dict[int, str] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            query = f"SELECT row, path FROM files WHERE row IN ({','.join('?' * len(part))})"
            found.update((row, from_db(path)) for row, path in self.conn.execute(query, part))
        return found

    def snapshot(self) -> Snapshot:
        """Memory-map every segment that holds live rows, with one read transaction for a consistent view."""
        for attempt in range(3):
            try:
                return self._snapshot()
            except FileNotFoundError:  # a writer compacted between our read and the open; read again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _snapshot(self) -> Snapshot:
        self.conn.execute("BEGIN")
        try:
            generation, layout = self.counters()
            segments = self.conn.execute("SELECT id, name, n FROM segments ORDER BY id").fetchall()
            placed = np.array(self.conn.execute("SELECT segment, pos, row FROM files").fetchall(), dtype=np.int64)
        finally:
            self.conn.execute("COMMIT")
        placed = placed.reshape(-1, 3)
        placed = placed[np.argsort(placed[:, 0], kind="stable")]  # grouped by segment
        ids = [seg_id for seg_id, _, _ in segments]
        starts = np.searchsorted(placed[:, 0], ids, side="left")
        ends = np.searchsorted(placed[:, 0], ids, side="right")
        out = []
        for (_, name, n), start, end in zip(segments, starts, ends):
            if start == end:
                continue
            mine = placed[start:end]
            rows = np.full(n, -1, dtype=np.int64)
            rows[mine[:, 1]] = mine[:, 2]
            out.append(Segment(self._load_segment(name, n), rows))
        return Snapshot(generation, layout, tuple(out), len(placed))

    def _load_segment(self, name: str, n: int) -> np.ndarray:
        path = self.folder / SEGMENTS / name
        try:
            vectors = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise CaptchalabError(f"{path}: unreadable vector segment ({exc})") from None
        if vectors.dtype != np.float32 or vectors.shape != (n, self.dim):
            raise CaptchalabError(f"{path}: vector segment has shape {vectors.shape}, expected ({n}, {self.dim})")
        return vectors

    # -- writing (callers hold ``writer()``) ----------------------------------------------------------------------

    def _write_segment(self, vectors: np.ndarray) -> str:
        name = f"seg-{uuid.uuid4().hex}.npy"
        folder = self.folder / SEGMENTS
        tmp = folder / f"{name}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / name)
        return name

    def commit(
        self,
        entries: Sequence[FileEntry],
        vectors: np.ndarray,
        touched: Sequence[FileEntry] = (),
        skipped: Sequence[tuple[str, int, int, str]] = (),
    ) -> None:
        """Add (or replace) ``entries`` with their vectors, record touched stats and skipped files: one commit.

        A skipped file loses any vector it had: an indexed image that became unreadable is no longer found.
        """
        name = self._write_segment(vectors) if len(entries) else None
        with self.transaction() as conn:
            if name is not None:
                seg_id = conn.execute("INSERT INTO segments(name, n) VALUES (?, ?)", (name, len(entries))).lastrowid
                # a changed file gets a new row id (so the approximate index sees it as removed + added)
                conn.executemany("DELETE FROM files WHERE path = ?", [(to_db(e.path),) for e in entries])
                conn.executemany(
                    "INSERT INTO files(path, size, mtime_ns, sha256, segment, pos) VALUES (?, ?, ?, ?, ?, ?)",
                    [(to_db(e.path), e.size, e.mtime_ns, e.sha256, seg_id, i) for i, e in enumerate(entries)],
                )
                conn.executemany("DELETE FROM skipped WHERE path = ?", [(to_db(e.path),) for e in entries])
            conn.executemany(
                "UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?",
                [(e.size, e.mtime_ns, to_db(e.path)) for e in touched],
            )
            dropped = conn.executemany("DELETE FROM files WHERE path = ?", [(to_db(s[0]),) for s in skipped]).rowcount
            conn.executemany(
                "INSERT OR REPLACE INTO skipped(path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
                [(to_db(path), *rest) for path, *rest in skipped],
            )
            if name is not None or dropped > 0:
                self._bump("generation")

    def remove(self, paths: Sequence[str], forget_skipped: Sequence[str] = ()) -> None:
        with self.transaction() as conn:
            conn.executemany("DELETE FROM files WHERE path = ?", [(to_db(p),) for p in paths])
            conn.executemany("DELETE FROM skipped WHERE path = ?", [(to_db(p),) for p in forget_skipped])
            if paths:
                self._bump("generation")

    def clean_orphans(self) -> None:
        """Delete segment files no committed row refers to (left by a crash between write and commit)."""
        known = {r[0] for r in self.conn.execute("SELECT name FROM segments")}
        for path in (self.folder / SEGMENTS).iterdir():
            if path.name not in known:
                log.info("removing unreferenced %s", path)
                path.unlink(missing_ok=True)

    def compact(self, big: int = BIG_SEGMENT) -> bool:
        """Merge small or mostly-dead segments into one and drop empty ones. Returns whether anything changed."""
        live = dict(self.conn.execute("SELECT segment, COUNT(*) FROM files GROUP BY segment"))
        segments = self.conn.execute("SELECT id, name, n FROM segments").fetchall()
        empty = [(i, name) for i, name, n in segments if live.get(i, 0) == 0]
        merge = [
            (i, name, n) for i, name, n in segments if live.get(i, 0) and (n < big or live[i] < MIN_LIVE_FRACTION * n)
        ]
        if len(merge) == 1 and live[merge[0][0]] == merge[0][2]:
            merge = []  # one small clean segment: nothing to gain
        if not empty and not merge:
            return False
        moved: list[int] = []  # row ids in their new order
        new_name = None
        if merge:
            parts = []
            for seg_id, name, n in merge:
                placed = self.conn.execute("SELECT row, pos FROM files WHERE segment = ? ORDER BY pos", (seg_id,))
                rows, positions = np.array(placed.fetchall(), dtype=np.int64).reshape(-1, 2).T
                parts.append(np.asarray(self._load_segment(name, n)[positions]))
                moved.extend(rows.tolist())
            new_name = self._write_segment(np.concatenate(parts))
        with self.transaction() as conn:
            if new_name is not None:
                seg_id = conn.execute("INSERT INTO segments(name, n) VALUES (?, ?)", (new_name, len(moved))).lastrowid
                conn.executemany(
                    "UPDATE files SET segment = ?, pos = ? WHERE row = ?", [(seg_id, p, r) for p, r in enumerate(moved)]
                )
            gone = [i for i, _ in empty] + [i for i, _, _ in merge]
            conn.executemany("DELETE FROM segments WHERE id = ?", [(i,) for i in gone])
            self._bump("layout")
        for name in [name for _, name in empty] + [name for _, name, _ in merge]:
            (self.folder / SEGMENTS / name).unlink(missing_ok=True)
        log.debug("compacted %d segment(s) into one, dropped %d empty", len(merge), len(empty))
        return True


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """flock() the folder's lock file without waiting: a second writer is refused in one line."""
    try:
        handle = open(folder / LOCK, "a+b")
    except OSError as exc:
        raise CaptchalabError(f"{folder / LOCK}: cannot open the index's lock file ({exc.strerror or exc})") from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy_error(folder) from None
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
