"""numpy's BLAS kept to one thread around the small matrix products a solver does between two model calls.

A 9-cell grid's products (cells x 400 word vectors, cells x 3,200 pictures) take well under a millisecond on one
thread. Left to OpenBLAS's default pool, its worker threads wake for them and then busy-wait, on the cores that the
next onnxruntime call needs: on 2 busy cores a grid took 31 instead of 13.5 ms (median). On an idle machine the
two BLAS threads are 0.6-0.9 ms faster per grid, a price worth paying for not doubling under load (`python
benchmarks/ab.py blas`; benchmarks/results/ab-blas.json and ab-blas-busy.json). threadpoolctl changes the limit
only inside the ``with`` block; numpy elsewhere in the process is untouched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_controller = None
_lock = threading.Lock()


@contextlib.contextmanager
def blas_threads(limit: int | None) -> Iterator[None]:
    """Within the block, BLAS uses at most ``limit`` threads (``None``: as configured)."""
    if limit is None:
        yield
        return
    global _controller
    with _lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()  # scans the loaded BLAS libraries once (numpy's is loaded by now)
    with _controller.limit(limits=limit, user_api="blas"):
        yield
