"""Chinese-CLIP datasets: cell folders / JSONL -> TSV + JSONL (+ LMDB) -> cells again."""

import base64
import json
import logging
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from captchalab.data.cnclip import build_dataset, export_cells, read_split
from captchalab.data.cnclip_lmdb import build_lmdb, read_lmdb_split
from captchalab.errors import CaptchalabError

SPLITS = ("train", "valid", "test")
LABELS = ("猫", "狗", "汽车")
FILES = [f"{split}_{kind}" for split in SPLITS for kind in ("imgs.tsv", "texts.jsonl")] + ["dataset.json"]


def _make_cells(root: Path, labels=LABELS, per_label: int = 8, seed: int = 1) -> dict[bytes, str]:
    """``root/<label>/<n>.png|jpg`` with random colours; returns image bytes -> label (all bytes distinct)."""
    rng = random.Random(seed)
    originals = {}
    for label in labels:
        (root / label).mkdir(parents=True)
        for n in range(per_label):
            path = root / label / (f"{n:03d}.png" if n % 2 else f"{n:03d}.jpg")
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (10 + n, 8), colour).save(path)
            originals[path.read_bytes()] = label
    assert len(originals) == len(labels) * per_label
    return originals


@pytest.fixture
def cells(tmp_path: Path) -> tuple[Path, dict[bytes, str]]:
    root = tmp_path / "cells"
    return root, _make_cells(root)


def _tsv(path: Path) -> dict[int, str]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        assert re.fullmatch(r"[0-9]+\t[A-Za-z0-9+/]+={0,2}", line), line[:60]
        image_id, b64 = line.split("\t")
        rows[int(image_id)] = b64
    return rows


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_tsv_and_jsonl_are_in_chinese_clip_format(cells, tmp_path):
    root, originals = cells
    summary = build_dataset(root, tmp_path / "ds")
    assert summary["labels"] == sorted(LABELS)
    seen = 0
    for split in SPLITS:
        images = _tsv(tmp_path / "ds" / f"{split}_imgs.tsv")
        raw_lines = (tmp_path / "ds" / f"{split}_texts.jsonl").read_text(encoding="utf-8").splitlines()
        listed = []
        for raw in raw_lines:
            record = json.loads(raw)
            assert raw == json.dumps(record, ensure_ascii=False)  # Chinese text written as is, not \\u-escaped
            assert list(record) == ["text_id", "text", "image_ids"]
            assert type(record["text_id"]) is int and all(type(i) is int for i in record["image_ids"])
            for image_id in record["image_ids"]:
                assert originals[base64.b64decode(images[image_id], validate=True)] == record["text"]
            listed += record["image_ids"]
        assert sorted(listed) == sorted(images)
        assert summary["splits"][split] == {"images": len(images), "texts": len(raw_lines)}
        seen += len(images)
    assert seen == len(originals)
    stored = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert stored == summary and stored["seed"] == 0 and stored["ratios"] == pytest.approx([0.8, 0.1, 0.1])


def test_same_seed_is_byte_identical_and_another_seed_differs(cells, tmp_path):
    root, _ = cells
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_dataset(root, tmp_path / name, seed=seed)
    read = {name: {f: (tmp_path / name / f).read_bytes() for f in FILES} for name in "abc"}
    assert read["a"] == read["b"]
    assert read["a"]["train_imgs.tsv"] != read["c"]["train_imgs.tsv"]


def test_ids_are_unique_across_splits(cells, tmp_path):
    root, originals = cells
    build_dataset(root, tmp_path / "ds")
    image_ids = [i for split in SPLITS for i in _tsv(tmp_path / "ds" / f"{split}_imgs.tsv")]
    text_ids = [r["text_id"] for split in SPLITS for r in _jsonl(tmp_path / "ds" / f"{split}_texts.jsonl")]
    assert sorted(image_ids) == list(range(1, len(originals) + 1))
    assert len(text_ids) == len(set(text_ids)) == 3 * len(LABELS)


def test_split_is_stratified_and_small_labels_stay_in_train(cells, tmp_path):
    root, _ = cells
    _make_cells(root, labels=("鸟",), per_label=1, seed=9)
    build_dataset(root, tmp_path / "ds", ratios=(0.8, 0.1, 0.1), seed=5)
    counts = {
        split: {r["text"]: len(r["image_ids"]) for r in _jsonl(tmp_path / "ds" / f"{split}_texts.jsonl")}
        for split in SPLITS
    }
    assert counts["train"] == {"猫": 6, "狗": 6, "汽车": 6, "鸟": 1}
    assert counts["valid"] == counts["test"] == {"猫": 1, "狗": 1, "汽车": 1}


