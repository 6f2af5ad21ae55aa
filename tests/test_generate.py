import hashlib
from pathlib import Path

import pytest
from PIL import Image

from captchalab.data.generate import GenerateConfig, generate, iter_samples, parse_length, parse_size
from captchalab.data.labels import label_from_filename
from captchalab.errors import CaptchalabError


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("style", ["captcha", "builtin", "mixed"])
def test_same_seed_same_images_whatever_the_workers(tmp_path, style):
    config = GenerateConfig(charset="abc123", min_length=4, max_length=6, style=style, seed=11)
    generate(tmp_path / "one", 12, config, workers=1)
    generate(tmp_path / "two", 12, config, workers=2)
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")


def test_different_seed_different_images(tmp_path):
    generate(tmp_path / "a", 5, GenerateConfig(seed=1))
    generate(tmp_path / "b", 5, GenerateConfig(seed=2))
    assert set(_digests(tmp_path / "a").values()).isdisjoint(_digests(tmp_path / "b").values())


def test_files_carry_their_label_and_size(tmp_path):
    names = generate(
        tmp_path,
        20,
        GenerateConfig(charset="XYZ", min_length=4, max_length=6, width=120, height=40, style="mixed", seed=3),
    )
    assert names[0].startswith("00000-") and len(names) == 20
    for name in names:
        label = label_from_filename(name)
        assert 4 <= len(label) <= 6 and set(label) <= set("XYZ")
        with Image.open(tmp_path / name) as image:
            assert image.size == (120, 40)


def test_start_extends_a_set(tmp_path):
    names = generate(tmp_path, 3, GenerateConfig(seed=4), start=10)
    assert [n[:5] for n in names] == ["00010", "00011", "00012"]
    again = dict(iter_samples(GenerateConfig(seed=4), 1, start=11))
    assert label_from_filename(names[1]) in again


def test_bad_options_are_user_errors():
    with pytest.raises(CaptchalabError):
        GenerateConfig(style="fancy")
    with pytest.raises(CaptchalabError):
        GenerateConfig(min_length=5, max_length=4)
    with pytest.raises(CaptchalabError):
        parse_length("four")
    with pytest.raises(CaptchalabError):
        parse_size("160by60")
    assert parse_length("4-6") == (4, 6) and parse_size("160x60") == (160, 60)
