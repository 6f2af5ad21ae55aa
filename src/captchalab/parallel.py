"""Work spread over processes that a user can stop with Ctrl-C at any moment: no worker tracebacks, no hang, no
queue of jobs run to the end after the interrupt."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _ignore_interrupt(initializer: Callable[..., None] | None, *initargs: Any) -> None:
    """Worker start-up: Ctrl-C is the main process's to handle (a worker stopped by it in the middle of a queue
    operation prints a traceback and can leave the pool waiting for ever); then the caller's initializer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _submitting, now ignored
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def _submitting() -> Iterator[None]:
    """Hold Ctrl-C back while jobs are submitted: that is when workers are forked, and an interrupt landing inside
    a fork (in the parent or in the new worker) can leave a lock taken for ever; it is delivered right after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def pool_map(
    function: Callable[[T], R],
    jobs: Iterable[T],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    chunksize: int = 64,
) -> Iterator[R]:
    """``function`` over ``jobs`` in ``workers`` processes, results in order. Jobs are handed out a few chunks per
    worker at a time (never all at once, so a huge job list is not held in memory), and on Ctrl-C or any error the
    jobs not yet started are dropped instead of run to the end."""
    pool = ProcessPoolExecutor(workers, initializer=_ignore_interrupt, initargs=(initializer, *initargs))
    jobs = iter(jobs)
    try:
        while block := list(itertools.islice(jobs, chunksize * workers * 4)):
            with _submitting():
                results = pool.map(function, block, chunksize=chunksize)
            yield from results
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
