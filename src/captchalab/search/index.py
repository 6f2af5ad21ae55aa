"""ImageIndex: an incremental, persistent, model-tagged index of the images under one folder, searchable by vector,
image or text. Exact cosine search for small indexes, FAISS IVF for large ones (chosen by size, overridable).

Typical use::

    index = ImageIndex.open("photos.idx", embedder, create=True)
    report = index.update("photos/", embedder)       # again later: only new or changed files are embedded
    hits = index.search_text("猫", embedder, k=10)    # [Hit(path, score), ...]
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.imaging import IMAGE_SUFFIXES, ImageInput, load_image
from captchalab.progress import track
from captchalab.search import ann as ann_lib
from captchalab.search.embedder import ImageEmbedder, embed_images_checked, embed_texts_checked, normalize_rows
from captchalab.search.exact import SCORE_BUDGET_BYTES, exact_topk
from captchalab.search.scan import FileStat, Job, Loaded, load_batches, scan_images
from captchalab.search.store import INDEX_NAME, META, FileEntry, Snapshot, Store, no_index_error, removed_error

log = logging.getLogger(__name__)

ANN_THRESHOLD = 50_000  # at or above this many vectors, "auto" search uses the approximate index
COMMIT_EVERY = 256  # images per crash-safe commit
DUPLICATE_NEIGHBOURS = 16  # neighbours examined per image when near-duplicates are found approximately
Mode = Literal["auto", "exact", "approx"]


@dataclass(frozen=True)
class Hit:
    path: str
    score: float

    def to_dict(self) -> dict:
        return {"path": self.path, "score": self.score}


@dataclass
class UpdateReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per unreadable file, naming it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RecallReport:
    recall: float  # mean recall@k of the approximate index against exact search
    k: int
    queries: int
    nlist: int
    nprobe: int
    vectors: int

    def to_dict(self) -> dict:
        return asdict(self)


class _Pending:
    """Embedded-but-uncommitted work, written in one commit every ``every`` images."""

    def __init__(self, store: Store, every: int) -> None:
        self.store, self.every = store, every
        self.entries: list[FileEntry] = []
        self.vectors: list[np.ndarray] = []
        self.touched: list[FileEntry] = []
        self.skipped: list[tuple[str, int, int, str]] = []

    def add(self, batch: list[Loaded], vectors: np.ndarray | None, report: UpdateReport) -> None:
        fresh = 0
        for item in batch:
            stat = item.job.stat
            if item.error is not None:
                report.skipped.append(item.error)
                self.skipped.append((stat.path, stat.size, stat.mtime_ns, item.error))
            elif item.touched:
                report.unchanged += 1
                self.touched.append(FileEntry(stat.path, stat.size, stat.mtime_ns, item.sha256 or ""))
            else:
                self.entries.append(FileEntry(stat.path, stat.size, stat.mtime_ns, item.sha256 or ""))
                fresh += 1
                if item.job.old_sha256 is None:
                    report.added += 1
                else:
                    report.changed += 1
        if fresh:
            self.vectors.append(vectors)
        if len(self.entries) + len(self.touched) + len(self.skipped) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not (self.entries or self.touched or self.skipped):
            return
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, self.store.dim), np.float32)
        self.store.commit(self.entries, vectors, self.touched, self.skipped)
        self.entries, self.vectors, self.touched, self.skipped = [], [], [], []


class ImageIndex:
    """One index folder. ``search*`` may be called from several threads; ``update`` takes the folder's lock."""

    def __init__(self, store: Store, ann_threshold: int = ANN_THRESHOLD) -> None:
        self.store = store
        self.ann_threshold = ann_threshold
        self._lock = threading.RLock()
        self._snap: Snapshot | None = None
        self._ann: ann_lib.AnnIndex | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        embedder: ImageEmbedder | None = None,
        *,
        create: bool = False,
        ann_threshold: int = ANN_THRESHOLD,
    ) -> ImageIndex:
        """Open the index at ``path`` (checking it was made by ``embedder``'s model), or create it if asked."""
        path = Path(path)
        if (path / META).is_file():
            store = Store.open(path)
        elif create and embedder is not None:
            store = Store.create(path, embedder.model_id, embedder.dim)
        else:
            raise no_index_error(path)
        index = cls(store, ann_threshold)
        if embedder is not None:
            index.check_model(embedder)
        return index

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.store.folder

    @property
    def model_id(self) -> str:
        return self.store.model_id

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def root(self) -> Path | None:
        """The folder whose images this index holds (set by the first update)."""
        with self._lock:
            root = self.store.get_info("root")
        return Path(root) if root else None

    @property
    def model_spec(self) -> str | None:
        """How to load the model that made this index: ``default`` or a bundle folder (recorded by the CLI)."""
        with self._lock:
            spec = self.store.get_info("model_spec")
        return str(spec) if spec else None

    def set_model_spec(self, spec: str) -> None:
        """Record where the index's model lives, so queries need not name it again."""
        with self._lock, self.store.transaction():
            self.store.set_info("model_spec", spec)

    def __len__(self) -> int:
        with self._lock:
            return self.store.count()

    def check_model(self, embedder: ImageEmbedder) -> None:
        if embedder.model_id != self.model_id or int(embedder.dim) != self.dim:
            raise CaptchalabError(
                f"{self.path}: index was made with model {self.model_id} (dim {self.dim}), not "
                f"{embedder.model_id} (dim {embedder.dim}); use the same model or another index"
            )

    # -- building ---------------------------------------------------------------------------------------------

    def update(
        self,
        root: str | os.PathLike,
        embedder: ImageEmbedder,
        batch_size: int = 64,
        workers: int | None = None,
        commit_every: int = COMMIT_EVERY,
        model_spec: str | None = None,
    ) -> UpdateReport:
        """Embed new and changed images under ``root``, drop deleted ones, list unreadable ones.

        Files whose size and mtime match the index are only stat()ed. Work is committed every ``commit_every``
        images, so an interrupted update keeps what it committed and the next one finishes the job. A folder
        with no images at all is refused (rather than emptying the index, e.g. when a drive is not mounted).
        ``model_spec``, if given, is recorded as how to load the model (see ``set_model_spec``).
        """
        self.check_model(embedder)
        root = Path(root)
        if not root.is_dir():
            raise CaptchalabError(f"{root}: no such folder")
        root = root.resolve()
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        with self.store.writer():
            if not (self.path / META).is_file():
                raise removed_error(self.path)
            store = Store.open(self.path)  # its own connection: searches from other threads go on meanwhile
            try:
                report = _update(store, root, embedder, batch_size, workers, commit_every, model_spec)
            finally:
                store.close()
            if len(self) >= self.ann_threshold:
                self._approx(self._snapshot(), save="locked")
        log.debug("indexed %s: %s", root, report)
        return report

    # -- searching --------------------------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        with self._lock:
            if self._snap is None or (self._snap.generation, self._snap.layout) != self.store.counters():
                self._snap = self.store.snapshot()
            return self._snap

    def _approx(self, snapshot: Snapshot, save: Literal["locked", "try", "no"] = "try") -> ann_lib.AnnIndex:
        """The approximate index for ``snapshot``: loaded, refreshed or built as needed, and saved if changed."""
        with self._lock:
            current = self._ann or ann_lib.load(self.path)
            if current is None:
                current = ann_lib.build(snapshot)
            elif current.params.generation == snapshot.generation:
                self._ann = current
                return current
            else:
                current = ann_lib.refresh(current, snapshot)
            self._ann = current
            if save == "locked":
                ann_lib.save(current, self.path)
            elif save == "try":
                try:
                    with self.store.writer():
                        ann_lib.save(current, self.path)
                except CaptchalabError:
                    log.info("%s: an update is running; the refreshed approximate index is kept in memory", self.path)
            return current

    def search(self, queries: np.ndarray, k: int = 10, mode: Mode = "auto") -> list[list[Hit]]:
        """Top-k cosine hits for each of the (Q, dim) query vectors, best first."""
        if k < 1:
            raise CaptchalabError(f"k must be at least 1, not {k}")
        if mode not in ("auto", "exact", "approx"):
            raise ValueError(f"unknown search mode {mode!r}")
        queries = normalize_rows(queries, self.dim, "query")
        snapshot = self._snapshot()
        if snapshot.count == 0:
            return [[] for _ in queries]
        if mode == "approx" or (mode == "auto" and snapshot.count >= self.ann_threshold):
            with self._lock:  # a refresh changes the faiss index in place
                scores, rows = self._approx(snapshot).search(queries, k)
        else:
            scores, rows = exact_topk(queries, snapshot.blocks(), k)
        paths = self._paths(rows.ravel())
        return [
            [Hit(paths[r], float(s)) for s, r in zip(q_scores, q_rows) if r in paths]
            for q_scores, q_rows in zip(scores, rows.tolist())
        ]

    def _paths(self, rows: np.ndarray) -> dict[int, str]:
        with self._lock:
            relative = self.store.paths(rows.tolist())
        root = self.root or Path(".")
        return {row: str(root / rel) for row, rel in relative.items()}

    def search_image(self, image: ImageInput, embedder: ImageEmbedder, k: int = 10, mode: Mode = "auto") -> list[Hit]:
        """Images most like ``image`` (a path, bytes, PIL image or array); a non-image is refused naming it."""
        self.check_model(embedder)
        vector = embed_images_checked(embedder, [load_image(image)])
        return self.search(vector, k, mode)[0]

    def search_text(self, text: str, embedder: ImageEmbedder, k: int = 10, mode: Mode = "auto") -> list[Hit]:
        """Images that best match ``text``; needs a model with a text tower."""
        self.check_model(embedder)
        if not text.strip():
            raise CaptchalabError("the query text is empty")
        return self.search(embed_texts_checked(embedder, [text]), k, mode)[0]

    def near_duplicates(self, threshold: float = 0.95, mode: Mode = "auto") -> list[tuple[str, str, float]]:
        """Pairs of images with cosine similarity >= ``threshold``: (path_a, path_b, score), best first, a < b."""
        snapshot = self._snapshot()
        if snapshot.count < 2:
            return []
        if mode == "approx" or (mode == "auto" and snapshot.count >= self.ann_threshold):
            found = self._duplicates_approx(snapshot, threshold)
        else:
            found = _duplicates_exact(*snapshot.gather(), threshold)
        paths = self._paths(np.array([r for pair in found for r in pair], dtype=np.int64))
        pairs = [(paths[a], paths[b], s) for (a, b), s in found.items() if a in paths and b in paths]
        pairs = [(min(a, b), max(a, b), s) for a, b, s in pairs]
        return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))

    def _duplicates_approx(self, snapshot: Snapshot, threshold: float) -> dict[tuple[int, int], float]:
        approx = self._approx(snapshot)
        found: dict[tuple[int, int], float] = {}
        for vectors, rows in snapshot.blocks(4096):
            live = rows >= 0
            with self._lock:
                scores, ids = approx.search(np.ascontiguousarray(vectors[live]), DUPLICATE_NEIGHBOURS)
            for own, q_scores, q_ids in zip(rows[live].tolist(), scores.tolist(), ids.tolist()):
                for score, other in zip(q_scores, q_ids):
                    if other >= 0 and other != own and score >= threshold:
                        found[(min(own, other), max(own, other))] = score
        return found

    # -- the approximate index --------------------------------------------------------------------------------

    def build_ann(self) -> ann_lib.AnnParams:
        """Rebuild and save the approximate index now (retrained, nprobe re-tuned), whatever the size."""
        with self._lock, self.store.writer():
            self._snap = None
            self._ann = ann_lib.build(self._snapshot())
            ann_lib.save(self._ann, self.path)
            return self._ann.params

    def measure_recall(
        self, k: int = 10, n_queries: int = 200, queries: np.ndarray | None = None, seed: int = 123
    ) -> RecallReport:
        """Recall@k of the approximate index against exact search, on ``queries`` or sampled ones."""
        snapshot = self._snapshot()
        approx = self._approx(snapshot, save="try" if snapshot.count >= self.ann_threshold else "no")
        if queries is None:
            queries = ann_lib.sample_queries(snapshot, n_queries, seed)
        queries = normalize_rows(queries, self.dim, "query")
        _, exact_ids = exact_topk(queries, snapshot.blocks(), k)
        with self._lock:
            approx_ids = approx.search(queries, k)[1]
        recall = ann_lib.recall_at_k(approx_ids, exact_ids)
        params = approx.params
        return RecallReport(recall, k, len(queries), params.nlist, params.nprobe, snapshot.count)

    def info(self) -> dict:
        """What the CLI's ``--json`` and a server's status page show about the index."""
        snapshot = self._snapshot()
        saved = ann_lib.load_params(self.path)
        return {
            "index": str(self.path),
            "model_id": self.model_id,
            "model": self.model_spec,
            "dim": self.dim,
            "root": str(self.root) if self.root else None,
            "images": snapshot.count,
            "segments": len(snapshot.segments),
            "approximate": saved,
            "ann_threshold": self.ann_threshold,
        }


