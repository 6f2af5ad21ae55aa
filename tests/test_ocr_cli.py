"""The OCR commands through the real entry point, on tiny generated data."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import CLI, run_cli


def test_train_writes_every_run_file(tiny_run: Path):
    for name in ("config.json", "split.json", "best.pt", "last.pt", "log.csv", "accuracy.png", "report.json"):
        assert (tiny_run / name).is_file(), name
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["images"] == 16 and report["epochs_run"] == 2
    assert set(report) >= {"exact_accuracy", "char_accuracy", "top_confusions"}
    split = json.loads((tiny_run / "split.json").read_text())
    assert [len(split[s]) for s in ("train", "valid", "test")] == [128, 16, 16]
    assert (tiny_run / "log.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_split_is_reproducible_across_runs(tiny_data: Path, tiny_run: Path, tmp_path: Path):
    run_cli(
        "ocr",
        "train",
        str(tiny_data),
        "--out",
        str(tmp_path / "again"),
        "--max-epochs",
        "1",
        "--batch-size",
        "64",
        "--size",
        "48x16",
    )
    assert (tmp_path / "again" / "split.json").read_text() == (tiny_run / "split.json").read_text()


def test_export_bundle_and_parity_record(tiny_bundle: Path):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["task"] == "ocr" and manifest["decoder"] == "ctc-greedy"
    assert manifest["metrics"]["parity"]["mismatches"] == 0
    assert manifest["metrics"]["parity"]["max_abs_logprob_diff"] < 1e-3
    assert manifest["preprocess"]["height"] == 16 and manifest["preprocess"]["width"] == 48
    assert set(manifest["charset"]) <= set("0123456789")


def test_eval_bundle_and_run_agree(tiny_bundle: Path, tiny_run: Path, tiny_data: Path, tmp_path: Path):
    run_cli("ocr", "eval", str(tiny_bundle), str(tiny_data), "--out", str(tmp_path / "b.json"))
    run_cli("ocr", "eval", str(tiny_run), str(tiny_data), "--out", str(tmp_path / "r.json"))
    bundle_report = json.loads((tmp_path / "b.json").read_text())
    run_report = json.loads((tmp_path / "r.json").read_text())
    assert bundle_report["images"] == 160
    assert bundle_report["exact_accuracy"] == run_report["exact_accuracy"]
    assert bundle_report["char_accuracy"] == pytest.approx(run_report["char_accuracy"])


def test_predict_json_files_folders_and_stdin(tiny_bundle: Path, tiny_data: Path):
    first = sorted(tiny_data.glob("*.png"))[0]
    out = run_cli(
        "ocr", "predict", "--model", str(tiny_bundle), "--json", str(first), "-", input=first.read_bytes()
    ).stdout_text.splitlines()
    rows = [json.loads(line) for line in out]
    assert [r["file"] for r in rows] == [str(first), "<stdin>"]
    assert rows[0]["text"] == rows[1]["text"] and 0.0 <= rows[0]["confidence"] <= 1.0
    folder = run_cli("ocr", "predict", "--model", str(tiny_bundle), str(tiny_data)).stdout_text.splitlines()
    assert len(folder) == 160


def test_predict_bad_file_one_line_and_exit_2(tiny_bundle: Path, tiny_data: Path, tmp_path: Path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = sorted(tiny_data.glob("*.png"))[0]
    result = run_cli("ocr", "predict", "--model", str(tiny_bundle), str(bad), str(good), check=False)
    assert result.returncode == 2
    assert result.stderr_text.strip().count("\n") == 0 and "broken.png" in result.stderr_text
    assert "Traceback" not in result.stderr_text
    assert str(good) in result.stdout_text  # the good file is still read


def test_interactive_prompt_loop(tiny_bundle: Path, tiny_data: Path):
    first = sorted(tiny_data.glob("*.png"))[0]
    result = run_cli(
        "ocr", "predict", "--model", str(tiny_bundle), input=f"{first}\nmissing.png\n".encode(), check=False
    )
    assert result.returncode == 2  # as for listed paths: exit code 2 if any failed
    assert result.stdout_text.count("Image path:") == 3
    assert "confidence" in result.stdout_text and "missing.png: no such file" in result.stderr_text


@pytest.mark.parametrize(
    "args, message",
    [
        (["ocr", "train", "{tmp}/nothing", "--out", "{tmp}/run"], "no such file or folder"),
        (["ocr", "train", "{tmp}/empty", "--out", "{tmp}/run"], "no labelled images"),
        (["ocr", "train", "{tmp}/few", "--out", "{tmp}/run"], "too small to split"),
        (["ocr", "train", "{data}", "--out", "{tmp}/run", "--charset", "0123"], "outside the charset"),
        (["ocr", "train", "{data}", "--out", "{tmp}/run", "--resume"], "nothing to resume"),
        (["ocr", "train", "{data}", "--out", "{tmp}/run", "--arch", "vit"], "unknown --arch"),
        (["ocr", "eval", "{tmp}/nothing", "{data}"], "no such model bundle"),
        (["ocr", "predict", "--model", "{tmp}/empty", "x.png"], "neither a model bundle"),
        (["ocr", "generate", "{tmp}/gen", "--length", "x"], "bad --length"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, tmp_path: Path, tiny_data: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "few").mkdir()
    for i in range(2):
        Image.new("RGB", (20, 10)).save(tmp_path / "few" / f"{i}-ab.png")
    argv = [a.format(tmp=tmp_path, data=tiny_data) for a in args]
    result = run_cli(*argv, check=False)
    assert result.returncode == 2, result.stderr_text
    assert message in result.stderr_text
    assert "Traceback" not in result.stderr_text
    assert len(result.stderr_text.strip().splitlines()) == 1


def test_existing_run_is_never_overwritten(tiny_run: Path, tiny_data: Path):
    before = (tiny_run / "best.pt").read_bytes()
    result = run_cli("ocr", "train", str(tiny_data), "--out", str(tiny_run), check=False)
    assert result.returncode == 2 and "--resume" in result.stderr_text
    assert (tiny_run / "best.pt").read_bytes() == before


def test_corrupt_training_images_are_skipped_with_one_warning(tiny_data: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(tiny_data.glob("*.png"))[:40]:
        (data / path.name).write_bytes(path.read_bytes())
    (data / "99990-123.png").write_bytes(b"")
    (data / "99991-456.png").write_bytes(b"garbage")
    (data / "99992-789.png").symlink_to(tmp_path / "moved-away.png")
    result = run_cli("ocr", "train", str(data), "--out", str(tmp_path / "run"), "--max-epochs", "1", "--size", "48x16")
    warnings = [line for line in result.stderr_text.splitlines() if "skipped 3 unreadable" in line]
    assert len(warnings) == 1 and all(f"{n}.png" in warnings[0] for n in ("99990-123", "99991-456", "99992-789"))
    assert "99992-789.png: broken symbolic link" in warnings[0]


@pytest.mark.slow
def test_resume_after_kill_9_loses_no_epoch(tiny_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = [*CLI, "ocr", "train", str(tiny_data), "--out", str(run)]
    args += "--max-epochs 6 --patience 50 --batch-size 16 --size 48x16".split()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # now in the middle of a later epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / "last.pt").exists(), "no epoch finished before the kill"
    done_before = (run / "log.csv").read_text().count("\n") - 1
    assert done_before < 6
    run_cli("ocr", "train", str(tiny_data), "--out", str(run), "--resume")
    epochs = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, 7))
    assert json.loads((run / "report.json").read_text())["epochs_run"] == 6


@pytest.mark.slow
def test_resnet18_fixed_trains_and_exports(tiny_data: Path, tmp_path: Path):
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    run_cli(
        "ocr",
        "train",
        str(tiny_data),
        "--out",
        str(run),
        "--arch",
        "resnet18-fixed",
        "--max-epochs",
        "1",
        "--batch-size",
        "32",
        "--size",
        "32x16",
    )
    run_cli("ocr", "export", str(run), "--out", str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["decoder"] == "fixed" and manifest["arch"] == "resnet18-fixed" and manifest["max_length"] == 4
    assert manifest["preprocess"]["channels"] == 3
    out = run_cli("ocr", "predict", "--model", str(bundle), "--json", str(sorted(tiny_data.glob("*.png"))[0]))
    assert json.loads(out.stdout_text)["text"] is not None


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tiny_data: Path, tmp_path: Path):
    """Two CPU processes (gloo) under torchrun: one split, one set of checkpoints, the same report format."""
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own: no clash with another run on this machine
        "--nproc_per_node",
        "2",
        "-m",
        "captchalab",
        "ocr",
        "train",
        str(tiny_data),
        "--out",
        str(run),
        "--max-epochs",
        "2",
        "--batch-size",
        "16",
        "--size",
        "48x16",
        "--device",
        "cpu",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "log.csv").read_text().count("\n") == 3
    report = json.loads((run / "report.json").read_text())
    assert report["epochs_run"] == 2 and report["images"] == 16


def test_int8_export_is_gated_and_readable(tiny_run: Path, tiny_data: Path, tmp_path: Path):
    bundle = tmp_path / "int8"
    run_cli("ocr", "export", str(tiny_run), "--out", str(bundle), "--int8")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert 0.0 <= manifest["metrics"]["parity"]["int8_agreement"] <= 1.0
    # the classifier (the graph's last convolution) stays fp32: no quantized weights feed it
    import onnx

    graph = onnx.load(str(bundle / "model.onnx")).graph
    head = [n for n in graph.node if n.op_type == "Conv"][-1]
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    assert made_by.get(head.input[1]) != "DequantizeLinear"
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)  # the rest is int8
    image = sorted(tiny_data.glob("*.png"))[0]
    assert "text" in json.loads(run_cli("ocr", "predict", "-m", str(bundle), "--json", str(image)).stdout_text)


def test_export_refuses_to_overwrite_a_non_bundle(tiny_run: Path, tmp_path: Path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run_cli("ocr", "export", str(tiny_run), "--out", str(target), check=False)
    assert result.returncode == 2 and "not a bundle" in result.stderr_text
    assert (target / "notes.txt").read_text() == "mine"


def test_cosine_schedule_and_resume_with_a_larger_budget(tiny_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    common = ["--size", "48x16", "--batch-size", "64"]
    run_cli("ocr", "train", str(tiny_data), "--out", str(run), "--schedule", "cosine", "--max-epochs", "2", *common)
    # the first command again with --resume and a larger budget: the options a resume cannot change are named
    resumed = run_cli("ocr", "train", str(tiny_data), "--out", str(run), "--resume", "--max-epochs", "4", *common)
    assert "ignoring --batch-size, --size" in resumed.stderr_text
    rows = (run / "log.csv").read_text().splitlines()[1:]
    lrs = [float(row.split(",")[4]) for row in rows]
    assert [int(row.split(",")[0]) for row in rows] == [1, 2, 3, 4]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(5e-4)  # the first budget: 2 epochs
    assert lrs[2] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 2 / 4)) / 2)  # re-planned over 4 epochs
    commands = json.loads((run / "config.json").read_text())["commands"]
    assert len(commands) == 2 and "--resume" in commands[1]
