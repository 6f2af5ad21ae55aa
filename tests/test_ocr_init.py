"""ocr train --init: starting a run from a run folder or an exported (batch-norm-folded) bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from captchalab.errors import CaptchalabError
from captchalab.models import create_ocr_model
from captchalab.training.ocr import load_run_model
from captchalab.training.ocr_init import initialise
from conftest import run_cli


def _fresh_model(config: dict, charset: str | None = None) -> tuple[torch.nn.Module, dict]:
    config = {**config, "charset": charset or config["charset"]}
    model = create_ocr_model("ctc", **{**config["model"], "n_classes": len(config["charset"])})
    return model, config


def _inputs(config: dict, count: int, seed: int) -> torch.Tensor:
    pre = config["preprocess"]
    rng = np.random.default_rng(seed)
    return torch.from_numpy(
        rng.uniform(-1, 1, (count, pre["channels"], pre["height"], pre["width"])).astype(np.float32)
    )


def test_bundle_is_unfolded_exactly_with_measured_batch_norms(tiny_run: Path, tiny_bundle: Path) -> None:
    source, config = load_run_model(tiny_run)
    model, _ = _fresh_model(config)
    measured = _inputs(config, 64, seed=0)
    initialise(model, config, str(tiny_bundle), lambda i: measured[i * 32 : (i + 1) * 32], steps=2)
    model.eval()
    probe = _inputs(config, 16, seed=1)
    with torch.no_grad():
        np.testing.assert_allclose(model(probe).numpy(), source(probe).numpy(), atol=2e-4)
    # the first batch norm's running statistics are those of its convolution's output over the measured batches
    conv, norm = model.features[0][0], model.features[0][1]
    with torch.no_grad():
        out = conv(measured).transpose(0, 1).reshape(conv.out_channels, -1).double()
    np.testing.assert_allclose(norm.running_mean.numpy(), out.mean(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.running_var.numpy(), out.var(1, unbiased=False).numpy(), rtol=1e-3, atol=1e-6)
    # so that training-mode normalisation starts close to the model's own function
    model.train()
    model.dropout.p = 0.0
    with torch.no_grad():
        agree = (model(measured).argmax(-1) == source(measured).argmax(-1)).float().mean().item()
    assert agree > 0.9


def test_run_init_keeps_known_characters_and_starts_new_ones_fresh(tiny_run: Path) -> None:
    source, config = load_run_model(tiny_run)
    model, config = _fresh_model(config, charset="x3210")  # 'x' is new, the digits in another order
    fresh_x = model.classifier.weight[1].detach().clone()
    initialise(model, config, str(tiny_run), lambda i: torch.zeros(0))
    old = source.classifier.weight.detach()
    torch.testing.assert_close(model.classifier.weight[0], old[0])  # blank
    for new_row, char in enumerate("x3210", start=1):
        expected = fresh_x if char == "x" else old[1 + source_chars(tiny_run).index(char)]
        torch.testing.assert_close(model.classifier.weight[new_row], expected)
    torch.testing.assert_close(model.features[0][0].weight, source.features[0][0].weight)


def source_chars(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["charset"]


def test_init_refuses_other_input_sizes_and_int8_without_fp32(
    tiny_run: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    _, config = load_run_model(tiny_run)
    model, _ = _fresh_model(config)
    other = {**config, "preprocess": {**config["preprocess"], "width": config["preprocess"]["width"] + 8}}
    with pytest.raises(CaptchalabError, match="reads 48x16 images"):
        initialise(model, other, str(tiny_bundle), lambda i: torch.zeros(0))
    int8 = tmp_path / "int8"
    shutil.copytree(tiny_bundle, int8)
    manifest = json.loads((int8 / "manifest.json").read_text())
    (int8 / "manifest.json").write_text(json.dumps({**manifest, "precision": "int8"}))
    with pytest.raises(CaptchalabError, match="without its fp32 model"):
        initialise(model, config, str(int8), lambda i: torch.zeros(0))


def test_cli_fine_tunes_from_a_bundle(tiny_data: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    run = tmp_path / "tuned"
    args = ["ocr", "train", str(tiny_data), "--out", str(run), "--init", str(tiny_bundle), "--max-epochs", "1"]
    done = run_cli(*args, "--batch-size", "32", "--size", "48x16", "--lr", "1e-4")
    assert f"initialised from {tiny_bundle}" in done.stderr_text
    assert json.loads((run / "config.json").read_text())["options"]["init"] == str(tiny_bundle)
    assert (run / "best.pt").is_file()
    # the default input size of --arch ctc is 112x32, not the bundle's: refused before anything is written
    refused = run_cli("ocr", "train", str(tiny_data), "--out", str(tmp_path / "no"), "--init", str(tiny_bundle),
                      check=False)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr_text.strip().splitlines() == [
        f"error: --init {tiny_bundle}: reads 48x16 images with 1 channel(s); this run 112x32 with 1: pass --size "
        "and --gray/--rgb to match"
    ]
    assert not (tmp_path / "no").exists()


def test_cli_shapes_the_ctc_model(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "shaped"
    run_cli("ocr", "train", str(tiny_data), "--out", str(run), "--max-epochs", "1", "--batch-size", "32", "--size",
            "48x16", "--channels", "8,8,16,24", "--seq-layers", "3")  # fmt: skip
    model, config = load_run_model(run)
    assert list(config["model"]["widths"]) == [8, 8, 16, 24] and config["model"]["seq_layers"] == 3
    assert len(model.sequence) == 3 and model.features[-1][0].out_channels == 24
    refused = run_cli("ocr", "train", str(tiny_data), "--out", str(tmp_path / "no"), "--arch", "resnet18-fixed",
                      "--seq-layers", "3", check=False)  # fmt: skip
    assert refused.returncode == 2 and "shape --arch ctc models" in refused.stderr_text
    assert not (tmp_path / "no").exists()
