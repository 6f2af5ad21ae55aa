"""Public API for picture grids (torch-free): ``solve`` one grid, ``evaluate`` a bundle on generated grids.

>>> from captchalab import grid
>>> grid.solve("shot.png", "猫").positions        # doctest: +SKIP
[1, 5]
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.imaging import ImageInput
from captchalab.progress import track
from captchalab.runtime.grid import GridAnswer, GridSolver, load_solver

__all__ = ["GridAnswer", "GridSolver", "evaluate", "load_solver", "read_grid_manifest", "solve"]
log = logging.getLogger(__name__)


def solve(
    image: ImageInput | None,
    prompt: str,
    layout: str = "auto",
    model: str | os.PathLike = "default",
    cells: Sequence[ImageInput] | None = None,
    rule: str | None = None,
) -> GridAnswer:
    """Which cells of the grid ``image`` (or of ``cells``, row-major) show ``prompt``; positions are 1-based."""
    return load_solver(model).solve(prompt, image=image, cells=cells, layout=layout, rule=rule)


def read_grid_manifest(grids: str | Path) -> tuple[Path, list[dict]]:
    """``grids`` = a folder with manifest.jsonl (as ``grid generate`` writes) or the JSONL itself."""
    path = Path(grids)
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    if not manifest.is_file():
        raise CaptchalabError(f"{grids}: no manifest.jsonl of labelled grids here (make one with `grid generate`)")
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CaptchalabError(f"{manifest}: not UTF-8 text") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaptchalabError(f"{manifest}:{number}: not JSON ({exc.msg})") from None
        problem = _record_problem(row)
        if problem:
            raise CaptchalabError(f"{manifest}:{number}: {problem}")
        rows.append(row)
    if not rows:
        raise CaptchalabError(f"{manifest}: no grids listed")
    return manifest.parent, rows


GRID_CELLS = {"2x3": 6, "3x2": 6, "3x3": 9}


def _record_problem(row: object) -> str | None:
    """What is wrong with one manifest record (None when it is a grid record we can score)."""
    if not isinstance(row, dict) or not all(key in row for key in ("image", "prompt", "positions")):
        return "not a grid record with image, prompt and positions"
    if not isinstance(row["image"], str) or not row["image"].strip():
        return f"image {row['image']!r} is not a file name"
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        return f"prompt {row['prompt']!r} is not a word"
    layout = row.get("layout", "auto")
    if layout != "auto" and layout not in GRID_CELLS:
        return f"layout {layout!r} is not one of auto, {', '.join(GRID_CELLS)}"
    positions, cells = row["positions"], GRID_CELLS.get(layout, 9)
    if not isinstance(positions, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        return f"positions {positions!r} are not a list of cell numbers"
    if any(not 1 <= p <= cells for p in positions) or len(set(positions)) != len(positions):
        return f"positions {positions} do not fit a grid of {cells} cells (1-based, each once)"
    return None


def matching_design(row: dict) -> str | None:
    """The art style of a generated grid's matching cells (``cell_styles`` of its manifest row; 'mixed' when they
    differ), None when the manifest does not record styles."""
    styles, positions = row.get("cell_styles"), row["positions"]
    if not styles or not positions or len(styles) < max(positions):
        return None
    found = {styles[p - 1] for p in positions}
    return found.pop() if len(found) == 1 else "mixed"


FAILURE_KINDS = ("too_many", "too_few", "swapped")


def failure_kind(truth: set[int], guess: set[int]) -> str:
    """How a wrong answer is wrong: every right cell and some more (too_many), only right cells but not all
    (too_few), or some cells missed and others picked instead (swapped)."""
    if guess > truth:
        return "too_many"
    if guess < truth:
        return "too_few"
    return "swapped"


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _solve_record(solver: GridSolver, root: Path, row: dict, rule: str | None) -> tuple[GridAnswer | None, str | None]:
    """(answer, None) for one manifest record, or (None, what went wrong) when its grid cannot be read or split, or
    when its positions do not fit the layout the grid turned out to have (a ``layout: auto`` record)."""
    image = root / row["image"]
    try:
        answer = solver.solve(row["prompt"], image=image, layout=row.get("layout", "auto"), rule=rule)
    except CaptchalabError as exc:
        return None, str(exc)
    cells = len(answer.probabilities)
    if max(row["positions"], default=0) > cells:
        return None, (
            f"{image}: the manifest lists positions {row['positions']}, but the grid splits as {answer.layout} "
            f"({cells} cells); give its layout in the manifest"
        )
    return answer, None


def evaluate(model: str | os.PathLike, grids: str | Path, rule: str | None = None, limit: int | None = None) -> dict:
    """Solve rate (every cell right), cell precision/recall/F1, per-prompt table and latency of a bundle."""
    if limit is not None and limit < 1:
        raise CaptchalabError(f"--limit must be at least 1, got {limit}")
    root, rows = read_grid_manifest(grids)
    rows = rows[:limit] if limit else rows
    solver = load_solver(model)
    if rule is not None and rule not in solver.rules:
        raise CaptchalabError(f"unknown rule {rule!r}: use one of {', '.join(solver.rules)}")
    per_prompt: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_design: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # art style of the matching cells
    tp = fp = fn = solved = unsure = sure_solved = 0
    failure_kinds = dict.fromkeys(FAILURE_KINDS, 0)
    seconds, failures, errors = [], [], []
    for row in track(rows, len(rows), "solving grids"):
        started = time.perf_counter()
        answer, error = _solve_record(solver, root, row, rule)
        if error is not None:  # one unreadable or unsplittable grid is a failure, not the end of the eval
            errors.append(error)
            fn, ok = fn + len(row["positions"]), False
        else:
            seconds.append(time.perf_counter() - started)
            truth, guess = set(row["positions"]), set(answer.positions)
            tp, fp, fn = tp + len(truth & guess), fp + len(guess - truth), fn + len(truth - guess)
            ok = truth == guess
            solved, unsure = solved + ok, unsure + answer.unsure
            sure_solved += ok and not answer.unsure
            if not ok:
                failure_kinds[failure_kind(truth, guess)] += 1
            if not ok and len(failures) < 20:
                failures.append({"image": row["image"], "prompt": row["prompt"], "truth": sorted(truth),
                                 "answer": answer.positions, "probabilities": answer.probabilities})  # fmt: skip
        for table, key in ((per_prompt, row["prompt"]), (per_design, matching_design(row))):
            if key is not None:
                table[key][0] += ok
                table[key][1] += 1
    times = seconds or [0.0]
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "model": str(model),
        "grids": len(rows),
        "solve_rate": solved / len(rows),
        "cell_precision": precision,
        "cell_recall": recall,
        "cell_f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "unsure_rate": unsure / len(rows),
        # what `unsure` is worth: the solve rate of the answers given as sure, and the share of the wrong answers
        # that were flagged (a caller can ask for a new captcha instead of sending those)
        # (None when there is no sure answer / no wrong answer)
        "solve_rate_when_sure": _share(sure_solved, len(seconds) - unsure),
        "wrong_flagged_unsure": _share(unsure - (solved - sure_solved), len(seconds) - solved),
        "failure_kinds": failure_kinds,  # of the answered grids not solved; unreadable ones are under "errors"
        "rule": rule or solver.rule,
        "latency_ms": {
            "median": 1000 * float(np.median(times)),
            "p95": 1000 * float(np.percentile(times, 95)),
        },
        "per_prompt": {p: {"solved": s, "grids": n, "solve_rate": s / n} for p, (s, n) in sorted(per_prompt.items())},
        # only for generated grids (their manifest names each cell's style); empty for hand-labelled ones
        "per_design": {d: {"solved": s, "grids": n, "solve_rate": s / n} for d, (s, n) in sorted(per_design.items())},
        "failures": failures,
        "errors": errors,
    }