def test_folder_to_dataset_to_folder_round_trip(cells, tmp_path):
    root, originals = cells
    build_dataset(root, tmp_path / "ds")
    back = tmp_path / "back"
    assert sum(export_cells(tmp_path / "ds", split, back) for split in SPLITS) == len(originals)
    files = sorted(p for p in back.rglob("*") if p.is_file() and p.parent != back)
    assert {(p.parent.name, p.read_bytes()) for p in files} == {(label, data) for data, label in originals.items()}
    assert sorted(p.name for p in back.glob("*.jsonl")) == [f"{split}_labels.jsonl" for split in sorted(SPLITS)]
    assert {p.suffix for p in files} == {".png", ".jpg"}
    for path in files:
        assert Image.open(path).format == {".png": "PNG", ".jpg": "JPEG"}[path.suffix]


def test_lmdb_round_trip_and_raw_layout(cells, tmp_path):
    root, _ = cells
    build_dataset(root, tmp_path / "ds", lmdb=True)
    for split in SPLITS:
        cells_read = read_split(tmp_path / "ds", split)
        assert cells_read and read_lmdb_split(tmp_path / "ds" / "lmdb" / split) == cells_read
        images = _tsv(tmp_path / "ds" / f"{split}_imgs.tsv")
        pairs = [
            (i, r["text_id"], r["text"])
            for r in _jsonl(tmp_path / "ds" / f"{split}_texts.jsonl")
            for i in r["image_ids"]
        ]
        env = lmdb.open(str(tmp_path / "ds" / "lmdb" / split / "imgs"), readonly=True, lock=False)
        with env.begin() as txn:
            assert dict(txn.cursor()) == {
                **{str(i).encode("utf-8"): b64.encode("utf-8") for i, b64 in images.items()},
                b"num_images": str(len(images)).encode("utf-8"),
            }
        env.close()
        env = lmdb.open(str(tmp_path / "ds" / "lmdb" / split / "pairs"), readonly=True, lock=False)
        with env.begin() as txn:
            stored = dict(txn.cursor())
        env.close()
        assert stored.pop(b"num_samples") == str(len(pairs)).encode("utf-8")
        assert stored.keys() == {str(n).encode("utf-8") for n in range(len(pairs))}
        assert [pickle.loads(stored[str(n).encode("utf-8")]) for n in range(len(pairs))] == pairs


def test_jsonl_input(tmp_path):
    originals = _make_cells(tmp_path / "imgs", labels=("猫", "狗"), per_label=6)
    files = sorted((tmp_path / "imgs").rglob("*.*"))
    lines = [
        {"image": str(p) if n == 0 else p.relative_to(tmp_path).as_posix(), "text": p.parent.name}
        for n, p in enumerate(files)
    ]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    summary = build_dataset(labels, tmp_path / "ds", ratios=(4, 1, 1))
    assert summary["splits"] == {
        "train": {"images": 8, "texts": 2},
        "valid": {"images": 2, "texts": 2},
        "test": {"images": 2, "texts": 2},
    }
    got = {(c.text, c.image_bytes) for split in SPLITS for c in read_split(tmp_path / "ds", split)}
    assert got == {(label, data) for data, label in originals.items()}


def test_unreadable_images_are_skipped_with_one_warning(cells, tmp_path, caplog):
    root, originals = cells
    (root / "猫" / "bad.png").write_bytes(b"not an image at all")
    (root / "狗" / "empty.jpg").write_bytes(b"")
    (root / "狗" / "lost.png").symlink_to(tmp_path / "moved-away.png")
    with caplog.at_level(logging.WARNING, logger="captchalab.data.cnclip"):
        summary = build_dataset(root, tmp_path / "ds")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert all(name in warnings[0].getMessage() for name in ("bad.png", "empty.jpg", "lost.png"))
    assert f"{root / '狗' / 'lost.png'}: broken symbolic link" in warnings[0].getMessage()
    assert summary["skipped"] == ["狗/empty.jpg", "狗/lost.png", "猫/bad.png"]
    got = [c.image_bytes for split in SPLITS for c in read_split(tmp_path / "ds", split)]
    assert sorted(got) == sorted(originals)


