"""Progress: bars on a terminal, a log line a minute elsewhere (nohup, log files, CI)."""

from __future__ import annotations

import itertools
import logging

import pytest

from captchalab import progress


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """No terminal, and a clock that moves 25 s each time it is read."""
    monkeypatch.setenv("CAPTCHALAB_PROGRESS", "0")
    ticks = itertools.count(0.0, 25.0)
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(ticks))


def test_without_a_terminal_a_line_every_minute(clock: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="captchalab.progress"):
        assert list(progress.track(range(10), 10, "caching train")) == list(range(10))
    lines = [r.getMessage() for r in caplog.records]
    # read at 0 (start), then 25, 50, 75 (logged: 75 s since the start), 100, 125, 150 (logged), ...
    assert lines == [
        "caching train: 3/10 (30 %), 75 s elapsed, about 2 min 55 s left",
        "caching train: 6/10 (60 %), 2 min 30 s elapsed, about 1 min 40 s left",
        "caching train: 9/10 (90 %), 3 min 45 s elapsed, about 25 s left",
    ]


def test_unknown_total_and_disable(clock: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="captchalab.progress"):
        assert list(progress.track(iter("abcd"), None, "reading")) == list("abcd")
        assert list(progress.track(range(10), 10, "quiet", disable=True)) == list(range(10))
    assert [r.getMessage() for r in caplog.records] == ["reading: 3 done, 75 s elapsed"]


def test_short_steps_log_nothing(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CAPTCHALAB_PROGRESS", "0")
    with caplog.at_level(logging.INFO, logger="captchalab.progress"):
        assert sum(progress.track(range(1000), 1000, "fast")) == 499500
    assert not caplog.records
