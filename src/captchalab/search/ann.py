"""The approximate index for large collections: FAISS IVF-Flat over inner products (= cosine on unit vectors).

Why IVF-Flat: it trains in seconds to minutes on 2 CPU cores even at 1M x 512 (HNSW takes far longer to build),
keeps exact vectors (no quantisation error), and supports adding and removing ids, so an update refreshes it
instead of rebuilding. ``nprobe`` is tuned after each build: twice the smallest power of two whose recall@k
against exact search reaches ``TARGET_RECALL`` on sampled queries (database vectors plus noise, from
near-duplicates to far-off, text-like queries). faiss is imported only here, and only when needed.

Files: ``ann-<token>.faiss`` (the index, ids = row ids), ``ann-<token>.rows.npy`` (the sorted row ids it holds),
and ``ann.json`` naming them plus its parameters, replaced atomically after both are written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.search.exact import exact_topk
from captchalab.search.store import Snapshot, write_json_atomic

log = logging.getLogger(__name__)

ANN_JSON = "ann.json"
TARGET_RECALL = 0.99
TUNE_K = 10
TUNE_QUERIES = 500
SAFETY_FACTOR = 2  # nprobe = twice what the sampled queries needed
NOISE_LEVELS = (0.3, 1.0, 3.0)  # query = database vector + noise: near-duplicates up to far-off (text-like) queries
TRAIN_POINTS_PER_LIST = 64
REBUILD_FACTOR = 2.0  # retrain when the collection grew or shrank this much since training


def _faiss():
    try:
        import faiss
    except ImportError:
        raise CaptchalabError("approximate search needs the faiss-cpu package: pip install faiss-cpu") from None
    return faiss


def choose_nlist(n: int) -> int:
    """About 2 sqrt(n) lists, with at least 39 training points per list (faiss's own minimum)."""
    return max(1, min(int(2 * math.sqrt(n)), n // 39))


@dataclass
class AnnParams:
    generation: int
    n: int
    trained_n: int
    nlist: int
    nprobe: int
    recall: float | None
    k: int = TUNE_K


@dataclass
class AnnIndex:
    index: object  # faiss.IndexIVFFlat
    rows: np.ndarray  # sorted int64 row ids held
    params: AnnParams

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) unit queries -> scores (Q, k) and row ids (Q, k), -1 where fewer than k were found."""
        self.index.nprobe = int(nprobe or self.params.nprobe)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        scores[ids < 0] = -np.inf
        return scores, ids


def sample_queries(snapshot: Snapshot, n: int, seed: int = 0) -> np.ndarray:
    """Database vectors plus noise of several strengths, re-normalised: realistic image and text-like queries."""
    rng = np.random.default_rng(seed)
    all_rows = snapshot.live_rows()
    if len(all_rows) == 0:
        raise CaptchalabError("the index is empty: nothing to query")
    vectors, _ = snapshot.gather(np.sort(rng.choice(all_rows, size=min(n, len(all_rows)), replace=False)))
    dim = vectors.shape[1]
    levels = np.resize(np.array(NOISE_LEVELS, dtype=np.float32), len(vectors))[:, None]
    noisy = vectors + levels * rng.standard_normal(vectors.shape).astype(np.float32) / np.float32(math.sqrt(dim))
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids (ignoring -1 padding) that the approximate top-k also returned."""
    hits, total = 0, 0
    for got, want in zip(approx_ids, exact_ids):
        want = want[want >= 0]
        hits += len(np.intersect1d(got, want))
        total += len(want)
    return hits / total if total else 1.0


def tune_nprobe(ann: AnnIndex, queries: np.ndarray, exact_ids: np.ndarray, target: float) -> tuple[int, float]:
    """Twice the smallest power-of-two nprobe whose recall reaches ``target`` (a margin for queries unlike the
    sampled ones), capped at nlist; and the recall measured at the returned nprobe."""
    k = exact_ids.shape[1]
    nprobe, nlist = 1, ann.params.nlist
    while nprobe < nlist and recall_at_k(ann.search(queries, k, nprobe)[1], exact_ids) < target:
        nprobe = min(nprobe * 2, nlist)
    nprobe = min(nprobe * SAFETY_FACTOR, nlist)
    return nprobe, recall_at_k(ann.search(queries, k, nprobe)[1], exact_ids)


def build(snapshot: Snapshot, seed: int = 0, target: float = TARGET_RECALL) -> AnnIndex:
    """Train an IVF-Flat index on a sample of the live vectors, add them all, tune nprobe."""
    faiss = _faiss()
    n = snapshot.count
    if n == 0:
        raise CaptchalabError("the index is empty: nothing to build an approximate index from")
    dim = snapshot.segments[0].vectors.shape[1]
    nlist = choose_nlist(n)
    rng = np.random.default_rng(seed)
    all_rows = snapshot.live_rows()
    sample, _ = snapshot.gather(
        np.sort(rng.choice(all_rows, size=min(n, nlist * TRAIN_POINTS_PER_LIST), replace=False))
    )
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # centroids on the unit sphere, as the data
    index.cp.seed = seed
    index.train(sample)
    for vectors, rows in snapshot.blocks():
        keep = rows >= 0
        if keep.any():
            index.add_with_ids(np.ascontiguousarray(vectors[keep]), rows[keep])
    ann = AnnIndex(index, all_rows, AnnParams(snapshot.generation, n, n, nlist, nlist, None))
    queries = sample_queries(snapshot, TUNE_QUERIES, seed + 1)
    _, exact_ids = exact_topk(queries, snapshot.blocks(), min(TUNE_K, n))
    ann.params.nprobe, ann.params.recall = tune_nprobe(ann, queries, exact_ids, target)
    log.info(
        "built IVF-Flat: %d vectors, nlist %d, nprobe %d, recall@%d %.4f",
        n,
        nlist,
        ann.params.nprobe,
        TUNE_K,
        ann.params.recall,
    )
    return ann


def refresh(ann: AnnIndex, snapshot: Snapshot, seed: int = 0) -> AnnIndex:
    """Bring ``ann`` up to ``snapshot``: remove and add the differing rows, or rebuild if the size moved a lot."""
    live = snapshot.live_rows()
    trained = ann.params.trained_n
    if not trained / REBUILD_FACTOR <= len(live) <= trained * REBUILD_FACTOR:
        return build(snapshot, seed)
    removed = np.setdiff1d(ann.rows, live, assume_unique=True)
    added = np.setdiff1d(live, ann.rows, assume_unique=True)
    if len(removed):
        ann.index.remove_ids(removed)
    if len(added):
        vectors, rows = snapshot.gather(added)
        ann.index.add_with_ids(vectors, rows)
    ann.rows = live
    ann.params.generation, ann.params.n = snapshot.generation, len(live)
    log.info("refreshed the approximate index: +%d -%d rows", len(added), len(removed))
    return ann


def save(ann: AnnIndex, folder: Path) -> None:
    faiss = _faiss()
    token = uuid.uuid4().hex
    index_name, rows_name = f"ann-{token}.faiss", f"ann-{token}.rows.npy"
    faiss.write_index(ann.index, str(folder / index_name))
    with open(folder / rows_name, "wb") as handle:
        np.save(handle, ann.rows)
        handle.flush()
        os.fsync(handle.fileno())
    with open(folder / index_name, "rb") as handle:
        os.fsync(handle.fileno())
    write_json_atomic(folder / ANN_JSON, {"index": index_name, "rows": rows_name, **asdict(ann.params)})
    remove_stale_files(folder)


def load(folder: Path) -> AnnIndex | None:
    """The saved approximate index, or None when there is none (or it vanished under a concurrent writer)."""
    pointer = folder / ANN_JSON
    if not pointer.is_file():
        return None
    faiss = _faiss()
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
        index = faiss.read_index(str(folder / data.pop("index")))
        rows = np.load(folder / data.pop("rows"))
        return AnnIndex(index, rows, AnnParams(**data))
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        log.warning("%s: ignoring unreadable approximate index (%s); it will be rebuilt", pointer, exc)
        return None


def remove_stale_files(folder: Path) -> None:
    """Delete ann-* files that ann.json does not name (call with the write lock held)."""
    try:
        data = json.loads((folder / ANN_JSON).read_text(encoding="utf-8"))
        keep = {data["index"], data["rows"]}
    except (OSError, ValueError, KeyError):
        keep = set()
    for path in folder.glob("ann-*"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def load_params(folder: Path) -> dict | None:
    """The saved approximate index's parameters (nlist, nprobe, measured recall, ...), without loading it."""
    try:
        data = json.loads((folder / ANN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {key: value for key, value in data.items() if key not in ("index", "rows")}
