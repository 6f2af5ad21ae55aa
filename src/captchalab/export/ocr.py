"""Export a trained OCR run to a bundle (model.onnx + manifest.json), gated by a torch-vs-ONNX parity check."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from captchalab.data.cache import build_cache
from captchalab.data.labels import read_labelled_images
from captchalab.data.split import read_split
from captchalab.errors import CaptchalabError
from captchalab.evaluation import ocr_report
from captchalab.export.common import (
    check_bundle_destination,
    install_bundle,
    make_work_folder,
    output_layer,
    quantize_int8,
)
from captchalab.imaging import Preprocess
from captchalab.runtime.bundle import FORMAT_VERSION, onnx_session, sha256_file
from captchalab.runtime.decode import allowed_chars, decode
from captchalab.training.checkpoint import load_torch
from captchalab.training.ocr import load_run_model

log = logging.getLogger(__name__)
# int8 may move a few borderline images; refuse it when it costs more than this much test accuracy.
INT8_MAX_DROP = 0.005


def _split_images(run: Path, config: dict, split: str) -> tuple[np.ndarray, list[str]]:
    """The run's cached (N, H, W, C) images and labels for ``split`` (rebuilt if the cache was deleted; when the
    data is gone, the cache the training left is used as it is)."""
    keys = read_split(run / "split.json")[split]
    preprocess = Preprocess.from_dict(config["preprocess"])
    data = _run_data(run, config)
    if data is None:
        return _left_cache(run, config, split, keys, preprocess)
    items = {i.key: i for i in read_labelled_images(data, config["case_sensitive"])}
    cached = build_cache([items[k] for k in keys if k in items], preprocess, run / "cache", split)
    return cached.images, cached.labels  # memory-mapped: callers read only the rows they use


def _run_data(run: Path, config: dict) -> Path | None:
    """Where the run's data is now: as its best checkpoint records it, or as config.json does after a resume on
    moved data; None when neither is there."""
    places = [config.get("data")]
    try:
        places.append(json.loads((run / "config.json").read_text(encoding="utf-8")).get("data"))
    except (OSError, ValueError, AttributeError):
        pass
    return next((Path(p) for p in places if isinstance(p, str) and Path(p).exists()), None)


def _left_cache(
    run: Path, config: dict, split: str, keys: list[str], preprocess: Preprocess
) -> tuple[np.ndarray, list[str]]:
    """The newest cache of ``split`` in RUN/cache that holds only images of the split, at the run's input size."""
    wanted = set(keys)
    shape = (preprocess.height, preprocess.width, preprocess.channels)
    for meta_file in sorted((run / "cache").glob(f"{split}-*.json"), key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            images = np.load(meta_file.with_suffix(".npy"), mmap_mode="r")
        except (OSError, ValueError):
            continue
        if set(meta.get("keys", [])) <= wanted and images.shape[1:] == shape and len(images) == len(meta["labels"]):
            labels = meta["labels"] if config["case_sensitive"] else [label.lower() for label in meta["labels"]]
            return images, labels
    raise CaptchalabError(
        f"{config.get('data')}: the data of {run} is no longer there and {run / 'cache'} holds no {split} images; "
        "put the data back to export"
    )


def _onnx_predict(model_file: Path, batch: np.ndarray, config: dict) -> tuple[np.ndarray, list[str]]:
    session = onnx_session(model_file, providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {"image": batch[i : i + 512]})[0] for i in range(0, len(batch), 512)]
    log_probs = np.concatenate(outputs)
    return log_probs, [t for t, _ in decode(log_probs, config["charset"], config["decoder"])]


