"""Picture-grid geometry with numpy + Pillow only (no OCR): find the grid in a screenshot, guess its layout and cut
it into equal cells, with uniform gutters and an outer border removed.

A *uniform line* is a pixel row (or column) whose pixels nearly all have one colour; gutters and borders are runs of
such lines. Cells are fitted as ``rows x cols`` equal boxes whose separators all fall on uniform lines.

Limits (by design, kept simple):
- A cell whose own edge is a band of flat colour across the whole row/column of cells (e.g. every picture in a row
  has a white background at the top) is indistinguishable from a gutter: up to ``max_separator`` such lines are
  trimmed with the gutter, so such cells come back slightly tighter than drawn, still equal in size and centred.
- Layout mismatches are detected through gutters. A grid drawn without gutters splits into any layout without error.
- ``locate_grid`` assumes a plain-coloured UI around the grid (the colour of the screenshot's outer frame). See its
  docstring.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from captchalab.errors import CaptchalabError

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive, as PIL's crop takes it

# A pixel within UNIFORM_TOL of its line's median colour (every channel) has "the line's colour"; a line is uniform
# when at least UNIFORM_FRACTION of its pixels do. Tolerant of JPEG noise and anti-aliased edges next to a gutter.
UNIFORM_TOL = 16
UNIFORM_FRACTION = 0.97
LAYOUTS = ((3, 3), (2, 3), (3, 2))  # (rows, cols): nine-grid, six-grid (2 rows of 3), six-grid on its side


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)


def uniform_lines(pixels: np.ndarray, axis: int) -> np.ndarray:
    """(H, W, 3) pixels -> bool per row (axis=0) or per column (axis=1): is that line one flat colour?"""
    # (L, N, 3): L lines, every 2nd pixel along each (a flat line is flat at any sampling; half the work)
    lines = (pixels if axis == 0 else pixels.transpose(1, 0, 2))[:, ::2]
    n = lines.shape[1]
    # The line's colour: per-channel median of ~16 evenly spaced pixels (a full median is 5x slower). Any estimate
    # is safe: the test below still needs UNIFORM_FRACTION of all sampled pixels to lie within tolerance of it.
    sample = np.sort(lines[:, :: max(1, n // 15)], axis=1)
    colour = sample[:, sample.shape[1] // 2][:, None, :]  # (L, 1, 3)
    diff = np.abs(lines - colour)
    far = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) > UNIFORM_TOL  # (L, N)
    return np.count_nonzero(far, axis=1) <= (1 - UNIFORM_FRACTION) * n


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


@dataclass(frozen=True)
class AxisFit:
    """Equal cells along one axis: ``n`` cells of (fractional) size ``cell`` separated by ``gutter`` lines,
    after ``start`` border lines; ``conflict`` is a gutter-like uniform run found inside a cell, if any."""

    n: int
    start: int
    gutter: int
    end_trim: int
    cell: float
    conflict: tuple[int, int] | None

    def spans(self) -> list[tuple[int, int]]:
        """[begin, end) of each cell."""
        out = []
        for k in range(self.n):
            begin = round(self.start + k * (self.cell + self.gutter))
            out.append((begin, round(self.start + k * (self.cell + self.gutter) + self.cell)))
        return out


MAX_SEPARATOR = 96  # px: the search below is cubic in this, so a huge or very thin image must not widen it further
MIN_CELL = 4  # px: the narrowest cell a split may make


def max_separator(length: int, n: int) -> int:
    """The widest border or gutter considered (px): at least 12, more for large cells, never over MAX_SEPARATOR."""
    return min(MAX_SEPARATOR, max(12, length // (10 * n)))


def fit_axis(uniform: np.ndarray, n: int) -> AxisFit:
    """Fit ``n`` equal cells to one axis given its uniform-line mask.

    Among borders ``t``, ``b`` and gutter ``g`` (each at most ``max_separator``) whose lines are all uniform, take the
    one that removes the most lines (ties: the most symmetric borders), unless it leaves a gutter-like run inside a
    cell and another gutter width does not; without a gutter, borders are no wider than the flat run at the other
    edge. A gutter-free split always fits (raises only when cells would be under 4 px); ``conflict`` reports a
    gutter-like run that the fit left inside a cell (a layout mismatch).
    """
    length = len(uniform)
    if length < MIN_CELL * n:
        raise CaptchalabError(f"{length} px is too small for {n} cells")
    limit = max_separator(length, n)
    bad = np.concatenate([[0], np.cumsum(~uniform)])  # bad[j] - bad[i]: non-uniform lines in [i, j)
    lead = next((i for i, u in enumerate(uniform) if not u), length)
    trail = next((i for i, u in enumerate(uniform[::-1]) if not u), length)
    # (G, T, B): every gutter width and border pair at once
    g, t, b = np.meshgrid(
        np.arange(limit + 1 if n > 1 else 1),
        np.arange(min(lead, limit) + 1),
        np.arange(min(trail, limit) + 1),
        indexing="ij",
    )
    cell = (length - t - b - (n - 1) * g) / n
    ok = cell >= MIN_CELL
    # Without gutters nothing pins the cells but the borders, and a frame is drawn on both sides: flat lines at one
    # edge only (a flat picture background there) are picture, so a gutter-free fit's borders are no wider than the
    # flat run at the other edge.
    frame = min(lead, trail)
    ok &= (g > 0) | ((t <= frame) & (b <= frame))
    for k in range(1, n):
        s = np.clip(np.rint(t + k * cell + (k - 1) * g).astype(np.int64), 0, length - g)
        ok &= bad[s + g] == bad[s]
    if not ok.any():
        raise CaptchalabError(f"{length} px is too small for {n} cells")
    # Most lines removed first, then the most symmetric borders; ties go to the narrowest gutter (argmax takes the
    # first), the fewest top lines. |t - b| <= limit < 2 * (limit + 1), so the score orders exactly that way.
    score = np.where(ok, (t + b + (n - 1) * g) * (limit + 1) * 2 - np.abs(t - b), -1)
    # The best fit of each gutter width (axis 0 of the grids), best first. A lower-scoring width can be the right
    # one: a flat band of picture content next to the border (say, three cells sharing a background) makes a wide
    # border without gutters remove more lines than the real 3-px gutters, and leaves those gutters inside cells.
    per_gutter = score.reshape(len(score), -1)
    widths = [int(w) for w in np.argsort(-per_gutter.max(axis=1), kind="stable") if per_gutter[w].max() >= 0]
    first = None
    for width in widths:
        t_i, b_i = np.unravel_index(int(np.argmax(per_gutter[width])), score.shape[1:])
        fit = AxisFit(n, int(t_i), width, int(b_i), float(cell[width, t_i, b_i]), None)
        fit = replace(fit, conflict=_conflict(uniform, fit))
        if fit.conflict is None:
            return fit
        first = first or fit
    return first


def _conflict(uniform: np.ndarray, fit: AxisFit) -> tuple[int, int] | None:
    """A uniform run of at least max(2, gutter) lines strictly inside a fitted cell: a gutter the fit did not
    expect, so the image is not this many cells along this axis."""
    need = max(2, fit.gutter)
    for begin, end in fit.spans():
        for a, b in _runs(uniform[begin:end]):
            if a > 0 and begin + b < end and b - a >= need:
                return begin + a, begin + b
    return None


@dataclass(frozen=True)
class GridLines:
    """A grid image's pixels and which of its rows and columns are flat: computed once, shared by the layout guess
    and the split."""

    pixels: np.ndarray  # (H, W, 3) int16
    uniform_rows: np.ndarray  # (H,) bool
    uniform_cols: np.ndarray  # (W,) bool

    @classmethod
    def of(cls, grid: Image.Image) -> GridLines:
        pixels = _rgb(grid)
        return cls(pixels, uniform_lines(pixels, 0), uniform_lines(pixels, 1))


def _fit(lines: GridLines, rows: int, cols: int) -> tuple[AxisFit, AxisFit]:
    fits = fit_axis(lines.uniform_rows, rows), fit_axis(lines.uniform_cols, cols)
    return tuple(_drop_foreign_conflict(lines.pixels, axis, fit) for axis, fit in enumerate(fits))  # type: ignore[return-value]


def _line_colour(pixels: np.ndarray, axis: int, begin: int, end: int) -> np.ndarray:
    lines = pixels[begin:end] if axis == 0 else pixels[:, begin:end].transpose(1, 0, 2)
    return np.median(lines.reshape(-1, 3), axis=0)


def _drop_foreign_conflict(pixels: np.ndarray, axis: int, fit: AxisFit) -> AxisFit:
    """A flat band inside cells whose colour differs from the grid's gutters is picture content, not a gutter."""
    if fit.conflict is None or fit.gutter == 0:
        return fit
    first_gutter = round(fit.start + fit.cell)
    gutter = _line_colour(pixels, axis, first_gutter, first_gutter + fit.gutter)
    band = _line_colour(pixels, axis, *fit.conflict)
    if np.abs(gutter - band).max() <= UNIFORM_TOL:
        return fit
    return AxisFit(fit.n, fit.start, fit.gutter, fit.end_trim, fit.cell, None)


