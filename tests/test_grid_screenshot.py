"""Grid screenshots: cutting grids into cells, guessing layouts, locating the grid, reading the prompt (rapidocr).

Screenshots are rendered here: a prompt line above a grid of random photo-like cells on a plain UI background.
"""

from __future__ import annotations

import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from captchalab.errors import CaptchalabError
from captchalab.runtime.grid_layout import (
    UNIFORM_FRACTION,
    UNIFORM_TOL,
    cell_boxes,
    guess_layout,
    locate_grid,
    split_cells,
    split_grid,
    uniform_lines,
)
from captchalab.runtime.screenshot import extract_target

CJK_FONTS = [
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
]
CJK_FONT = next((path for path in CJK_FONTS if Path(path).is_file()), None)
LATIN_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
UI_BACKGROUND = (245, 246, 248)


def photo_cell(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like picture: a smooth random colour field, a few shapes, fine noise; no flat rows or columns."""
    field = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(6, max(7, min(width, height) // 3)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1))
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def render_grid(
    rows: int,
    cols: int,
    cell: tuple[int, int] = (90, 80),
    gutter: int = 4,
    border: int = 3,
    gutter_colour: tuple[int, int, int] = (255, 255, 255),
    seed: int = 0,
) -> tuple[Image.Image, list[tuple[int, int, int, int]], list[Image.Image]]:
    """A grid image, the box of each cell in it and the cells as drawn."""
    rng = np.random.default_rng(seed)
    width = 2 * border + cols * cell[0] + (cols - 1) * gutter
    height = 2 * border + rows * cell[1] + (rows - 1) * gutter
    grid = Image.new("RGB", (width, height), gutter_colour)
    boxes, cells = [], []
    for r in range(rows):
        for c in range(cols):
            x, y = border + c * (cell[0] + gutter), border + r * (cell[1] + gutter)
            picture = photo_cell(rng, *cell)
            grid.paste(picture, (x, y))
            boxes.append((x, y, x + cell[0], y + cell[1]))
            cells.append(picture)
    return grid, boxes, cells


def render_screenshot(
    prompt: str | None,
    rows: int = 2,
    cols: int = 3,
    font_path: str | None = CJK_FONT,
    font_size: int = 18,
    seed: int = 0,
    **grid_options,
) -> tuple[Image.Image, tuple[int, int, int, int], Image.Image]:
    """A captcha screenshot: title, prompt line, grid, a refresh mark and a confirm button on a plain background.

    Returns the screenshot, the box of the grid's cells (border excluded) and the grid as drawn."""
    grid, boxes, _ = render_grid(rows, cols, seed=seed, **grid_options)
    width = grid.width + 40
    top = 70
    shot = Image.new("RGB", (width, top + grid.height + 70), UI_BACKGROUND)
    draw = ImageDraw.Draw(shot)
    if prompt is not None:
        font = ImageFont.truetype(font_path or LATIN_FONT, font_size)
        draw.text((20, 16), prompt, fill=(30, 30, 30), font=font)
    shot.paste(grid, (20, top))
    y = top + grid.height + 18
    draw.ellipse((22, y + 4, 42, y + 24), outline=(120, 120, 120), width=2)  # refresh icon
    draw.rounded_rectangle((width - 120, y, width - 20, y + 32), radius=6, fill=(64, 120, 230))  # confirm button
    left = 20 + min(b[0] for b in boxes)
    upper = top + min(b[1] for b in boxes)
    right = 20 + max(b[2] for b in boxes)
    lower = top + max(b[3] for b in boxes)
    return shot, (left, upper, right, lower), grid


def assert_close(found: tuple[int, ...], expected: tuple[int, ...], tol: int = 2) -> None:
    assert all(abs(a - b) <= tol for a, b in zip(found, expected)), f"{found} != {expected} (tolerance {tol})"


# --- split_cells / guess_layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols", [(2, 3), (3, 3), (3, 2)])
@pytest.mark.parametrize("gutter,border", [(0, 0), (4, 3), (10, 10), (1, 0), (0, 6)])
def test_split_cells_returns_the_drawn_cells(rows: int, cols: int, gutter: int, border: int) -> None:
    grid, boxes, cells = render_grid(rows, cols, gutter=gutter, border=border, seed=rows * 10 + cols + gutter)
    found = cell_boxes(grid, rows, cols)
    assert len(found) == rows * cols
    for box, expected in zip(found, boxes):
        assert_close(box, expected, 1)
    pieces = split_cells(grid, rows, cols)
    for piece, drawn in zip(pieces, cells):
        assert abs(piece.width - drawn.width) <= 1 and abs(piece.height - drawn.height) <= 1
    # Same picture: compare on the common area (a pixel of gutter at most).
    first, drawn = np.asarray(pieces[0], dtype=np.int16), np.asarray(cells[0], dtype=np.int16)
    h, w = min(first.shape[0], drawn.shape[0]), min(first.shape[1], drawn.shape[1])
    assert np.abs(first[1 : h - 1, 1 : w - 1] - drawn[1 : h - 1, 1 : w - 1]).mean() < 20


def test_split_cells_grey_gutters_and_uneven_size() -> None:
    grid, boxes, _ = render_grid(3, 3, cell=(67, 71), gutter=5, border=2, gutter_colour=(200, 200, 200), seed=3)
    for box, expected in zip(cell_boxes(grid, 3, 3), boxes):
        assert_close(box, expected, 1)
    # No gutters and a size that does not divide by 3: cells differ by a pixel at most, nothing raised.
    plain = Image.fromarray(np.asarray(render_grid(3, 3, cell=(60, 60), gutter=0, border=0)[0])[:, :181])
    widths = {box[2] - box[0] for box in cell_boxes(plain, 3, 3)}
    assert max(widths) - min(widths) <= 1


@pytest.mark.parametrize(
    "drawn,asked",
    [((2, 3), (3, 3)), ((3, 3), (2, 3)), ((3, 2), (3, 3)), ((3, 3), (3, 2))],
)
def test_split_cells_refuses_a_layout_the_gutters_contradict(drawn: tuple[int, int], asked: tuple[int, int]) -> None:
    grid, _, _ = render_grid(*drawn, gutter=6, border=2, seed=5)
    with pytest.raises(CaptchalabError) as info:
        split_cells(grid, *asked)
    message = str(info.value)
    assert f"{grid.width}x{grid.height}" in message and f"{asked[0]}x{asked[1]}" in message


def test_uniform_lines_matches_the_plain_definition() -> None:
    """The fast colour estimate gives what the definition says: a line is flat when UNIFORM_FRACTION of its
    (every 2nd) pixels lie within UNIFORM_TOL of the line's median colour."""
    rng = np.random.default_rng(3)
    grid, _, _ = render_grid(3, 3, cell=(70, 60), gutter=5, border=3, seed=4)
    pixels = np.asarray(grid, dtype=np.int16).copy()
    pixels[10] = 200  # a flat line with a few noisy pixels (still flat) and one with too many (not flat)
    pixels[10, rng.choice(pixels.shape[1], 3, replace=False)] = 0
    pixels[11] = 200
    pixels[11, ::8] = 0
    pixels += rng.integers(-6, 7, pixels.shape, dtype=np.int16)  # JPEG-like noise
    for axis in (0, 1):
        lines = (pixels if axis == 0 else pixels.transpose(1, 0, 2))[:, ::2]
        median = np.median(lines, axis=1, keepdims=True)
        expected = (np.abs(lines - median) <= UNIFORM_TOL).all(axis=2).mean(axis=1) >= UNIFORM_FRACTION
        got = uniform_lines(pixels, axis)
        assert got.any() and not got.all()
        np.testing.assert_array_equal(got, expected)
    assert uniform_lines(pixels, 0)[10] and not uniform_lines(pixels, 0)[11]


def test_split_cells_with_a_flat_band_of_cells_at_the_border() -> None:
    """The last row's three cells share a flat background at their bottom (a generated grid did this): a wide
    gutter-free 'border' of those lines removes more lines than the real 3-px gutters, but leaves them inside cells;
    the fit that keeps no gutter inside a cell wins, for the split and for the layout guess."""
    grid, boxes, _ = render_grid(3, 3, cell=(100, 100), gutter=3, border=0, gutter_colour=(230, 230, 230), seed=8)
    pixels = np.asarray(grid).copy()
    for left, _, right, bottom in boxes[6:]:  # the bottom 10 lines of the last row's cells: one flat lilac
        pixels[bottom - 10 : bottom, left:right] = (180, 160, 230)
    grid = Image.fromarray(pixels)
    for box, expected in zip(cell_boxes(grid, 3, 3), boxes):
        assert_close(box, expected, 0)
    assert guess_layout(grid) == (3, 3)
    with pytest.raises(CaptchalabError, match="does not divide into 2x3"):
        split_cells(grid, 2, 3)


def test_split_cells_without_gutters_keeps_a_flat_edge_of_pictures() -> None:
    """No gutters, and the right-hand cells end in 17 flat columns (their backgrounds): those are picture, not a
    border, since the left edge has no flat line; before, the last column lost 12 px and every cell shifted."""
    grid, boxes, _ = render_grid(2, 3, cell=(100, 100), gutter=0, border=0, seed=12)
    pixels = np.asarray(grid).copy()
    pixels[:, -17:] = (250, 240, 200)
    grid = Image.fromarray(pixels)
    for box, expected in zip(cell_boxes(grid, 2, 3), boxes):
        assert_close(box, expected, 0)
    framed = Image.new("RGB", (grid.width + 8, grid.height + 8), (20, 20, 20))  # a real frame: trimmed
    framed.paste(grid, (4, 4))
    for box, expected in zip(cell_boxes(framed, 2, 3), boxes):
        assert_close(box, tuple(v + 4 for v in expected), 0)


def test_split_cells_refuses_unequal_cells() -> None:
    grid, _, _ = render_grid(1, 3, cell=(80, 80), gutter=6, border=0, seed=9)
    wide = Image.new("RGB", (grid.width + 30, grid.height), "white")  # the middle cell 30 px wider
    wide.paste(grid.crop((0, 0, 86, 80)), (0, 0))
    wide.paste(photo_cell(np.random.default_rng(1), 110, 80), (86, 0))
    wide.paste(grid.crop((172, 0, grid.width, 80)), (86 + 110 + 6, 0))
    with pytest.raises(CaptchalabError, match="does not divide into 1x3"):
        split_cells(wide, 1, 3)
    with pytest.raises(CaptchalabError, match="at least 1"):
        split_cells(grid, 0, 3)


@pytest.mark.parametrize("rows,cols", [(2, 3), (3, 3), (3, 2)])
def test_guess_layout_from_gutters(rows: int, cols: int) -> None:
    # Cells drawn square-ish on purpose wrong for the aspect rule: gutters must win.
    grid, _, _ = render_grid(rows, cols, cell=(70, 100) if cols == 3 else (100, 70), gutter=5, border=2, seed=4)
    assert guess_layout(grid) == (rows, cols)


@pytest.mark.parametrize("rows,cols,gutter", [(2, 3, 5), (3, 3, 0), (3, 2, 8)])
def test_split_grid_is_guess_then_split(rows: int, cols: int, gutter: int) -> None:
    grid, _, _ = render_grid(rows, cols, gutter=gutter, border=2, seed=rows + cols + gutter)
    guessed = guess_layout(grid)
    cells, shape = split_grid(grid)
    assert shape == guessed
    expected = split_cells(grid, *guessed)
    assert [np.asarray(c).tobytes() for c in cells] == [np.asarray(c).tobytes() for c in expected]
    cells, shape = split_grid(grid, (rows, cols))  # a layout given is used as it is
    assert shape == (rows, cols) and len(cells) == rows * cols
    if gutter:  # gutters contradict another layout: the same error as split_cells
        with pytest.raises(CaptchalabError, match="does not divide into 3x3"):
            split_grid(grid, (3, 3))


@pytest.mark.parametrize("size,expected", [((300, 300), (3, 3)), ((390, 260), (2, 3)), ((260, 390), (3, 2))])
def test_guess_layout_from_aspect_ratio_without_gutters(size: tuple[int, int], expected: tuple[int, int]) -> None:
    grid = photo_cell(np.random.default_rng(2), *size)
    assert guess_layout(grid) == expected


# --- locate_grid --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols,gutter", [(2, 3, 4), (3, 3, 8), (3, 2, 0), (2, 3, 10)])
def test_locate_grid_finds_the_cells(rows: int, cols: int, gutter: int) -> None:
    shot, expected, _ = render_screenshot("Select all images with a cat", rows, cols, LATIN_FONT, gutter=gutter)
    assert_close(locate_grid(shot), expected, 2)


def test_locate_grid_includes_a_border_that_is_not_background() -> None:
    shot, cells, grid = render_screenshot(
        "Select all images with a cat", 3, 3, LATIN_FONT, gutter=3, border=4, gutter_colour=(170, 170, 170)
    )
    expected = (cells[0] - 4, cells[1] - 4, cells[2] + 4, cells[3] + 4)
    box = locate_grid(shot)
    assert_close(box, expected, 2)
    assert len(split_cells(shot.crop(box), 3, 3)) == 9


def test_locate_grid_without_ui_takes_the_whole_image_and_refuses_a_blank_shot() -> None:
    grid, _, _ = render_grid(2, 3, border=0)
    assert locate_grid(grid) == (0, 0, grid.width, grid.height)
    with pytest.raises(CaptchalabError, match="no picture grid"):
        locate_grid(Image.new("RGB", (300, 400), UI_BACKGROUND))


# --- prompt extraction (strings) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,target",
    [
        ("请选择所有包含「猫」的图片", "猫"),
        ("请点击下图中所有的 猫", "猫"),
        ("请点击下图中所有的猫", "猫"),
        ("选出包含 自行车 的图片", "自行车"),
        ("选出包含自行车的图片", "自行车"),
        ("请选择包含“红绿灯”的图像", "红绿灯"),
        ('请选择包含"消防栓"的图片', "消防栓"),
        ("请选择包含【斑马线】的图片", "斑马线"),
        ("【安全验证】请选择所有包含 公交车 的图片", "公交车"),
        ("请点击所有 狗 的图片", "狗"),
        ("请选择图中的汽车", "汽车"),
        ("请选择：摩托车", "摩托车"),
        ("请选出下图中全部的飞机。", "飞机"),
        ("Select all images with a cat", "cat"),
        ("Select all squares with traffic lights. If there are none, click skip", "traffic lights"),
        ("Please click each image containing a bicycle", "bicycle"),
        ("Click on all the buses", "buses"),
        ("请选择下列图片中的狗", "狗"),
        ("请在下图中选择所有的消防车图片", "消防车"),
        ("选择包含 cat 的图片", "cat"),
        ("请选择所有包含[猫]的图片", "猫"),
        ("火车", "火车"),
        ("安全验证 长颈鹿", "长颈鹿"),
    ],
)
def test_extract_target(line: str, target: str) -> None:
    assert extract_target(line) == target


