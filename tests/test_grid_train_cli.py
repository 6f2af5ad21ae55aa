"""Grid training, export, solving and evaluation through the real ``captchalab`` entry point, on tiny data."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import CLI, GRID_WORDS, TINY_GRIDCLIP, draw_grid_cell, run_cli
from tests.test_runtime import _run_without_torch

from captchalab.runtime.bundle import load_bundle
from captchalab.runtime.clip import ClipModel
from captchalab.training.grid import load_run


def _grid(tmp_path: Path, words: list[int], gutter: int = 4, name: str = "grid.png") -> Path:
    """A 2x3 or 3x3 grid of tiny-fixture-style cells with uniform white gutters."""
    rng = np.random.default_rng(11)
    cols = 3
    rows = len(words) // cols
    size = 40
    image = Image.new("RGB", (cols * size + (cols + 1) * gutter, rows * size + (rows + 1) * gutter), "white")
    for i, word in enumerate(words):
        r, c = divmod(i, cols)
        image.paste(draw_grid_cell(word, rng, size), (gutter + c * (size + gutter), gutter + r * (size + gutter)))
    image.save(tmp_path / name)
    return tmp_path / name


def test_training_writes_the_run_and_learns(tiny_grid_run: Path):
    for name in ("config.json", "vocab.txt", "best.pt", "last.pt", "log.csv", "curves.png", "report.json"):
        assert (tiny_grid_run / name).is_file(), name
    report = json.loads((tiny_grid_run / "report.json").read_text())
    assert report["test"]["i2t_accuracy"] >= 0.5  # six words: chance is 1/6
    log = (tiny_grid_run / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,step,train_loss,i2t_accuracy") and len(log) == 13


def test_export_bundle_matches_torch_and_has_dynamic_batch(
    tiny_grid_run: Path, tiny_grid_bundle: Path, tiny_grid_cells
):
    manifest = json.loads((tiny_grid_bundle / "manifest.json").read_text())
    assert manifest["task"] == "grid" and manifest["metrics"]["parity"]["fp32"]["nearest_text_disagreements"] == 0
    assert {p["text"] for p in manifest["prompts"]} == set(GRID_WORDS)
    assert manifest["decision"]["rule"] in manifest["decision"]["rules"]
    assert not list(tiny_grid_bundle.glob("*.data"))  # weights inside the ONNX files, no extra_file
    model = ClipModel(load_bundle(tiny_grid_bundle, "grid"))
    images = [Image.open(p).convert("RGB") for p in sorted((tiny_grid_cells / "猫").glob("*.png"))[:5]]
    for count in (1, 5):
        assert model.embed_images(images[:count]).shape == (count, manifest["embed_dim"])
    net, state = load_run(tiny_grid_run)
    x = torch.from_numpy(model.image_input(images))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net.encode_image(x), dim=-1).numpy()
    assert np.abs(model.embed_images(images) - expected).max() < 1e-4
    ids = torch.from_numpy(model.tokenizer.encode(["猫", "自行车"]))
    with torch.no_grad():
        expected_text = torch.nn.functional.normalize(net.encode_text(ids), dim=-1).numpy()
    assert np.abs(model.embed_texts(["猫", "自行车"]) - expected_text).max() < 1e-4


def test_solve_grid_image_json_and_text(tiny_grid_bundle: Path, tmp_path: Path):
    grid = _grid(tmp_path, [0, 1, 0, 2, 3, 4])  # 猫 at 1 and 3
    out = run_cli("grid", "solve", str(grid), "--prompt", "猫", "--model", str(tiny_grid_bundle), "--json")
    answer = json.loads(out.stdout_text)
    assert set(answer) >= {"prompt", "layout", "positions", "probabilities", "unsure"}
    assert answer["layout"] == "2x3" and len(answer["probabilities"]) == 6
    assert all(1 <= p <= 6 for p in answer["positions"])
    text = run_cli("grid", "solve", str(grid), "-p", "猫", "--model", str(tiny_grid_bundle), "--layout", "2x3")
    assert text.stdout_text.startswith("[")


def test_solve_separate_cells(tiny_grid_bundle: Path, tiny_grid_cells: Path):
    words = list(GRID_WORDS)
    cells = [str(sorted((tiny_grid_cells / words[i]).glob("*.png"))[-1]) for i in (0, 1, 2, 3, 4, 0, 5, 1, 2)]
    out = run_cli("grid", "solve", "--cells", *cells, "--prompt", "猫", "--model", str(tiny_grid_bundle), "--json")
    answer = json.loads(out.stdout_text)
    assert answer["layout"] == "3x3" and len(answer["probabilities"]) == 9


def test_eval_on_generated_grids(tiny_grid_bundle: Path, tiny_grid_cells: Path, tmp_path: Path):
    grids = tmp_path / "grids"
    run_cli("grid", "generate", str(grids), "--count", "12", "--cells", str(tiny_grid_cells), "--layout", "2x3",
            "--cell-size", "40", "--seed", "2")  # fmt: skip
    report_file = tmp_path / "report.json"
    out = run_cli("grid", "eval", str(tiny_grid_bundle), str(grids), "--out", str(report_file))
    report = json.loads(report_file.read_text())
    assert report["grids"] == 12 and 0.0 <= report["solve_rate"] <= 1.0
    assert set(report["per_prompt"]) <= set(GRID_WORDS)
    assert sum(v["grids"] for v in report["per_prompt"].values()) == 12
    assert report["per_design"] == {}  # cells from folders: the manifest names no art style
    assert "solve rate" in out.stdout_text

    # grids drawn from an icon library record each cell's style: the report splits by the matching cells' style
    rows = [json.loads(line) for line in (grids / "manifest.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["cell_styles"] = ["flat" if i % 3 else "line"] * len(row["cells"])
    rows[0]["cell_styles"][rows[0]["positions"][0] - 1] = "other"  # one grid whose matching cells differ
    (grids / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = run_cli("grid", "eval", str(tiny_grid_bundle), str(grids), "--out", str(report_file))
    report = json.loads(report_file.read_text())
    by_design = {d: v["grids"] for d, v in report["per_design"].items()}
    expected_mixed = int(len(rows[0]["positions"]) > 1)
    assert by_design == {"flat": 8, "line": 4 - 1, **({"mixed": 1} if expected_mixed else {"other": 1})}
    assert sum(v["solved"] for v in report["per_design"].values()) == round(report["solve_rate"] * 12)
    assert "by style of the matching cells: " in out.stdout_text


def test_calibrate_refits_the_rules_on_labelled_grids(tiny_grid_bundle: Path, tiny_grid_cells: Path, tmp_path: Path):
    grids = tmp_path / "grids"
    run_cli("grid", "generate", str(grids), "--count", "30", "--cells", str(tiny_grid_cells), "--layout", "2x3",
            "--cell-size", "40", "--seed", "5")  # fmt: skip
    out = tmp_path / "recalibrated"
    result = run_cli("grid", "calibrate", str(tiny_grid_bundle), str(grids), "--out", str(out))
    assert "solve rate" in result.stdout_text and f"wrote {out}" in result.stdout_text
    before = json.loads((tiny_grid_bundle / "manifest.json").read_text())
    after = json.loads((out / "manifest.json").read_text())
    report = after["decision"]["recalibrated"]
    assert report["scored"] == 30 and report["rule"] == after["decision"]["rule"]
    assert set(report["rules"]) == {"threshold", "margin", "softmax", "context"}
    best_after = max(row["after"] for row in report["rules"].values())
    assert report["rules"][report["rule"]]["after"] == best_after  # without --rule: the rule solving the most
    for rule, row in report["rules"].items():
        if rule != "context":  # a threshold fit maximises the solved grids; the context model's likelihood
            assert row["after"] >= row["before"]
        assert after["decision"]["rules"][rule]["relative"] == row["relative"] >= 0
    assert {k: v for k, v in after.items() if k not in ("decision", "created")} == {
        k: v for k, v in before.items() if k not in ("decision", "created")
    }
    for name in before["files"].values():  # the model itself is copied unchanged
        assert (out / name).read_bytes() == (tiny_grid_bundle / name).read_bytes()
    run_cli("grid", "eval", str(out), str(grids), "--out", str(tmp_path / "report.json"))
    evaluated = json.loads((tmp_path / "report.json").read_text())
    assert evaluated["solve_rate"] == report["rules"][report["rule"]]["after"]  # the fit counts what solve does

    # several folders are fitted together; --rule fixes the bundle's rule
    more = tmp_path / "more-grids"
    run_cli("grid", "generate", str(more), "--count", "20", "--cells", str(tiny_grid_cells), "--layout", "2x3",
            "--cell-size", "40", "--seed", "6")  # fmt: skip
    both = tmp_path / "both"
    run_cli("grid", "calibrate", str(tiny_grid_bundle), str(grids), str(more), "--out", str(both), "--rule", "context")
    decision = json.loads((both / "manifest.json").read_text())["decision"]
    assert decision["rule"] == "context" and decision["recalibrated"]["scored"] == 50
    run_cli("grid", "eval", str(both), str(more), "--out", str(tmp_path / "both.json"))
    assert json.loads((tmp_path / "both.json").read_text())["rule"] == "context"
    kept = tmp_path / "kept"  # --keep-threshold re-fits only 'relative': the context model is kept whole
    run_cli("grid", "calibrate", str(both), str(more), "--out", str(kept), "--keep-threshold")
    kept_decision = json.loads((kept / "manifest.json").read_text())["decision"]
    assert kept_decision["rules"]["context"] == decision["rules"]["context"]
    assert kept_decision["recalibrated"]["previous"]["scored"] == 50  # the earlier fit stays on record


def test_calibrate_errors_are_one_line(tiny_grid_bundle: Path, tmp_path: Path):
    grids = tmp_path / "grids"
    grids.mkdir()
    Image.new("RGB", (90, 60), "white").save(grids / "a.png")
    (grids / "manifest.jsonl").write_text(json.dumps({"image": "a.png", "prompt": "恐龙", "positions": [1]}) + "\n")
    result = run_cli("grid", "calibrate", str(tiny_grid_bundle), str(grids), "--out", str(tmp_path / "o"), check=False)
    assert result.returncode == 2 and "no grid could be scored" in result.stderr_text
    assert "Traceback" not in result.stderr_text and not (tmp_path / "o").exists()
    result = run_cli("grid", "calibrate", str(tiny_grid_bundle), str(grids), "--out", str(tmp_path / "o"),
                     "--rule", "best", check=False)  # fmt: skip
    assert result.returncode == 2 and "unknown rule 'best'" in result.stderr_text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["GRID", "--prompt", " "], "prompt is empty"),
        (["GRID", "--prompt", "猫", "--layout", "4x4"], "unknown layout"),
        (["ODD", "--prompt", "猫", "--layout", "3x3"], "does not divide"),
        (["CORRUPT", "--prompt", "猫"], "not a readable image"),
        (["--cells", "GRID", "GRID", "--prompt", "猫"], "a grid has 6"),
        (["GRID"], "--prompt"),
    ],
)
def test_solve_errors_are_one_line(tiny_grid_bundle: Path, tmp_path: Path, args: list[str], message: str):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    real = {"GRID": _grid(tmp_path, [0, 1, 0, 2, 3, 4]), "CORRUPT": tmp_path / "corrupt.png",
            "ODD": _grid(tmp_path, [0, 1, 2, 3, 4, 5], gutter=6, name="odd.png")}  # fmt: skip
    argv = [str(real.get(a, a)) for a in args]
    result = run_cli("grid", "solve", *argv, "--model", str(tiny_grid_bundle), check=False)
    assert result.returncode == 2, result.stderr_text
    assert message in result.stderr_text and "Traceback" not in result.stderr_text
    assert len(result.stderr_text.strip().splitlines()) == 1


def test_unknown_word_still_answers_with_a_note(tiny_grid_bundle: Path, tmp_path: Path):
    grid = _grid(tmp_path, [0, 1, 0, 2, 3, 4])
    result = run_cli("grid", "solve", str(grid), "--prompt", "恐龙", "--model", str(tiny_grid_bundle), "--json")
    assert json.loads(result.stdout_text)["unsure"] is True
    assert "has not seen" in result.stderr_text


def test_solve_without_torch(tiny_grid_bundle: Path, tmp_path: Path):
    grid = _grid(tmp_path, [0, 1, 0, 2, 3, 4])
    result = _run_without_torch(f"""
        from captchalab import grid
        answer = grid.solve({str(grid)!r}, "猫", model={str(tiny_grid_bundle)!r})
        assert "torch" not in sys.modules
        print(answer.positions)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("[")