def test_unlabelled_images_are_left_out_of_read_split(tmp_path):
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4), "red").save(png)
    b64 = base64.b64encode(png.read_bytes()).decode()
    (tmp_path / "test_imgs.tsv").write_text(f"7\t{b64}\n8\t{b64}\n", encoding="utf-8")
    (tmp_path / "test_texts.jsonl").write_text(
        '{"text_id": 1, "text": "猫", "image_ids": [8]}\n{"text_id": 2, "text": "狗", "image_ids": []}\n',
        encoding="utf-8",
    )
    assert [(c.image_id, c.text) for c in read_split(tmp_path, "test")] == [(8, "猫")]


def test_build_lmdb_from_a_hand_made_chinese_clip_dataset(tmp_path):
    """URL-safe base64 (Chinese-CLIP decodes with urlsafe_b64decode) and a test split with "image_ids": []."""
    data = bytes(range(256)) * 3  # not an image: the LMDB step copies base64 text and never decodes images
    b64 = base64.urlsafe_b64encode(data).decode()
    assert "-" in b64 and "_" in b64
    (tmp_path / "test_imgs.tsv").write_text(f"5\t{b64}\n6\t{b64}\n", encoding="utf-8")
    (tmp_path / "test_texts.jsonl").write_text(
        '{"text_id": 9, "text": "汽车", "image_ids": [6, 5]}\n{"text_id": 10, "text": "猫", "image_ids": []}\n',
        encoding="utf-8",
    )
    lmdb_dir = build_lmdb(tmp_path, splits=["test"])
    expected = [(6, "汽车", data), (5, "汽车", data)]
    assert [(c.image_id, c.text, c.image_bytes) for c in read_lmdb_split(lmdb_dir / "test")] == expected
    assert read_lmdb_split(lmdb_dir / "test") == read_split(tmp_path, "test")
    env = lmdb.open(str(lmdb_dir / "test" / "imgs"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"5") == b64.encode("utf-8") and txn.get(b"num_images") == b"2"
    env.close()
    _raises(lmdb_dir / "test", lambda: build_lmdb(tmp_path, splits=["test"]))


def test_rebuild_replaces_only_our_files(cells, tmp_path):
    root, _ = cells
    out = tmp_path / "ds"
    build_dataset(root, out, lmdb=True)
    (out / "notes.txt").write_text("mine")
    build_dataset(root, out, seed=2)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "lmdb").exists()
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["seed"] == 2


# ------------------------------------------------------------------------------------------------ errors


def _dataset(cells, tmp_path) -> Path:
    build_dataset(cells[0], tmp_path / "ds")
    return tmp_path / "ds"


def _raises(where, call):
    with pytest.raises(CaptchalabError, match=re.escape(str(where))) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_and_empty_cells_folder(tmp_path):
    _raises(tmp_path / "nope", lambda: build_dataset(tmp_path / "nope", tmp_path / "ds"))
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", lambda: build_dataset(tmp_path / "empty", tmp_path / "ds"))


def test_empty_label_folder(cells, tmp_path):
    (cells[0] / "鸟").mkdir()
    assert "label folder has no images" in _raises(cells[0] / "鸟", lambda: build_dataset(cells[0], tmp_path / "ds"))


@pytest.mark.parametrize("line", ["{not json", '["a list"]', '{"image": "猫/000.jpg"}', '{"image": "", "text": "猫"}'])
def test_bad_jsonl_line(cells, tmp_path, line):
    labels = cells[0] / "labels.jsonl"
    labels.write_text('{"image": "猫/001.png", "text": "猫"}\n' + line + "\n", encoding="utf-8")
    _raises(f"{labels}:2", lambda: build_dataset(labels, tmp_path / "ds"))


def test_dataset_too_small_to_split(tmp_path):
    _make_cells(tmp_path / "cells", labels=("猫",), per_label=2)
    message = _raises(tmp_path / "cells", lambda: build_dataset(tmp_path / "cells", tmp_path / "ds"))
    assert "too small to split" in message
    assert not (tmp_path / "ds").exists()


def test_refuses_a_non_empty_folder_that_is_not_ours(cells, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "precious.txt").write_text("keep")
    _raises(tmp_path / "ds", lambda: build_dataset(cells[0], tmp_path / "ds"))
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["precious.txt"]
    (tmp_path / "ds" / "dataset.json").write_text('{"format": "someone-else"}')
    _raises(tmp_path / "ds", lambda: build_dataset(cells[0], tmp_path / "ds"))
    assert (tmp_path / "ds" / "dataset.json").read_text() == '{"format": "someone-else"}'