@pytest.mark.parametrize("line", ["", "   ", "确认", "安全验证", "刷新", "请完成安全验证", "Verify", "12345"])
def test_extract_target_finds_nothing_in_boilerplate(line: str) -> None:
    assert extract_target(line) is None


# --- read_screenshot (rapidocr) ------------------------------------------------------------------------------------

needs_cjk_font = pytest.mark.skipif(
    CJK_FONT is None, reason="no CJK font to render a Chinese prompt (apt-get install fonts-wqy-microhei)"
)


@pytest.fixture(scope="module")
def reader():
    pytest.importorskip("rapidocr", reason="the [screenshot] extra (rapidocr) is not installed")
    from captchalab.runtime.screenshot import read_screenshot

    return read_screenshot


@needs_cjk_font
@pytest.mark.parametrize(
    "prompt,target,layout",
    [
        ("请选择所有包含「猫」的图片", "猫", (2, 3)),
        ("请点击下图中所有的 自行车", "自行车", (3, 3)),
        ("选出包含 消防栓 的图片", "消防栓", (3, 2)),
    ],
)
def test_read_screenshot_chinese(reader, prompt: str, target: str, layout: tuple[int, int], tmp_path: Path) -> None:
    shot, cells, grid = render_screenshot(prompt, *layout, gutter=5, seed=len(prompt))
    path = tmp_path / "shot.png"
    shot.save(path)
    parsed = reader(path)
    assert parsed.prompt == target
    assert parsed.prompt_line.replace(" ", "") == prompt.replace(" ", "")
    assert_close(parsed.grid_box, cells, 2)
    assert parsed.grid.size == (parsed.grid_box[2] - parsed.grid_box[0], parsed.grid_box[3] - parsed.grid_box[1])
    assert guess_layout(parsed.grid) == layout
    assert len(split_cells(parsed.grid, *layout)) == layout[0] * layout[1]


