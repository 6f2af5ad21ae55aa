"""Options and files that a training run, an export or a reader cannot use: one clear error, before any work."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from captchalab.data.generate import GenerateConfig, generate, parse_size
from captchalab.data.labels import read_labelled_images
from captchalab.data.split import parse_ratios, read_split
from captchalab.errors import CaptchalabError
from captchalab.evaluation import ocr_report
from captchalab.imaging import Preprocess
from captchalab.training.ocr import OcrTrainOptions
from conftest import run_cli


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"batch_size": -5}, "--batch-size"),
        ({"max_epochs": 0}, "--max-epochs"),
        ({"patience": 0}, "--patience"),
        ({"workers": -2}, "--workers"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"max_minutes": -1.0}, "--max-minutes"),
        ({"ratios": (1.0, 0.0, 0.0)}, "--split 1,0,0"),
        ({"arch": "vit"}, "--arch"),
        ({"schedule": "linear"}, "--schedule"),
    ],
)
def test_train_options_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(CaptchalabError, match=message):
        OcrTrainOptions(**changes).check()


def test_default_train_options_pass() -> None:
    OcrTrainOptions().check()
    OcrTrainOptions(workers=2, max_minutes=0.5, schedule="cosine", arch="resnet18-fixed").check()


@pytest.mark.parametrize("text", ["nan,1,1", "inf,1,1", "0,1,1", "1,-1,1", "1,1", "a,b,c"])
def test_bad_split_ratios(text: str) -> None:
    with pytest.raises(CaptchalabError, match=f"bad split ratios '{text}'"):
        parse_ratios(text)


def test_split_ratios_normalised() -> None:
    assert parse_ratios("8,1,1") == pytest.approx((0.8, 0.1, 0.1))


@pytest.mark.parametrize("text", ["0x0", "100000x100000", "160x0", "-5x60"])
def test_sizes_outside_range_refused(text: str) -> None:
    with pytest.raises(CaptchalabError, match="bad --size"):
        parse_size(text)


def test_split_file_missing_or_damaged(tmp_path: Path) -> None:
    file = tmp_path / "split.json"
    with pytest.raises(CaptchalabError, match="no such file"):
        read_split(file)
    file.write_text("{", encoding="utf-8")
    with pytest.raises(CaptchalabError, match="cannot read the split"):
        read_split(file)
    file.write_text('{"train": 3, "valid": [], "test": []}', encoding="utf-8")
    with pytest.raises(CaptchalabError, match="not a split file"):
        read_split(file)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"height": 0}, "height 0"),
        ({"width": 5000}, "width 5000"),
        ({"width": "wide"}, "width 'wide'"),
        ({"channels": 2}, "channels 2"),
        ({"mean": float("nan")}, "mean nan"),
        ({"std": 0}, "std is 0"),
    ],
)
def test_preprocess_from_dict_checks_fields(changes: dict, message: str) -> None:
    good = Preprocess(32, 96, 1).to_dict()
    assert Preprocess.from_dict(good) == Preprocess(32, 96, 1)
    with pytest.raises(ValueError, match=message):
        Preprocess.from_dict({**good, **changes})


def test_char_accuracy_never_below_zero() -> None:
    report = ocr_report(["abcdefgh"], ["x"], case_sensitive=True)
    assert report["char_accuracy"] == 0.0 and report["exact_accuracy"] == 0.0


# ----------------------------------------------------------------------------------------------------- labels files
def test_labels_file_not_utf8_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "labels.tsv"
    file.write_bytes(b"a.png\tab\nb.png\t\xe9t\xe9\n")
    with pytest.raises(CaptchalabError, match=r"labels.tsv:2: not UTF-8"):
        read_labelled_images(file)


def test_labels_file_listing_an_image_twice(tmp_path: Path) -> None:
    file = tmp_path / "labels.jsonl"
    lines = [{"image": "a.png", "label": "ab"}, {"image": "b.png", "label": "cd"}, {"image": "a.png", "label": "ef"}]
    file.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    with pytest.raises(CaptchalabError, match=r"labels.jsonl:3: lists a.png again \(first on line 1\)"):
        read_labelled_images(file)


@pytest.mark.parametrize("line", ['{"image": ["a.png"], "label": "ab"}', '{"image": "a.png", "label": 5}'])
def test_jsonl_fields_must_be_strings(tmp_path: Path, line: str) -> None:
    file = tmp_path / "labels.jsonl"
    file.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(CaptchalabError, match=r"labels.jsonl:1: needs"):
        read_labelled_images(file)


def test_tsv_empty_path_refused(tmp_path: Path) -> None:
    file = tmp_path / "labels.tsv"
    file.write_text("\tab\n", encoding="utf-8")
    with pytest.raises(CaptchalabError, match=r"labels.tsv:1: expected"):
        read_labelled_images(file)


# --------------------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize("charset", ["ab-c", "a/b", "a\\b", "ab\n"])
def test_generate_refuses_characters_a_file_name_cannot_hold(charset: str) -> None:
    with pytest.raises(CaptchalabError, match="--charset holds"):
        GenerateConfig(charset=charset)


def test_generate_rerun_same_command_but_never_over_other_captchas(tmp_path: Path) -> None:
    first = generate(tmp_path, 4, GenerateConfig(charset="abc", seed=1))
    assert generate(tmp_path, 4, GenerateConfig(charset="abc", seed=1)) == first  # the same run again: fine
    mine = tmp_path / "00001-mine.png"
    mine.write_bytes(b"a user's own image")
    with pytest.raises(CaptchalabError, match=r"already holds 3 captchas .* --start 4,") as error:
        generate(tmp_path, 2, GenerateConfig(charset="xyz", seed=2))
    assert "e.g. 00000-" in str(error.value)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted([*first, mine.name])  # nothing written or lost
    generate(tmp_path, 2, GenerateConfig(charset="xyz", seed=2), start=4)  # after them: fine
    assert len(list(tmp_path.glob("*.png"))) == 7


def test_generate_bad_destination(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(CaptchalabError, match="exists and is not a folder"):
        generate(tmp_path / "file", 2, GenerateConfig())
    with pytest.raises(CaptchalabError, match="--workers"):
        generate(tmp_path / "out", 2, GenerateConfig(), workers=0)


# ---------------------------------------------------------------------------------------------- through the real CLI
def test_train_cli_bad_options_one_line(tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli("ocr", "train", str(tiny_data), "--out", str(tmp_path / "r"), "--batch-size", "0", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert "--batch-size must be a whole number of at least 1" in result.stderr_text
    assert not (tmp_path / "r").exists()  # refused before anything was written
    (tmp_path / "file").write_text("x", encoding="utf-8")
    result = run_cli("ocr", "train", str(tiny_data), "--out", str(tmp_path / "file"), check=False)
    assert result.returncode == 2 and "exists and is not a folder" in result.stderr_text


def test_train_refuses_a_too_narrow_input_before_the_caches(tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli("ocr", "train", str(tiny_data), "--out", str(tmp_path / "r"), "--size", "8x16", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert "gives 2 CTC steps, too few for labels of 4 characters" in result.stderr_text
    assert "caching" not in result.stderr_text and not (tmp_path / "r").exists()


def test_failed_new_run_leaves_no_split_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for n in range(20):
        (data / f"{n:05d}-{n:04d}.png").write_bytes(b"")
    result = run_cli("ocr", "train", str(data), "--out", str(tmp_path / "r"), check=False)
    assert result.returncode == 2 and "images could be read" in result.stderr_text
    assert not (tmp_path / "r").exists()


def test_new_run_removes_cache_files_it_does_not_use(tiny_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "run" / "cache"
    cache.mkdir(parents=True)  # an earlier attempt killed while caching, at another size
    stale = [cache / "train-0123456789abcdef.npy", cache / "train-0123456789abcdef.json",
             cache / "valid-fedcba9876543210.npy.tmp.npy"]  # fmt: skip
    for f in [*stale, cache / "notes.txt"]:
        f.write_bytes(b"x")
    run_cli("ocr", "train", str(tiny_data), "--out", str(tmp_path / "run"), "--max-epochs", "1", "--size", "48x16")
    left = sorted(re.sub("-[0-9a-f]{16}", "", f.name) for f in cache.iterdir())
    assert not any(f.exists() for f in stale)
    assert left == [
        "notes.txt",
        *(f"{split}.{kind}" for split in ("test", "train", "valid") for kind in ("json", "npy")),
    ]


def test_resume_with_damaged_config(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("garbage", encoding="utf-8")
    result = run_cli("ocr", "train", str(tiny_data), "--out", str(run), "--resume", check=False)
    assert result.returncode == 2 and "cannot resume, the run config is unreadable" in result.stderr_text
    assert "Traceback" not in result.stderr_text


def test_export_checks_destination_and_alphabets_first(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    result = run_cli("ocr", "export", str(tiny_run), "--out", str(tmp_path / "file"), check=False)
    assert result.returncode == 2 and "exists and is not a bundle" in result.stderr_text
    result = run_cli("ocr", "export", str(tiny_run), "--out", str(tmp_path / "b"), "--alphabets", "upper", check=False)
    assert result.returncode == 2 and "--alphabets 'upper': the model has none" in result.stderr_text
    assert not (tmp_path / "b").exists()


def test_export_without_split_file(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache"))
    (run / "split.json").unlink()
    result = run_cli("ocr", "export", str(run), "--out", str(tmp_path / "b"), check=False)
    assert result.returncode == 2 and "split.json: no such file" in result.stderr_text


# ----------------------------------------------------------------------------------------- hand-edited manifests
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"charset": ""}, "charset '' is not a string of distinct characters"),
        ({"charset": "0012345678"}, "distinct characters"),
        ({"charset": "0123"}, "classes"),
        ({"decoder": "beam"}, "decoder 'beam'"),
        ({"alphabets": {"upper": 1.0}}, "alphabet 'upper' has none"),
        ({"alphabets": {"digits": -1}}, "positive prior"),
        ({"preprocess": {"height": 16, "width": 96, "channels": 1, "mean": 0.5, "std": 0.5}}, "input"),
        ({"preprocess": {"height": 16, "width": 48, "channels": 1, "mean": 0.5, "std": 0}}, "std is 0"),
    ],
)
def test_reader_refuses_a_malformed_manifest(tiny_bundle: Path, tmp_path: Path, edit: dict, message: str) -> None:
    from captchalab.runtime.ocr import OcrReader

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    (bundle / "manifest.json").write_text(json.dumps({**manifest, **edit}), encoding="utf-8")
    with pytest.raises(CaptchalabError, match="malformed bundle manifest") as error:
        OcrReader(bundle)
    assert message in str(error.value)


def test_predict_with_malformed_manifest_one_line(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "decoder": "beam"}), encoding="utf-8")
    image = sorted(tiny_data.glob("*.png"))[0]
    result = run_cli("ocr", "predict", "--model", str(bundle), str(image), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert len(result.stderr_text.strip().splitlines()) == 1 and "decoder 'beam'" in result.stderr_text


def test_help_shows_flags_without_a_type() -> None:
    result = run_cli("ocr", "predict", "--help", env={"COLUMNS": "120"})
    text = result.stdout_text
    assert "--json" in text and "<str>" in text  # options that take a value keep their type
    assert "<bool>" not in text


def test_export_never_deletes_the_users_files_in_an_earlier_bundle(tiny_bundle: Path, tiny_run: Path, tmp_path: Path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "notes.txt").write_text("my notes", encoding="utf-8")
    result = run_cli("ocr", "export", str(tiny_run), "--out", str(bundle), check=False)
    assert result.returncode == 2 and "also holds notes.txt, which replacing it would delete" in result.stderr_text
    assert (bundle / "notes.txt").read_text(encoding="utf-8") == "my notes"
    (bundle / "notes.txt").unlink()
    run_cli("ocr", "export", str(tiny_run), "--out", str(bundle))  # an earlier bundle of only our files: replaced
    assert (bundle / "manifest.json").is_file()