def test_fine_tune_from_a_bundle(tiny_grid_bundle: Path, tiny_grid_dataset: Path, tmp_path: Path):
    run = tmp_path / "ft"
    run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(run), "--init", str(tiny_grid_bundle),
            "--epochs", "2", "--batch-size", "32", "--freeze-vision", "--warmup", "1")  # fmt: skip
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["kind"] == "gridclip" and state["step"] >= 2
    from safetensors.torch import load_file

    shipped = load_file(str(tiny_grid_bundle / "weights.safetensors"))
    for name, tensor in state["state_dict"].items():  # a frozen tower keeps its weights and BatchNorm statistics
        if name.startswith("visual.") and tensor.is_floating_point():
            assert torch.equal(tensor.half(), shipped[name]), name
    assert (run / "vocab.txt").read_text() == (tiny_grid_bundle / "vocab.txt").read_text()


def test_fine_tune_from_a_bundle_at_another_input_size(tiny_grid_bundle: Path, tiny_grid_dataset: Path, tmp_path: Path):
    run, bundle = tmp_path / "ft40", tmp_path / "ft40-bundle"
    run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(run), "--init", str(tiny_grid_bundle),
            "--image-size", "40", "--epochs", "1", "--batch-size", "32", "--freeze-vision",
            "--warmup", "1")  # fmt: skip
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["config"]["image_size"] == 40
    from safetensors.torch import load_file

    shipped = load_file(str(tiny_grid_bundle / "weights.safetensors"))
    trunk = [n for n in state["state_dict"] if n.startswith("visual.") and state["state_dict"][n].is_floating_point()]
    assert trunk and all(torch.equal(state["state_dict"][n].half(), shipped[n]) for n in trunk)  # same weights
    run_cli("grid", "export", str(run), "--out", str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["image"]["preprocess"]["size"] == 40


def test_resume_after_kill_9_keeps_finished_steps(tiny_grid_dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["grid", "train", str(tiny_grid_dataset), "--out", str(run), "--init", "scratch", "--epochs", "40",
            "--batch-size", "16", "--save-every", "2", "--model-config", TINY_GRIDCLIP]  # fmt: skip
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "CAPTCHALAB_PROGRESS": "0"})  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "last.pt").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(run / "last.pt", weights_only=False)
    assert saved["step"] >= 2
    target = saved["epoch"] + 2
    run_cli("grid", "train", *args[2:], "--resume", str(run), "--epochs", str(target))
    final = torch.load(run / "last.pt", weights_only=False)
    assert final["epoch"] == target and final["step"] > saved["step"]
    assert final["history"][: len(saved["history"])] == saved["history"]  # finished work kept
    assert (run / "report.json").is_file()


