"""Progress bars for long steps, shared by every command (rich; quiet when not on a terminal)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars are drawn on an interactive stderr unless CAPTCHALAB_PROGRESS=0."""
    setting = os.environ.get("CAPTCHALAB_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(
    items: Iterable[T], total: int | None = None, description: str = "working", disable: bool = False
) -> Iterator[T]:
    """Yield from ``items`` while drawing a progress bar with count, elapsed and remaining time."""
    if disable or not progress_enabled():
        yield from items
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
