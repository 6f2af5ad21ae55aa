import json

import pytest
from PIL import Image

from captchalab.data.labels import label_from_filename, read_labelled_images
from captchalab.data.split import parse_ratios, split_keys
from captchalab.errors import CaptchalabError


@pytest.mark.parametrize(
    "name, label",
    [("00042-R865.png", "R865"), ("a-b-XY12.jpg", "XY12"), ("R865_0042.png", "R865"), ("abcd.png", "abcd")],
)
def test_label_from_filename(name, label):
    assert label_from_filename(name) == label


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(path)


def test_folder_is_read_recursively_and_sorted(tmp_path):
    _png(tmp_path / "b" / "1-xy.png")
    _png(tmp_path / "a" / "2-zz.png")
    (tmp_path / "notes.txt").write_text("not an image")
    items = read_labelled_images(tmp_path)
    assert [(i.key, i.label) for i in items] == [("a/2-zz.png", "zz"), ("b/1-xy.png", "xy")]


def test_tsv_and_jsonl_labels(tmp_path):
    _png(tmp_path / "img" / "one.png")
    (tmp_path / "labels.tsv").write_text("img/one.png\tAB12\n\n", encoding="utf-8")
    (tmp_path / "labels.jsonl").write_text(json.dumps({"image": "img/one.png", "label": "CD"}) + "\n")
    assert read_labelled_images(tmp_path / "labels.tsv")[0].label == "AB12"
    item = read_labelled_images(tmp_path / "labels.jsonl")[0]
    assert item.label == "CD" and item.path == tmp_path / "img" / "one.png"


@pytest.mark.parametrize(
    "content, file",
    [("img.png AB\n", "bad.tsv"), ("{not json\n", "bad.jsonl"), ('{"image": "x.png"}\n', "nolabel.jsonl")],
)
def test_malformed_label_files_name_the_line(tmp_path, content, file):
    (tmp_path / file).write_text(content)
    with pytest.raises(CaptchalabError, match=f"{file}:1"):
        read_labelled_images(tmp_path / file)


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(CaptchalabError, match="no labelled images"):
        read_labelled_images(tmp_path)
    with pytest.raises(CaptchalabError, match="no such file"):
        read_labelled_images(tmp_path / "nope")


def test_split_is_reproducible_and_complete():
    keys = [f"{i:04d}.png" for i in range(100)]
    first = split_keys(keys, (0.8, 0.1, 0.1), seed=5)
    assert first == split_keys(list(reversed(keys)), (0.8, 0.1, 0.1), seed=5)
    assert first != split_keys(keys, (0.8, 0.1, 0.1), seed=6)
    assert [len(first[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    assert sorted(sum(first.values(), [])) == keys


def test_too_small_to_split_and_bad_ratios():
    with pytest.raises(CaptchalabError, match="too small"):
        split_keys(["a", "b"], (0.8, 0.1, 0.1))
    with pytest.raises(CaptchalabError):
        parse_ratios("0.8,0.2")
    assert parse_ratios("8,1,1") == pytest.approx((0.8, 0.1, 0.1))


def test_case_insensitive_reading_folds_labels(tmp_path):
    _png(tmp_path / "0-AbC9.png")
    assert read_labelled_images(tmp_path)[0].label == "AbC9"
    assert read_labelled_images(tmp_path, case_sensitive=False)[0].label == "abc9"