def test_chinese_clip_checkpoint_fine_tunes_and_exports(tiny_grid_dataset: Path, tmp_path: Path):
    from captchalab.models.cnclip import CnClip, CnClipConfig
    from captchalab.runtime.tokenizer import build_char_vocab, write_vocab

    config = CnClipConfig.tiny()
    model = CnClip(config)
    checkpoint = tmp_path / "epoch_latest.pt"
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}  # as Chinese-CLIP's DDP training saves
    torch.save({"epoch": 1, "step": 1, "name": "t", "state_dict": state_dict}, checkpoint)
    vocab = build_char_vocab(GRID_WORDS)
    vocab += [f"[unused{i}]" for i in range(config.text.vocab_size - len(vocab))]
    write_vocab(vocab, tmp_path / "vocab.txt")
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(run), "--init", f"cn-clip:{checkpoint}",
            "--vocab", str(tmp_path / "vocab.txt"), "--epochs", "1", "--batch-size", "32", "--warmup", "1")  # fmt: skip
    run_cli("grid", "export", str(run), "--out", str(bundle), "--no-weights")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["arch"] == "cnclip" and manifest["text"]["context_length"] == 52
    assert manifest["image"]["preprocess"]["size"] == config.vision.image_resolution


def test_train_errors(tiny_grid_dataset: Path, tmp_path: Path):
    missing = run_cli("grid", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--init", "scratch",
                      check=False)  # fmt: skip
    assert missing.returncode == 2 and "no such dataset folder" in missing.stderr_text
    no_vocab = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(tmp_path / "r"), "--init", "cn-clip:x.pt",
                       check=False)  # fmt: skip
    assert no_vocab.returncode == 2 and "--vocab" in no_vocab.stderr_text
    bad_config = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(tmp_path / "r"), "--init", "scratch",
                         "--model-config", '{"layers": 3}', check=False)  # fmt: skip
    assert bad_config.returncode == 2 and "unknown field" in bad_config.stderr_text
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "best.pt").write_bytes(b"an earlier run's best model")
    again = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(earlier), "--init", "scratch", check=False)
    assert again.returncode == 2 and "already holds a training run" in again.stderr_text
    assert "--resume" in again.stderr_text
    assert (earlier / "best.pt").read_bytes() == b"an earlier run's best model"
    garbage = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(earlier), "--resume",
                      str(earlier / "best.pt"), check=False)  # fmt: skip
    assert garbage.returncode == 2 and "not a PyTorch checkpoint" in garbage.stderr_text
    other = tmp_path / "other"
    other.mkdir()
    (other / "last.pt").write_bytes(b"another run")
    elsewhere = run_cli("grid", "train", str(tiny_grid_dataset), "--out", str(earlier), "--resume", str(other),
                        check=False)  # fmt: skip
    assert elsewhere.returncode == 2 and "already holds a training run" in elsewhere.stderr_text
    assert (earlier / "best.pt").read_bytes() == b"an earlier run's best model"
    assert "Traceback" not in again.stderr_text + garbage.stderr_text + elsewhere.stderr_text


