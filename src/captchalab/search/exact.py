"""Exact cosine top-k: a chunked matrix product over unit float32 vectors, so no (Q, N) score matrix is ever built."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SCORE_BUDGET_BYTES = 64 << 20  # largest (queries, rows) float32 score block held at once
QUERY_CHUNK = 1024


def _merge_topk(
    best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest of (best, new) per query row. best_*: (Q, k); scores: (Q, c); ids: (c,)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k) unordered
        scores = np.take_along_axis(scores, part, axis=1)
        ids = ids[part]
    else:
        ids = np.broadcast_to(ids, scores.shape)
    all_s = np.concatenate([best_s, scores], axis=1)  # (Q, <=2k)
    all_i = np.concatenate([best_i, ids], axis=1)
    keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(all_s, keep, axis=1), np.take_along_axis(all_i, keep, axis=1)


def exact_topk(
    queries: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of ``queries`` (Q, dim) against row blocks.

    Args:
        queries: unit float32 query vectors.
        blocks: (vectors (c, dim), ids (c,)) pairs; an id of -1 marks a deleted row that never wins.
        k: how many hits per query.

    Returns:
        scores (Q, k) float32 best first, and ids (Q, k) int64; -1 / -inf pad when fewer than k rows exist.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_q = len(queries)
    best_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    best_i = np.full((n_q, k), -1, dtype=np.int64)
    rows_per_step = max(256, SCORE_BUDGET_BYTES // (4 * min(max(n_q, 1), QUERY_CHUNK)))
    for vectors, ids in blocks:
        for start in range(0, len(ids), rows_per_step):
            chunk = vectors[start : start + rows_per_step]  # (c, dim), a view of the memory map
            chunk_ids = ids[start : start + rows_per_step]
            dead = chunk_ids < 0
            for q0 in range(0, n_q, QUERY_CHUNK):
                scores = queries[q0 : q0 + QUERY_CHUNK] @ chunk.T  # (q, c)
                if dead.any():
                    scores[:, dead] = -np.inf
                best_s[q0 : q0 + QUERY_CHUNK], best_i[q0 : q0 + QUERY_CHUNK] = _merge_topk(
                    best_s[q0 : q0 + QUERY_CHUNK], best_i[q0 : q0 + QUERY_CHUNK], scores, chunk_ids, k
                )
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s = np.take_along_axis(best_s, order, axis=1)
    best_i = np.take_along_axis(best_i, order, axis=1)
    best_i[~np.isfinite(best_s)] = -1
    return best_s, best_i
