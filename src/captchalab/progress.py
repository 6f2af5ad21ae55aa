"""Progress bars for long steps, shared by every command (rich on a terminal; elsewhere, e.g. under nohup or in a log
file, one log line a minute for steps that take that long)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
log = logging.getLogger(__name__)
LOG_EVERY_S = 60.0


def progress_enabled() -> bool:
    """Bars are drawn on an interactive stderr unless CAPTCHALAB_PROGRESS=0."""
    setting = os.environ.get("CAPTCHALAB_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(
    items: Iterable[T], total: int | None = None, description: str = "working", disable: bool = False
) -> Iterator[T]:
    """Yield from ``items`` while drawing a progress bar with count, elapsed and remaining time; without a terminal,
    log that every minute instead."""
    if disable:
        yield from items
        return
    if not progress_enabled():
        yield from _logged(items, total, description)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _logged(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    """Yield from ``items``, logging the count, elapsed and remaining time at most once every LOG_EVERY_S."""
    started = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last < LOG_EVERY_S:
            continue
        last = now
        elapsed = now - started
        if total:
            left = elapsed * (total - done) / done
            log.info("%s: %d/%d (%.0f %%), %s elapsed, about %s left", description, done, total, 100 * done / total,
                     _minutes(elapsed), _minutes(left))  # fmt: skip
        else:
            log.info("%s: %d done, %s elapsed", description, done, _minutes(elapsed))


def _minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 90 else f"{whole} s"