@pytest.mark.parametrize("bad_line", ["12345", "1\tnot base64!", "x1\tAAAA", "2\t"])
def test_bad_tsv_line(cells, tmp_path, bad_line):
    ds = _dataset(cells, tmp_path)
    tsv = ds / "valid_imgs.tsv"
    tsv.write_text(bad_line + "\n" + tsv.read_text(encoding="utf-8"), encoding="utf-8")
    _raises(f"{tsv}:1", lambda: read_split(ds, "valid"))


def test_jsonl_id_not_in_tsv(cells, tmp_path):
    ds = _dataset(cells, tmp_path)
    jsonl = ds / "test_texts.jsonl"
    records = _jsonl(jsonl)
    records[-1]["image_ids"].append(999)
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    message = _raises(f"{jsonl}:{len(records)}", lambda: read_split(ds, "test"))
    assert "999" in message and "test_imgs.tsv" in message


def test_missing_split_files_and_lmdb_folders(cells, tmp_path):
    ds = _dataset(cells, tmp_path)
    (ds / "train_texts.jsonl").unlink()
    _raises(ds / "train_texts.jsonl", lambda: read_split(ds, "train"))
    _raises(ds / "lmdb" / "train", lambda: read_lmdb_split(ds / "lmdb" / "train"))
    (ds / "lmdb" / "train" / "imgs").mkdir(parents=True)
    _raises(ds / "lmdb" / "train" / "pairs", lambda: read_lmdb_split(ds / "lmdb" / "train"))


class _CallsInt:
    """Pickles as a call of ``int``: harmless here, but loading it means the reader would run any callable."""

    def __init__(self, text: str):
        self.text = text

    def __reduce__(self):
        return int, (self.text,)


@pytest.mark.parametrize(
    "value",
    [
        "calls int",
        pickle.dumps((Path("x"), 1, "猫")),
        b"not a pickle",
        b"",
        b"Ixyz\n.",
        b"}]K\x01s.",
        pickle.dumps((1, "猫")),
    ],
)
def test_bad_lmdb_pair_is_refused_without_running_code(cells, tmp_path, value):
    build_dataset(cells[0], tmp_path / "ds", lmdb=True)
    image_id = next(iter(_tsv(tmp_path / "ds" / "valid_imgs.tsv")))
    if value == "calls int":
        value = pickle.dumps((_CallsInt(str(image_id)), 1, "猫"))
    pairs = tmp_path / "ds" / "lmdb" / "valid" / "pairs"
    env = lmdb.open(str(pairs))
    with env.begin(write=True) as txn:
        txn.put(b"0", value)
    env.close()
    assert "pair 0" in _raises(pairs, lambda: read_lmdb_split(tmp_path / "ds" / "lmdb" / "valid"))