def export_ocr(
    run_dir: str | Path,
    out_dir: str | Path,
    int8: bool = False,
    training_data: str | None = None,
    training_command: str | None = None,
    licenses: list[dict] | None = None,
    alphabets: dict[str, float] | None = None,
) -> dict:
    """Write ``out_dir/model.onnx`` and ``manifest.json``; returns the manifest. ``alphabets`` (spec -> prior) are
    the captcha alphabets the training data mixed, for ``--charset auto``.

    The test split goes through torch and through ONNX; any difference in the decoded strings aborts the export.
    """
    run, out = Path(run_dir), Path(out_dir)
    check_bundle_destination(out)  # before the export, not after it
    model, config = load_run_model(run)
    for spec in alphabets or {}:
        try:
            allowed_chars(spec, config["charset"])
        except CaptchalabError:
            raise CaptchalabError(f"--alphabets {spec!r}: the model has none of these characters") from None
    preprocess = Preprocess.from_dict(config["preprocess"])
    images, labels = _split_images(run, config, "test")
    batch = preprocess.normalize(images)

    with torch.no_grad():
        torch_log_probs = np.concatenate(
            [model(torch.from_numpy(batch[i : i + 512])).numpy() for i in range(0, len(batch), 512)]
        )
    torch_texts = [t for t, _ in decode(torch_log_probs, config["charset"], config["decoder"])]

    work = make_work_folder(out)
    try:
        fp32 = work / "model.onnx"
        dummy = torch.from_numpy(batch[:2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                dummy,
                str(fp32),
                input_names=["image"],
                output_names=["log_probs"],
                dynamic_axes={"image": {0: "batch"}, "log_probs": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        onnx_log_probs, onnx_texts = _onnx_predict(fp32, batch, config)
        mismatches = [(lab, a, b) for lab, a, b in zip(labels, torch_texts, onnx_texts) if a != b]
        max_diff = float(np.abs(onnx_log_probs - torch_log_probs).max())
        if mismatches:
            raise CaptchalabError(
                f"export parity failed: ONNX and torch disagree on {len(mismatches)} of "
                f"{len(labels)} test images (e.g. {mismatches[0]}); max log-prob diff {max_diff:.2e}"
            )
        report = ocr_report(onnx_texts, labels, config["case_sensitive"])
        parity = {"images": len(labels), "mismatches": 0, "max_abs_logprob_diff": max_diff}
        precision = "fp32"
        if int8:
            int8_file = work / "model.int8.onnx"
            train_images, _ = _split_images(run, config, "train")
            quantize_int8(fp32, int8_file, "image", preprocess.normalize(train_images[:512]),
                          keep_fp32=(output_layer(fp32),))  # fmt: skip
            _, int8_texts = _onnx_predict(int8_file, batch, config)
            int8_report = ocr_report(int8_texts, labels, config["case_sensitive"])
            drop = report["exact_accuracy"] - int8_report["exact_accuracy"]
            if drop > INT8_MAX_DROP:
                raise CaptchalabError(
                    f"int8 export refused: test accuracy falls from {report['exact_accuracy']:.4f} "
                    f"to {int8_report['exact_accuracy']:.4f}; export without --int8"
                )
            parity["int8_agreement"] = sum(a == b for a, b in zip(onnx_texts, int8_texts)) / max(len(labels), 1)
            int8_file.replace(fp32)
            report, precision = int8_report, "int8"

        manifest = {
            "format_version": FORMAT_VERSION,
            "task": "ocr",
            "name": out.name,
            "files": {"model": "model.onnx"},
            "sha256": {"model.onnx": sha256_file(fp32)},
            "arch": config["arch"],
            "precision": precision,
            "input": {"name": "image", "layout": "NCHW", "dtype": "float32"},
            "preprocess": {**preprocess.to_dict(), "resize": "bilinear", "scale": "x / 255, then (x - mean) / std"},
            "charset": config["charset"],
            "case_sensitive": config["case_sensitive"],
            "decoder": config["decoder"],
            "max_length": config["max_length"],
            **({"alphabets": alphabets} if alphabets else {}),
            "metrics": {"test": report, "parity": parity},
            "training": {
                "data": training_data or config["data"],
                "command": training_command or " && ".join(config.get("commands", [])) or None,
                "options": config["options"],
                "epochs": _epochs(run),
            },
            "licenses": licenses or [],
        }
        install_bundle(work, out, manifest)
    finally:
        if work.exists():
            shutil.rmtree(work)
    log.info(
        "exported %s (%s): test accuracy %.4f, parity on %d images",
        out,
        precision,
        report["exact_accuracy"],
        len(labels),
    )
    return manifest


def _epochs(run: Path) -> int | None:
    last = run / "last.pt"
    return load_torch(last)["epoch"] if last.exists() else None