def _update(
    store: Store,
    root: Path,
    embedder: ImageEmbedder,
    batch_size: int,
    workers: int,
    commit_every: int,
    model_spec: str | None = None,
) -> UpdateReport:
    """The body of ``ImageIndex.update``, run with the write lock held."""
    store.clean_orphans()
    ann_lib.remove_stale_files(store.folder)
    scan = scan_images(root, exclude=[store.folder])
    if not scan.files:
        unlisted = f"; {len(scan.skipped)} skipped, e.g. {scan.skipped[0]}" if scan.skipped else ""
        raise CaptchalabError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}){unlisted}")
    _check_root(store, root, model_spec)
    report, jobs = _plan(store, scan.files)
    report.skipped[:0] = scan.skipped
    pending = _Pending(store, commit_every)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="index-read") if workers > 1 else None
    try:
        for batch in load_batches(root, track(jobs, len(jobs), "indexing images"), batch_size, pool):
            fresh = [item.image for item in batch if item.image is not None]
            pending.add(batch, embed_images_checked(embedder, fresh) if fresh else None, report)
    except BaseException:
        pending.flush()  # keep finished work, e.g. on Ctrl-C
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    pending.flush()
    store.compact()
    return report


def _check_root(store: Store, root: Path, model_spec: str | None = None) -> None:
    """Record ``root`` as the indexed folder. Another folder is refused, unless the index lives inside the folder
    it indexes at the same place as before: then the folder was moved or renamed and the index follows it."""
    known_root = store.get_info("root")
    try:
        inside = store.folder.resolve().relative_to(root).as_posix()
    except ValueError:
        inside = None
    if known_root and known_root != str(root) and store.count():
        if inside is None or inside != store.get_info("index_at", INDEX_NAME):
            raise CaptchalabError(
                f"{store.folder}: this index holds images of {known_root}, not {root}; use another index"
            )
        log.warning("%s: the indexed folder moved from %s to %s; the index follows it", store.folder, known_root, root)
    with store.transaction():
        store.set_info("root", str(root))
        store.set_info("index_at", inside)  # where the index sits inside the folder (None: outside it)
        if model_spec is not None:
            store.set_info("model_spec", model_spec)