def test_read_screenshot_english_and_offline(reader, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("read_screenshot tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    shot, cells, _ = render_screenshot("Select all images with a cat", 3, 3, LATIN_FONT, gutter=4)
    parsed = reader(shot)
    assert parsed.prompt == "cat"
    assert parsed.prompt_line == "Select all images with a cat"
    assert_close(parsed.grid_box, cells, 2)


def test_read_screenshot_without_prompt_names_the_file(reader, tmp_path: Path) -> None:
    shot, _, _ = render_screenshot(None, 2, 3, gutter=4)
    path = tmp_path / "noprompt.png"
    shot.save(path)
    with pytest.raises(CaptchalabError, match=r"noprompt\.png: no prompt text found in the screenshot"):
        reader(path)


def test_given_prompt_needs_no_readable_prompt_in_the_screenshot(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    shot, _, _ = render_screenshot(None, 2, 3, gutter=4)
    path = tmp_path / "noprompt.png"
    shot.save(path)
    result = run_cli("grid", "solve", "--screenshot", str(path), "-p", "猫", "--json")
    assert '"layout": "2x3"' in result.stdout_text
    both = run_cli("grid", "solve", "--screenshot", "--cells", str(path), "-p", "猫", check=False)
    assert both.returncode == 2 and "not --cells" in both.stderr_text
    wrong = run_cli("grid", "solve", "--screenshot", str(path), "-p", "猫", "--layout", "3x3", check=False)
    assert wrong.returncode == 2 and len(wrong.stderr_text.strip().splitlines()) == 1
    assert f"{path} (its grid at (" in wrong.stderr_text and "does not divide into 3x3" in wrong.stderr_text


def test_read_screenshot_prompt_below_the_grid(reader) -> None:
    shot, _, grid = render_screenshot(None, 2, 3, gutter=4)
    draw = ImageDraw.Draw(shot)
    draw.rectangle((0, shot.height - 70, shot.width, shot.height), fill=UI_BACKGROUND)  # drop the buttons
    font = ImageFont.truetype(LATIN_FONT, 18)
    draw.text((20, shot.height - 50), "Select all images with a dog", fill=(30, 30, 30), font=font)
    parsed = reader(shot)
    assert parsed.prompt == "dog"


def test_missing_extra_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from captchalab.runtime import screenshot

    monkeypatch.setattr(screenshot, "_engine", None)
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # what a missing package looks like to import
    with pytest.raises(CaptchalabError, match=r"pip install 'captchalab\[screenshot\]'"):
        screenshot.read_screenshot(Image.new("RGB", (64, 64)))


def test_engine_is_created_once_across_threads(reader, monkeypatch: pytest.MonkeyPatch) -> None:
    from captchalab.runtime import screenshot

    monkeypatch.setattr(screenshot, "_engine", None)
    with ThreadPoolExecutor(4) as pool:
        engines = list(pool.map(lambda _: screenshot.ocr_engine(), range(8)))
    assert all(engine is engines[0] for engine in engines)