def cell_boxes(grid: Image.Image, rows: int, cols: int, lines: GridLines | None = None) -> list[Box]:
    """The (left, top, right, bottom) box of each cell, row-major; see ``split_cells``."""
    if rows < 1 or cols < 1:
        raise CaptchalabError(f"layout {rows}x{cols}: rows and columns must be at least 1")
    width, height = grid.size
    try:
        fy, fx = _fit(lines or GridLines.of(grid), rows, cols)
    except CaptchalabError as exc:
        raise CaptchalabError(f"grid image {width}x{height} does not divide into {rows}x{cols} cells: {exc}") from None
    for fit, axis, along in ((fy, "y", "rows"), (fx, "x", "columns")):
        if fit.conflict:
            a, b = fit.conflict
            raise CaptchalabError(
                f"grid image {width}x{height} does not divide into {rows}x{cols} cells (rows x columns): a gutter at "
                f"{axis}={a}..{b - 1} falls inside a cell, so it does not have {fit.n} equal {along}"
            )
    log.debug("grid %dx%d as %dx%d: rows %s, columns %s", width, height, rows, cols, fy, fx)
    return [(x0, y0, x1, y1) for y0, y1 in fy.spans() for x0, x1 in fx.spans()]


def split_cells(grid: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    """Cut a grid image into ``rows * cols`` equal cells, row-major, without its gutters and outer border.

    Gutters and the border are runs of uniform lines (0 to ``max_separator`` px, 12 px for usual sizes); cell sizes
    may differ by one pixel where the size does not divide exactly. Raises CaptchalabError naming the size and layout
    when gutters show the image is not ``rows x cols`` equal cells.
    """
    return split_grid(grid, (rows, cols))[0]


def is_one_colour(pixels: np.ndarray) -> bool:
    """(..., 3) pixels: True when every channel stays within UNIFORM_TOL over the whole image (blank, no picture)."""
    return int(np.ptp(pixels.reshape(-1, 3), axis=0).max()) <= UNIFORM_TOL


def split_grid(grid: Image.Image, shape: tuple[int, int] | None = None) -> tuple[list[Image.Image], tuple[int, int]]:
    """(cells, (rows, cols)): ``split_cells`` with the layout given or, for None, guessed (``guess_layout``); the
    pixels are scanned for flat lines once for both."""
    lines = GridLines.of(grid)
    if is_one_colour(lines.pixels):
        raise CaptchalabError(f"the {grid.width}x{grid.height} image is one flat colour: there are no pictures in it")
    if not _layouts_that_fit(grid, [shape] if shape else LAYOUTS):
        layouts = f"{shape[0]}x{shape[1]}" if shape else "2x3, 3x2 or 3x3"
        raise CaptchalabError(
            f"the {grid.width}x{grid.height} image is too small for a {layouts} grid (cells of at least {MIN_CELL} px)"
        )
    rows, cols = shape or guess_layout(grid, lines)
    return [grid.crop(box) for box in cell_boxes(grid, rows, cols, lines)], (rows, cols)


def _layouts_that_fit(grid: Image.Image, layouts: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (rows, cols) layouts whose cells would be at least MIN_CELL px on both sides of ``grid``."""
    return [(r, c) for r, c in layouts if grid.height >= MIN_CELL * r and grid.width >= MIN_CELL * c]


def _gutter_evidence(uniform: np.ndarray) -> int | None:
    """The number of cells (2 or 3) along an axis that its gutters show, or None when gutters say nothing."""
    votes = []
    for n in (2, 3) if len(uniform) >= 3 * MIN_CELL else (2,):
        fit = fit_axis(uniform, n)
        if fit.gutter > 0 and fit.conflict is None:
            votes.append(n)
    return votes[0] if len(votes) == 1 else None


def guess_layout(grid: Image.Image, lines: GridLines | None = None) -> tuple[int, int]:
    """(rows, cols) of a grid image for ``--layout auto``: 3x3, 2x3 (2 rows of 3) or 3x2.

    Gutters decide where they exist (2 or 3 cells along an axis); otherwise the layout whose cells are closest to
    square wins (a square-ish grid is 3x3, a wide one 2x3, a tall one 3x2).
    """
    lines = lines or GridLines.of(grid)
    uniform_rows, uniform_cols = lines.uniform_rows, lines.uniform_cols
    rows, cols = _gutter_evidence(uniform_rows), _gutter_evidence(uniform_cols)
    if (rows, cols) in LAYOUTS:  # gutters of a 2x2 grid, say, decide nothing: that is not a captcha layout
        log.debug("layout %dx%d from gutters", rows, cols)
        return rows, cols
    # Aspect ratio of the content, borders trimmed (a uniform frame would skew it for small grids).
    height = len(uniform_rows) - sum(_edge_runs(uniform_rows))
    width = len(uniform_cols) - sum(_edge_runs(uniform_cols))
    fitting = _layouts_that_fit(grid, LAYOUTS) or list(LAYOUTS)
    candidates = [(r, c) for r, c in fitting if rows in (None, r) and cols in (None, c)] or fitting
    best = min(candidates, key=lambda rc: abs(math.log((max(width, 1) / rc[1]) / (max(height, 1) / rc[0]))))
    log.debug("layout %dx%d from a %dx%d grid (gutters: rows %s, columns %s)", *best, width, height, rows, cols)
    return best


def _edge_runs(uniform: np.ndarray) -> tuple[int, int]:
    limit = max_separator(len(uniform), 3)
    lead = next((i for i, u in enumerate(uniform) if not u), len(uniform))
    trail = next((i for i, u in enumerate(uniform[::-1]) if not u), len(uniform))
    return min(lead, limit), min(trail, limit)


# --- locating the grid in a screenshot -------------------------------------------------------------------------

BACKGROUND_TOL = 24  # a pixel further than this (any channel) from the UI background colour is content
ACTIVE_FRACTION = 0.02  # a line with at least this fraction of content pixels is part of a band
FLAT_FRACTION = 0.75  # a band whose content is this much one colour is a banner, button or text, not pictures


def _background(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """The UI background colour (median of the outer 3-px frame) and whether that frame is plain."""
    sides = (pixels[:3], pixels[-3:], pixels[:, :3], pixels[:, -3:])
    frame = np.concatenate([side.reshape(-1, 3) for side in sides])
    colour = np.median(frame, axis=0)
    plain = (np.abs(frame - colour) <= BACKGROUND_TOL).all(axis=1).mean() >= 0.6
    return colour.astype(np.int16), bool(plain)


def _flatness(pixels: np.ndarray, content: np.ndarray) -> float:
    """The fraction of content pixels within UNIFORM_TOL of their median colour (1.0: one flat colour)."""
    values = pixels[content]
    if len(values) == 0:
        return 1.0
    values = values[:: max(1, len(values) // 20000)]  # a sample is plenty
    median = np.median(values, axis=0)
    return float((np.abs(values - median) <= UNIFORM_TOL).all(axis=1).mean())


def _main_band(pixels: np.ndarray, content: np.ndarray, axis: int) -> tuple[int, int]:
    """[start, end) along ``axis`` (0 = rows) of the band of lines with the most content, extended over neighbouring
    bands that look like further rows/columns of cells: across a gap of at most a quarter of its length, of
    similar length (0.5-2x) and not mostly one colour. Text lines, buttons and banners fail one of these."""
    mass = content.sum(axis=1 - axis)
    across = content.shape[1 - axis]
    runs = _runs(mass >= ACTIVE_FRACTION * across)
    if not runs:
        return 0, 0
    seed = max(range(len(runs)), key=lambda i: mass[runs[i][0] : runs[i][1]].sum())
    size = runs[seed][1] - runs[seed][0]
    max_gap = max(16, size // 4)  # a gutter, or a gutter plus the white margins of pictures on white

    def like_seed(i: int) -> bool:
        a, b = runs[i]
        if not 0.5 <= (b - a) / size <= 2:
            return False
        band = (slice(a, b), slice(None)) if axis == 0 else (slice(None), slice(a, b))
        return _flatness(pixels[band], content[band]) < FLAT_FRACTION

    lo = hi = seed
    while lo > 0 and runs[lo][0] - runs[lo - 1][1] <= max_gap and like_seed(lo - 1):
        lo -= 1
    while hi < len(runs) - 1 and runs[hi + 1][0] - runs[hi][1] <= max_gap and like_seed(hi + 1):
        hi += 1
    return runs[lo][0], runs[hi][1]


def locate_grid(screenshot: Image.Image) -> Box:
    """The (left, top, right, bottom) box of the picture grid inside a screenshot of a grid captcha.

    Pixels that differ from the UI background (the colour of the screenshot's outer frame) are content. Rows with
    content form bands; the band with the most content is the first row of cells (or the whole grid where gutters
    are not background-coloured), extended over neighbouring bands of similar height that are not mostly one colour,
    across small gaps (gutters); the same is then done for columns inside those rows, and once more for rows inside
    those columns.
    The box is tight around content: a border or gutter in the background colour is left out (``split_cells``
    handles either).

    Limits: needs a plain (single-colour) UI background; a screenshot whose frame is not plain is taken to be the
    grid itself and its whole box is returned. A sample picture or a multi-coloured banner as tall as a row of
    cells, lying within a gutter's width of the grid, is taken as part of it; a row of cells that is
    background-coloured across its whole width (white pictures on a white page) splits the grid there.
    Raises CaptchalabError when no region large enough to be a grid is found.
    """
    pixels = _rgb(screenshot)
    height, width = pixels.shape[:2]
    colour, plain = _background(pixels)
    if not plain:
        log.debug("screenshot frame is not plain: taking the whole %dx%d image as the grid", width, height)
        return 0, 0, width, height
    content = (np.abs(pixels - colour) > BACKGROUND_TOL).any(axis=2)
    y0, y1 = _main_band(pixels, content, 0)
    x0, x1 = _main_band(pixels[y0:y1], content[y0:y1], 1) if y1 > y0 else (0, 0)
    if x1 > x0:
        y0, y1 = _main_band(pixels[:, x0:x1], content[:, x0:x1], 0)
    if (x1 - x0) < 32 or (y1 - y0) < 32 or (x1 - x0) * (y1 - y0) < 0.04 * width * height:
        raise CaptchalabError(f"no picture grid found in the {width}x{height} screenshot")
    return x0, y0, x1, y1