def test_solve_a_screenshot_reads_the_prompt_and_finds_the_grid(tiny_grid_bundle: Path, tmp_path: Path):
    from tests.test_grid_screenshot import LATIN_FONT, render_screenshot

    shot, _, _ = render_screenshot("Select all images with a cat", 2, 3, LATIN_FONT, gutter=4)
    shot.save(tmp_path / "shot.png")
    out = run_cli("grid", "solve", "--screenshot", str(tmp_path / "shot.png"), "--model", str(tiny_grid_bundle),
                  "--json")  # fmt: skip
    answer = json.loads(out.stdout_text)
    assert answer["prompt"] == "cat" and answer["layout"] == "2x3" and len(answer["probabilities"]) == 6
    assert "has not seen" in out.stderr_text  # the tiny model knows Chinese words only


def test_torchrun_two_processes_train_one_grid_run(tiny_grid_dataset: Path, tmp_path: Path):
    """DDP on two CPU processes (gloo): one run folder, checkpoints from rank 0, a report."""
    import sys

    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "captchalab", "grid", "train", str(tiny_grid_dataset), "--out", str(run), "--init", "scratch",
               "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--model-config", TINY_GRIDCLIP]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CAPTCHALAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["state_dict"])
    assert json.loads((run / "report.json").read_text())["test"]["images"] > 0


@pytest.mark.parametrize("flag", ["--int8", "--fp16"])
def test_reduced_precision_exports(tiny_grid_run: Path, tiny_grid_cells: Path, tmp_path: Path, flag: str):
    bundle = tmp_path / flag.strip("-")
    result = run_cli("grid", "export", str(tiny_grid_run), "--out", str(bundle), flag, "--no-weights", check=False)
    if result.returncode == 2:  # int8 may cost the tiny model accuracy: then it must refuse, in one line
        assert flag == "--int8" and "int8 export refused" in result.stderr_text
        assert not bundle.exists()
        return
    assert result.returncode == 0, result.stderr_text
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == flag.strip("-") and manifest["torch"] is None
    cells = sorted((tiny_grid_cells / "猫").glob("*.png"))[:3]
    vectors = ClipModel(load_bundle(bundle, "grid")).embed_images([Image.open(p).convert("RGB") for p in cells])
    assert vectors.shape[0] == 3 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
