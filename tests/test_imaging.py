import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.imaging import Preprocess, load_image


def _png_bytes(size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims to be width x height; only the header is valid (decoding it would be the bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_loads_paths_bytes_arrays_and_images(tmp_path):
    data = _png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    for source in (
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        data,
        Image.open(io.BytesIO(data)),
        np.zeros((10, 20, 3), np.uint8),
    ):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (20, 10)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"this is a text file", "not a readable image"),
        (_png_bytes((64, 64))[:5000], "corrupt or truncated"),
    ],
)
def test_bad_files_give_one_clear_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(CaptchalabError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CaptchalabError, match="no such file"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "x.png").symlink_to(d / "gone.png"), "x.png: broken symbolic link"),
        (
            lambda d: ((d / "x.png").symlink_to(d / "y.png"), (d / "y.png").symlink_to(d / "x.png")),
            "symbolic link loop",
        ),
        (lambda d: (d / "x.png").mkdir(), "x.png: is a folder, not an image file"),
    ],
)
def test_paths_that_are_no_file_say_why(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(CaptchalabError, match=message):
        load_image(tmp_path / "x.png")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_png_header(100_000, 100_000))
    with pytest.raises(CaptchalabError, match="pixel"):
        load_image(path)


def test_preprocess_shapes_and_normalisation():
    spec = Preprocess(height=8, width=16, channels=1, mean=0.5, std=0.5)
    array = spec.to_uint8(Image.new("RGB", (40, 20), "white"))
    assert array.shape == (8, 16, 1) and array.dtype == np.uint8
    batch = spec.normalize(np.stack([array, array]))
    assert batch.shape == (2, 1, 8, 16) and batch.dtype == np.float32
    assert np.allclose(batch, 1.0)
    assert Preprocess.from_dict(spec.to_dict()) == spec


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "grey16.png"))
    assert rgb.shape == (16, 16, 3)
    assert np.array_equal(rgb[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))  # not all white
    small = Image.fromarray(np.full((4, 4), 200, dtype=np.int32))  # mode I whose values fit 8 bits: kept
    assert np.asarray(load_image(small))[0, 0, 0] == 200


def test_loaded_rgb_image_outlives_its_file(tmp_path):
    Image.fromarray(np.full((5, 7, 3), 9, dtype=np.uint8)).save(tmp_path / "rgb.png")
    image = load_image(tmp_path / "rgb.png")  # the file is closed on return: the pixels must still be there
    assert image.size == (7, 5) and np.asarray(image)[0, 0, 1] == 9


def test_unreadable_file_is_one_clear_line(tmp_path, monkeypatch):
    image = tmp_path / "locked.png"
    image.write_bytes(_png_bytes())

    def denied(self, *args, **kwargs):  # what chmod 000 gives a user who is not root
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(image), "open", denied)
    with pytest.raises(CaptchalabError, match=r"locked\.png: cannot read \(Permission denied\)"):
        load_image(image)


def test_other_inputs_are_loaded_or_refused_clearly():
    data = _png_bytes()
    assert load_image(memoryview(data)).size == (20, 10)
    assert load_image(io.BytesIO(data)).size == (20, 10)
    grey = np.full((6, 8, 1), 77, dtype=np.uint8)  # an (H, W, 1) array, as many libraries give grey images
    assert np.asarray(load_image(grey))[0, 0].tolist() == [77, 77, 77]
    with pytest.raises(CaptchalabError, match="not NoneType"):
        load_image(None)
    with pytest.raises(CaptchalabError, match="empty"):
        load_image(np.zeros((0, 0, 3), dtype=np.uint8))
    with pytest.raises(CaptchalabError, match=r"\(H, W, 3\)"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    lazy_truncated = Image.open(io.BytesIO(data[: len(data) // 2]))  # opened, not yet decoded
    with pytest.raises(CaptchalabError, match="corrupt or truncated"):
        load_image(lazy_truncated)
    with pytest.raises(CaptchalabError, match="over the 100-pixel limit"):
        load_image(Image.new("RGB", (20, 10)), max_pixels=100)


def test_transparency_is_shown_on_white():
    ink = np.zeros((8, 8, 4), dtype=np.uint8)  # black everywhere; only the alpha says where the ink is
    ink[2:6, 2:6, 3] = 255
    rgb = np.asarray(load_image(ink))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[3, 3].tolist() == [0, 0, 0]
    grey_alpha = Image.fromarray(ink[..., 3]).convert("LA")
    grey_alpha.putalpha(Image.fromarray(ink[..., 3]))
    assert np.asarray(load_image(grey_alpha))[0, 0].tolist() == [255, 255, 255]