def _plan(store: Store, files: list[FileStat]) -> tuple[UpdateReport, list[Job]]:
    """Sort files into unchanged (stat matches), to read, and removed; commit the removals."""
    known, known_skipped = store.known_files(), store.known_skipped()
    report, jobs, stale = UpdateReport(), [], []
    for stat in files:
        old = known.get(stat.path)
        bad = known_skipped.get(stat.path)
        if bad is not None and bad[:2] == (stat.size, stat.mtime_ns):
            report.skipped.append(bad[2])  # still the same unreadable file: not read again
            if old is not None:
                stale.append(stat.path)  # its vector is of content it no longer has
        elif old is not None and (old.size, old.mtime_ns) == (stat.size, stat.mtime_ns):
            report.unchanged += 1
        else:
            jobs.append(Job(stat, old.sha256 if old else None))
    on_disk = {stat.path for stat in files}
    removed = [path for path in known if path not in on_disk]
    store.remove(removed + stale, [path for path in known_skipped if path not in on_disk])
    report.removed = len(removed)
    return report, jobs


def _duplicates_exact(vectors: np.ndarray, rows: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    """All pairs i < j over threshold, by chunked Gram matrix."""
    found: dict[tuple[int, int], float] = {}
    step = max(1, SCORE_BUDGET_BYTES // (4 * len(vectors)))
    for start in range(0, len(vectors), step):
        scores = vectors[start : start + step] @ vectors.T  # (c, N)
        i, j = np.nonzero(scores >= threshold)
        keep = j > i + start
        for a, b, s in zip(rows[i[keep] + start], rows[j[keep]], scores[i[keep], j[keep]]):
            found[(int(min(a, b)), int(max(a, b)))] = float(s)
    return found


def update_index(
    index_path: str | os.PathLike, root: str | os.PathLike, embedder: ImageEmbedder, **options: object
) -> UpdateReport:
    """Create the index if needed and bring it up to date with ``root`` (see ``ImageIndex.update``)."""
    with ImageIndex.open(index_path, embedder, create=True) as index:
        return index.update(root, embedder, **options)  # type: ignore[arg-type]
