"""Export a grid run to a bundle: image.onnx + text.onnx (dynamic batch, weights inside), vocab.txt, the torch
weights for further fine-tuning, and a manifest with preprocessing, tokenizer, logit scale and the calibrated
decision rule. The validation split goes through torch and ONNX first: any disagreement refuses the export.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from captchalab.errors import CaptchalabError
from captchalab.export.common import check_bundle_destination, install_bundle, make_work_folder, quantize_int8
from captchalab.export.grid_calibrate import calibrate
from captchalab.imaging import ClipPreprocess
from captchalab.runtime.bundle import FORMAT_VERSION, onnx_session, sha256_file
from captchalab.runtime.tokenizer import BertTokenizer
from captchalab.training.grid import load_run
from captchalab.training.grid_data import optional_cells, read_cells

log = logging.getLogger(__name__)
INT8_MAX_DROP = 0.005  # refuse int8 when it costs more than this share of simulated validation grids
PARITY_MAX_DIFF = {"fp32": 1e-3, "int8": None, "fp16": 2e-2}


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, D) unit rows
        return F.normalize(self.model.encode_image(image), dim=-1)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:  # (N, L) int64 -> (N, D) unit rows
        return F.normalize(self.model.encode_text(token_ids), dim=-1)


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=[name], output_names=["embedding"],
            dynamic_axes={name: {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip


def _run(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    session = onnx_session(path, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])


def _torch_embed(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i : i + 256])).numpy() for i in range(0, len(x), 256)])


def _check_parity(kind: str, torch_vectors: np.ndarray, onnx_vectors: np.ndarray, texts: np.ndarray) -> dict:
    """Same nearest text for every image, and (fp32/fp16) embeddings within tolerance."""
    max_diff = float(np.abs(torch_vectors - onnx_vectors).max())
    torch_pick = (torch_vectors @ texts.T).argmax(1)
    onnx_pick = (onnx_vectors @ texts.T).argmax(1)
    disagree = int((torch_pick != onnx_pick).sum())
    limit = PARITY_MAX_DIFF[kind]
    if (kind != "int8" and disagree) or (limit is not None and max_diff > limit):
        raise CaptchalabError(
            f"export parity failed ({kind}): torch and ONNX disagree on {disagree} of {len(torch_vectors)} validation "
            f"images; max embedding difference {max_diff:.2e}"
        )
    return {"images": len(torch_vectors), "nearest_text_disagreements": disagree, "max_abs_diff": max_diff}


def _fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def _read_aliases(path: str | Path | None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(aliases, related) per word from a words.json (``{"words": [{"word", "en", "related"}]}``) or a list of
    ``{"word"|"text", "en"|"aliases", "related"}``. Related words are look-alikes (猫 / 猫脸), never negatives."""
    if not path:
        return {}, {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CaptchalabError(f"{path}: cannot read aliases ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8
        raise CaptchalabError(f"{path}: cannot read aliases (not a JSON file: {exc})") from None
    entries = data.get("words") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise CaptchalabError(f'{path}: expected {{"words": [...]}} or a JSON list of words')
    aliases: dict[str, list[str]] = {}
    related: dict[str, list[str]] = {}
    for number, entry in enumerate(entries, 1):
        word = (entry.get("word") or entry.get("text")) if isinstance(entry, dict) else None
        names = (entry.get("aliases") or ([entry["en"]] if entry.get("en") else [])) if word else None
        others = entry.get("related", []) if word else None
        if not (
            isinstance(word, str)
            and isinstance(names, list)
            and isinstance(others, list)
            and all(isinstance(n, str) for n in names + others)
        ):
            raise CaptchalabError(
                f'{path}: word {number} needs a "word" (or "text") string, and "en" / "aliases" / "related" '
                "strings or lists of strings"
            )
        aliases.setdefault(word, []).extend(n for n in names if n)
        related.setdefault(word, []).extend(others)
    return aliases, related


def export_grid(
    run_dir: str | Path,
    out_dir: str | Path,
    precision: str = "fp32",
    dataset: str | Path | None = None,
    aliases: str | Path | None = None,
    training_data: str | None = None,
    training_command: str | None = None,
    licenses: list[dict] | None = None,
    include_weights: bool = True,
) -> dict:
    """Write the bundle to ``out_dir``; returns its manifest. ``precision``: fp32 (CPU), int8 (CPU), fp16 (GPU)."""
    if precision not in ("fp32", "int8", "fp16"):
        raise CaptchalabError(f"unknown precision {precision!r}: use fp32, int8 or fp16")
    run, out = Path(run_dir), Path(out_dir)
    check_bundle_destination(out)  # before the export, not after it
    alias_map, related = _read_aliases(aliases)  # before the work too
    model, state = load_run(run)
    config = _run_config(run)
    dataset = Path(dataset or config["dataset"])
    preprocess = ClipPreprocess.from_dict(state["preprocess"])
    split, cells = "valid", optional_cells(dataset, "valid", preprocess)
    if cells is None:
        split, cells = "train", read_cells(dataset, "train", preprocess)
    if len(set(cells.texts)) < 2:
        raise CaptchalabError(
            f"{dataset}: the {split} split has cells of one text only; calibrating the decision rule needs two or more"
        )
    images = preprocess.normalize(cells.pixels)
    known = sorted(set(state["texts"]) | set(cells.texts))
    tokenizer = BertTokenizer(run / "vocab.txt", state["context_length"])
    token_ids = tokenizer.encode(known)

    image_tower, text_tower = _ImageTower(model).eval(), _TextTower(model).eval()
    torch_images, torch_texts = _torch_embed(image_tower, images), _torch_embed(text_tower, token_ids)
    work = make_work_folder(out)
    try:
        _onnx_export(image_tower, torch.from_numpy(images[:2]), work / "image.onnx", "image")
        _onnx_export(text_tower, torch.from_numpy(token_ids[:2]), work / "text.onnx", "token_ids")
        onnx_images = _run(work / "image.onnx", "image", images)
        onnx_texts = _run(work / "text.onnx", "token_ids", token_ids)
        parity = {"fp32": _check_parity("fp32", torch_images, onnx_images, torch_texts)}
        vectors = dict(zip(known, onnx_texts, strict=True))
        logit_scale = float(model.logit_scale.exp().clamp(max=100).item())
        decision = calibrate(onnx_images, cells.texts, vectors, logit_scale, related)
        if precision == "int8":
            train = read_cells(dataset, "train", preprocess)
            sample = np.random.default_rng(0).permutation(len(train))[:512]
            calibration = preprocess.normalize(train.pixels[sample])
            quantize_int8(work / "image.onnx", work / "image.int8.onnx", "image", calibration)
            int8_images = _run(work / "image.int8.onnx", "image", images)
            parity["int8"] = _check_parity("int8", torch_images, int8_images, torch_texts)
            int8_decision = calibrate(int8_images, cells.texts, vectors, logit_scale, related)
            drop = _solve_rate(decision) - _solve_rate(int8_decision)
            if drop > INT8_MAX_DROP:
                raise CaptchalabError(
                    f"int8 export refused: simulated validation solve rate falls from {_solve_rate(decision):.4f} "
                    f"to {_solve_rate(int8_decision):.4f}; export without --int8"
                )
            (work / "image.int8.onnx").replace(work / "image.onnx")
            decision = int8_decision
        elif precision == "fp16":
            _fp16(work / "image.onnx")
            _fp16(work / "text.onnx")
            parity["fp16"] = _check_parity(
                "fp16", torch_images, _run(work / "image.onnx", "image", images), torch_texts
            )
        shutil.copyfile(run / "vocab.txt", work / "vocab.txt")
        files = {"image": "image.onnx", "text": "text.onnx", "vocab": "vocab.txt"}
        torch_info = None
        if include_weights:
            from safetensors.torch import save_file

            save_file(
                {k: v.half().contiguous() for k, v in model.state_dict().items()}, str(work / "weights.safetensors")
            )
            torch_info = {"kind": state["kind"], "config": state["config"], "weights": "weights.safetensors",
                          "dtype": "float16", "use": "captchalab grid train --init BUNDLE (fine-tuning)"}  # fmt: skip
        manifest = {
            "format_version": FORMAT_VERSION,
            "task": "grid",
            "name": out.name,
            "files": files,
            "sha256": {name: sha256_file(work / name) for name in files.values()},
            "arch": state["kind"],
            "precision": precision,
            "precision_note": "fp16 is meant for GPUs; on CPU use fp32 or int8" if precision == "fp16" else None,
            "embed_dim": int(onnx_images.shape[1]),
            "logit_scale": logit_scale,
            "image": {"input": "image", "layout": "NCHW", "dtype": "float32", "preprocess": preprocess.to_dict()},
            "text": {
                "input": "token_ids",
                "dtype": "int64",
                "tokenizer": "bert-wordpiece",
                "lowercase": True,
                "context_length": state["context_length"],
                "pad_id": 0,
            },  # fmt: skip
            "decision": decision,
            "prompts": [
                {"text": t, "aliases": sorted(set(alias_map.get(t, []))), "related": sorted(set(related.get(t, [])))}
                for t in sorted(state["texts"])
            ],
            "metrics": {"parity": parity, "validation_split": split, "training_report": _report(run)},
            "torch": torch_info,
            "training": {
                "data": training_data or str(dataset),
                "command": training_command or " && ".join(config.get("commands") or []) or config.get("command"),
                "options": config["options"],
                "steps": state["step"],
            },
            "licenses": licenses or [],
        }
        install_bundle(work, out, manifest)
    finally:
        if work.exists():
            shutil.rmtree(work)
    log.info("exported %s (%s): rule %s, simulated validation solve rate %.4f", out, precision, decision["rule"],
             _solve_rate(decision))  # fmt: skip
    return manifest


def _run_config(run: Path) -> dict:
    """The run's config.json (where its dataset is, how it was trained)."""
    path = run / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptchalabError(f"{path}: missing; not a complete grid training run") from None
    except OSError as exc:
        raise CaptchalabError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError):
        raise CaptchalabError(f"{path}: not valid JSON; not a complete grid training run") from None
    if not isinstance(config, dict) or not isinstance(config.get("dataset"), str) or "options" not in config:
        raise CaptchalabError(f"{path}: not the config of a grid training run (no dataset or options)")
    return config


def _solve_rate(decision: dict) -> float:
    return decision["rules"][decision["rule"]]["valid_solve_rate"]


def _report(run: Path) -> dict | None:
    path = run / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        report = None
    if not isinstance(report, dict):
        log.warning("%s: unreadable, the manifest goes without the training report", path)
        return None
    return {k: report[k] for k in ("best", "test") if k in report}