def _read_lmdb_in_child(split_dir: Path) -> subprocess.CompletedProcess:
    """read_lmdb_split in a child process: a regression that lets LMDB touch a bad page kills only the child."""
    code = (
        "import sys\nfrom captchalab.data.cnclip_lmdb import read_lmdb_split\n"
        "from captchalab.errors import CaptchalabError\n"
        "try:\n    read_lmdb_split(sys.argv[1])\nexcept CaptchalabError as exc:\n    sys.exit(f'refused: {exc}')\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(split_dir)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("env", "keep"), [("imgs", 0.5), ("pairs", 0.99)])
def test_truncated_lmdb_is_refused_before_it_is_mapped(cells, tmp_path, env, keep):
    build_dataset(cells[0], tmp_path / "ds", lmdb=True)
    split = tmp_path / "ds" / "lmdb" / "train"
    data = split / env / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as f:  # an interrupted copy: the meta pages are there, the last pages are not
        f.truncate(int(size * keep))
    done = _read_lmdb_in_child(split)
    assert done.returncode == 1, done.stderr  # reading a page past the end is SIGBUS (-7) without the check
    cut = int(size * keep)
    assert done.stderr.strip() == f"refused: {data}: truncated ({cut} of at least {size} bytes); copy it again"


def test_damaged_lmdb_page_is_one_line(cells, tmp_path):
    build_dataset(cells[0], tmp_path / "ds", lmdb=True)
    split = tmp_path / "ds" / "lmdb" / "train"
    data = split / "imgs" / "data.mdb"
    raw = bytearray(data.read_bytes())
    env = lmdb.open(str(split / "imgs"), readonly=True, lock=False)
    page = env.stat()["psize"]  # pages 0 and 1 are the meta pages
    env.close()
    for start in range(2 * page, len(raw), page):
        raw[start + 10 : start + 12] = b"\x00\x00"  # page flags: no valid page type
    data.write_bytes(bytes(raw))
    done = _read_lmdb_in_child(split)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().startswith(f"refused: {split}: damaged LMDB (") and "\n" not in done.stderr.strip()


def test_image_outside_a_label_folder(cells, tmp_path):
    Image.new("RGB", (4, 4), "red").save(cells[0] / "stray.png")
    _raises(cells[0] / "stray.png", lambda: build_dataset(cells[0], tmp_path / "ds"))


def test_jsonl_lists_an_image_twice(cells, tmp_path):
    labels = cells[0] / "labels.jsonl"
    labels.write_text(
        '{"image": "猫/001.png", "text": "猫"}\n{"image": "./猫/001.png", "text": "狗"}\n', encoding="utf-8"
    )
    assert "line 1" in _raises(f"{labels}:2", lambda: build_dataset(labels, tmp_path / "ds"))


def test_output_inside_the_cells_folder_and_bad_ratios(cells, tmp_path):
    _raises(cells[0] / "ds", lambda: build_dataset(cells[0], cells[0] / "ds"))
    for ratios in ((0, 1, 1), (0.8, 0.2), (1, "x", 1), (1, float("nan"), 1), (1, -1, 1)):
        with pytest.raises(CaptchalabError, match="ratios"):
            build_dataset(cells[0], tmp_path / "ds", ratios=ratios)
    assert not (tmp_path / "ds").exists() and not (cells[0] / "ds").exists()


def test_tsv_id_twice(cells, tmp_path):
    ds = _dataset(cells, tmp_path)
    tsv = ds / "valid_imgs.tsv"
    first = tsv.read_text(encoding="utf-8").splitlines()[0]
    tsv.write_text(f"{first}\n{first}\n", encoding="utf-8")
    assert "twice" in _raises(f"{tsv}:2", lambda: read_split(ds, "valid"))


def test_export_never_overwrites_other_content(cells, tmp_path):
    ds = _dataset(cells, tmp_path)
    cell = read_split(ds, "test")[0]
    suffix = ".png" if cell.image_bytes.startswith(b"\x89PNG") else ".jpg"
    target = tmp_path / "back" / cell.text / f"{cell.image_id}{suffix}"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"mine")
    _raises(target, lambda: export_cells(ds, "test", tmp_path / "back"))
    assert target.read_bytes() == b"mine"


def test_texts_that_cannot_be_folders_unpack_and_build_back_exactly(tmp_path, caplog):
    """'猫/狗', '..' and 'a\\b' get stand-in folders (never clashing with a real text 'a_b'); the labels JSONL written
    beside them keeps the exact texts, and building from it gives them back."""
    pictures = tmp_path / "pics"
    pictures.mkdir()
    texts = ["猫/狗", "..", "a\\b", "a_b"]
    records = []
    for i, text in enumerate(texts * 3):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(pictures / f"{i}.png")
        records.append(json.dumps({"image": f"pics/{i}.png", "text": text}, ensure_ascii=False))
    listing = tmp_path / "labels.jsonl"
    listing.write_text("\n".join(records) + "\n", encoding="utf-8")
    build_dataset(listing, tmp_path / "ds", ratios=(1.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING):
        assert export_cells(tmp_path / "ds", "train", tmp_path / "back") == 12
    assert "3 texts cannot be folder names" in caplog.text
    folders = sorted(p.name for p in (tmp_path / "back").iterdir() if p.is_dir())
    assert len(folders) == 4 and "a_b" in folders and all("/" not in f and "\\" not in f for f in folders)
    build_dataset(tmp_path / "back" / "train_labels.jsonl", tmp_path / "ds2", ratios=(1.0, 0.0, 0.0))
    again = sorted((c.text, c.image_bytes) for c in read_split(tmp_path / "ds2", "train"))
    assert again == sorted((c.text, c.image_bytes) for c in read_split(tmp_path / "ds", "train"))
    # a second export into the same folder finds everything in place and writes nothing new
    assert export_cells(tmp_path / "ds", "train", tmp_path / "back") == 12
