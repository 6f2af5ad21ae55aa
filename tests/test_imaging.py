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
