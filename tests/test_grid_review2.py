"""Second review of bad input on the grid dataset and training path: one clear line, exit 2, no lost work."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import lmdb
import pytest
from tests.conftest import TINY_GRIDCLIP, run_cli

from captchalab.data.cnclip import build_dataset, read_split
from captchalab.data.cnclip_lmdb import _pair, read_lmdb_split
from captchalab.errors import CaptchalabError


def _one_line_error(process, *needles: str) -> None:  # noqa: ANN001
    assert process.returncode == 2, process.stderr_text
    assert "Traceback" not in process.stderr_text
    for needle in needles:
        assert needle in process.stderr_text, process.stderr_text


def _put(env_dir: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(env_dir))
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


# ------------------------------------------------------------------------------------------------- dataset reading
@pytest.mark.parametrize(
    "value",
    [
        b"\x80\x05\x95\r\x00\x00\x00\x00\x00\x00\x85\x01K\x02\x03\xe7\x8c\xab\x94\x87\x94",  # FRAME overflow
        b"\x80\x02K\x01K\x02X\x03\x00\x00\x00\xe7\x8c\xabq\x00aq\x01.",  # APPEND to an int
        b"\x80\x02K\x01K\x02\x8d\x13\x03\x00\x00\x00\xe7\x8c\xabq\x00\x87!\x01.",  # BINUNICODE8 overflow
        b"\x80\x05\x95\r\x00\x00\x00\x00\x00\x00\x00K\x01K\x02\x96\x8c\xed\xe7\x8c\xab\x94\x87\x94.",  # BYTEARRAY8
        pickle.dumps((10**30, 1, "猫")),  # an image id no LMDB key can be made of
    ],
)
def test_malformed_lmdb_pickles_give_one_error(value: bytes):
    with pytest.raises(CaptchalabError, match="pair 0 is not a pickled"):
        _pair(value, Path("pairs"), 0)


def test_pickles_that_would_allocate_a_huge_memo_are_refused_unrun():
    from captchalab.data.cnclip_lmdb import _plain_pickle

    huge_memo = b"\x80\x02K\x01K\x02X\x03\x00\x00\x00\xe7\x8c\xabr\xff\xff\xff\x7f\x87."  # memo index 2**31 - 1
    assert not _plain_pickle(huge_memo)
    for protocol in range(6):  # what Chinese-CLIP and we write still reads
        assert _pair(pickle.dumps((7, 2, "猫"), protocol=protocol), Path("pairs"), 0) == (7, "猫")


def test_huge_numbers_and_deep_json_in_a_dataset(tiny_grid_cells: Path, tmp_path: Path):
    ds = tmp_path / "ds"
    build_dataset(tiny_grid_cells, ds, lmdb=True)
    tsv = ds / "train_imgs.tsv"
    good = tsv.read_text()
    first_id = good.split("\t", 1)[0]
    tsv.write_text("1" * 5000 + good[len(first_id) :])
    with pytest.raises(CaptchalabError, match="train_imgs.tsv:1: image id .* at most 18 digits"):
        read_split(ds, "train")
    tsv.write_text(good)
    texts = ds / "train_texts.jsonl"
    good_texts = texts.read_text()
    for bad in ('{"text_id": ' + "1" * 5000 + ', "text": "猫", "image_ids": []}', "[" * 100000 + "]" * 100000):
        texts.write_text(bad + "\n")
        with pytest.raises(CaptchalabError, match="train_texts.jsonl:1: not valid JSON"):
            read_split(ds, "train")
    first = json.loads(good_texts.splitlines()[0])
    texts.write_text(json.dumps({**first, "text": "  "}) + "\n")
    with pytest.raises(CaptchalabError, match='train_texts.jsonl:1: "text" is blank'):
        read_split(ds, "train")
    _put(ds / "lmdb" / "train" / "pairs", b"num_samples", b"1" * 5000)
    with pytest.raises(CaptchalabError, match="no valid num_samples entry"):
        read_lmdb_split(ds / "lmdb" / "train")


# ------------------------------------------------------------------------------------------------ dataset building
def test_build_refuses_a_blank_label_folder_and_a_too_long_image_name(tiny_grid_cells: Path, tmp_path: Path):
    cells = tmp_path / "cells"
    shutil.copytree(tiny_grid_cells, cells)
    (cells / "  ").mkdir()
    shutil.copy(next((cells / "猫").iterdir()), cells / "  " / "a.png")
    blank = run_cli("grid", "dataset", "build", str(cells), "--out", str(tmp_path / "o1"), check=False)
    _one_line_error(blank, "label folder name is blank")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"image": "x" * 5000 + ".png", "text": "猫"}) + "\n")
    long_name = run_cli("grid", "dataset", "build", str(labels), "--out", str(tmp_path / "o2"), check=False)
    _one_line_error(long_name, "labels.jsonl:1: image", "not found")


def test_build_skips_a_huge_file_without_reading_it(tiny_grid_cells: Path, tmp_path: Path):
    cells = tmp_path / "cells"
    shutil.copytree(tiny_grid_cells, cells)
    with (cells / "猫" / "huge.png").open("wb") as handle:  # sparse: 3 GB on paper, nothing on disk
        handle.truncate(3 * 2**30)
    result = run_cli("grid", "dataset", "build", str(cells), "--out", str(tmp_path / "o"))
    assert "huge.png: 3072 MB, too large for a cell picture" in result.stderr_text
    assert "Traceback" not in result.stderr_text


# ---------------------------------------------------------------------------------------------------- grid train
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epochs": 0}, "--epochs 0: must be >= 1"),
        ({"accum": 0}, "--accum 0: must be >= 1"),
        ({"batch_size": 1}, "--batch-size 1: must be >= 2"),
        ({"lr": float("nan")}, "--lr"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": float("inf")}, "--lr"),
        ({"wd": float("nan")}, "--wd"),
        ({"warmup": -5}, "--warmup"),
        ({"save_every": -1}, "--save-every"),
        ({"valid_every": -1}, "--valid-every"),
        ({"max_minutes": -1.0}, "--max-minutes"),
        ({"max_minutes": float("nan")}, "--max-minutes"),
        ({"seed": -1}, "--seed"),
        ({"seed": 10**23}, "--seed"),
        ({"context_length": 0}, "--context-length"),
        ({"context_length": 1000}, "--context-length"),
        ({"model": {"image_size": 0}}, "image_size"),
        ({"model": {"image_size": "32"}}, "image_size"),
        ({"model": {"trunk_blocks": 0}}, "trunk_blocks"),
        ({"model": {"text_width": 30, "text_heads": 4}}, "text_heads"),
        ({"model": {"context_length": 1}}, "context_length"),
    ],
)
def test_nonsense_train_options_are_refused(fields: dict, message: str):
    from captchalab.training.grid import GridTrainOptions, check_options

    with pytest.raises(CaptchalabError, match=message):
        check_options(GridTrainOptions(**fields))


def test_train_option_errors_are_one_line(tiny_grid_dataset: Path, tmp_path: Path):
    base = ["grid", "train", str(tiny_grid_dataset), "--init", "scratch", "--model-config", TINY_GRIDCLIP]
    for extra, message in (
        (["--lr", "nan"], "--lr nan"),
        (["--seed", "-1"], "--seed -1"),
        (["--image-size", "0"], "image_size must be"),
        (["--context-length", "0"], "--context-length 0"),
    ):
        _one_line_error(run_cli(*base, "--out", str(tmp_path / "r"), *extra, check=False), message)
    (tmp_path / "file").write_text("not a folder")
    under_file = run_cli(*base, "--out", str(tmp_path / "file" / "run"), check=False)
    _one_line_error(under_file, "cannot create the run folder")


def test_train_refuses_a_single_text(tiny_grid_cells: Path, tmp_path: Path):
    cells = tmp_path / "cells"
    shutil.copytree(tiny_grid_cells / "猫", cells / "猫")
    build_dataset(cells, tmp_path / "ds")
    one = run_cli("grid", "train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--init", "scratch",
                  "--model-config", TINY_GRIDCLIP, check=False)  # fmt: skip
    _one_line_error(one, "only one text", "'猫'")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_context_length_beyond_the_init_models_positions(tiny_grid_dataset: Path, tmp_path: Path):
    import torch

    from captchalab.models.cnclip import CnClip, CnClipConfig

    checkpoint = tmp_path / "epoch_latest.pt"
    torch.save({"state_dict": CnClip(CnClipConfig.tiny()).state_dict()}, checkpoint)
    (tmp_path / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(CnClipConfig.tiny().text.vocab_size)))
    positions = CnClipConfig.tiny().text.max_position_embeddings
    too_long = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(tmp_path / "run"), "--init",
                       f"cn-clip:{checkpoint}", "--vocab", str(tmp_path / "vocab.txt"), "--context-length",
                       str(positions + 1), check=False)  # fmt: skip
    _one_line_error(too_long, f"has only {positions} positions")


def test_bad_init_models_are_one_line(tiny_grid_dataset: Path, tmp_path: Path):
    from captchalab.models.cnclip import load_cn_clip_checkpoint, load_hf_chinese_clip

    bundles = {"junk": "not json", "list": "[1]", "no-kind": json.dumps({"task": "grid", "files": {"vocab": "v.txt"},
               "torch": {"weights": "w.safetensors"}})}  # fmt: skip
    for name, manifest in bundles.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(manifest)
        (tmp_path / name / "v.txt").write_text("a\n")
        (tmp_path / name / "w.safetensors").write_bytes(b"junk")
        result = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(tmp_path / "r"), "--init",
                         str(tmp_path / name), check=False)  # fmt: skip
        _one_line_error(result, str(tmp_path / name))
    hf = tmp_path / "hf"
    hf.mkdir()
    for config, message in (
        ([1, 2], "not a Hugging Face config"),
        ({"text_config": [1]}, "text_config is not a JSON object"),
        ({"text_config": {"num_attention_heads": "x"}}, "num_attention_heads is 'x'"),
    ):
        (hf / "config.json").write_text(json.dumps(config))
        with pytest.raises(CaptchalabError, match=message):
            load_hf_chinese_clip(hf)
    (hf / "config.json").write_text("{}")
    for weight_map in ({"a": 5}, {"a": "../../etc/passwd"}):
        (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(CaptchalabError, match="not a weight index"):
            load_hf_chinese_clip(hf)
    with pytest.raises(CaptchalabError, match="not a checkpoint file.*hf:PATH"):
        load_cn_clip_checkpoint(hf)


def test_empty_splits_count_as_absent_and_a_bad_test_split_costs_no_training(tiny_grid_cells: Path, tmp_path: Path):
    ds, run = tmp_path / "ds", tmp_path / "run"
    run_cli("grid", "dataset", "build", str(tiny_grid_cells), "--out", str(ds), "--split", "1,0,0")
    assert (ds / "valid_imgs.tsv").read_text() == "" and (ds / "test_imgs.tsv").read_text() == ""
    train = ["grid", "train", "--init", "scratch", "--epochs", "1", "--batch-size", "32", "--model-config",
             TINY_GRIDCLIP]  # fmt: skip
    run_cli(*train[:2], str(ds), "--out", str(run), *train[2:])
    assert (run / "report.json").is_file() and "test" not in json.loads((run / "report.json").read_text())
    (run / "report.json").write_text("{broken")  # only a note in the manifest is lost
    run_cli("grid", "export", str(run), "--out", str(tmp_path / "bundle"), "--no-weights")  # valid empty: train

    one_text = tmp_path / "one-text"
    shutil.copytree(tiny_grid_cells / "猫", tmp_path / "cells1" / "猫")
    build_dataset(tmp_path / "cells1", one_text, ratios=(1, 0, 0))
    single = run_cli("grid", "export", str(run), "--out", str(tmp_path / "b2"), "--dataset", str(one_text),
                     check=False)  # fmt: skip
    _one_line_error(single, "one text only")
    (run / "config.json").unlink()
    _one_line_error(run_cli("grid", "export", str(run), "--out", str(tmp_path / "b3"), check=False), "config.json")

    bad_test = tmp_path / "bad-test"
    shutil.copytree(ds, bad_test)
    (bad_test / "test_texts.jsonl").write_text("not json\n")
    (bad_test / "test_imgs.tsv").write_text("1\tAAAA\n")
    failed = run_cli(*train[:2], str(bad_test), "--out", str(tmp_path / "run2"), *train[2:], check=False)
    _one_line_error(failed, "test_texts.jsonl:1: not valid JSON")
    assert not (tmp_path / "run2" / "last.pt").exists()  # refused before the training, not after it


def test_export_refuses_bad_aliases_and_foreign_checkpoints_before_the_work(tmp_path: Path):
    import torch

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"a": 1}, run / "best.pt")
    _one_line_error(run_cli("grid", "export", str(run), "--out", str(tmp_path / "b"), check=False),
                    "best.pt: not a checkpoint of 'captchalab grid train'")  # fmt: skip
    for content, message in (
        ('{"nowords": 1}', "expected"),
        ("[1, 2]", "word 1 needs"),
        ('[{"word": "猫", "related": "狗"}]', "word 1 needs"),
        (b"\xff\xfe", "not a JSON file"),
    ):
        aliases = tmp_path / "aliases.json"
        aliases.write_bytes(content if isinstance(content, bytes) else content.encode())
        result = run_cli("grid", "export", str(tmp_path / "missing-run"), "--out", str(tmp_path / "b"), "--aliases",
                         str(aliases), check=False)  # fmt: skip
        _one_line_error(result, "aliases.json", message)
