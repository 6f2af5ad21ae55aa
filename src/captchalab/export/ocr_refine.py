"""Write an OCR bundle with a refiner of look-alike characters: the source bundle's files, ``refiner.onnx`` and the
manifest's ``refiner`` entry. The held-out crops go through torch and ONNX; any disagreement aborts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from captchalab.errors import CaptchalabError
from captchalab.export.common import bundle_copy, check_bundle_destination, install_bundle
from captchalab.runtime.bundle import Bundle, load_bundle, onnx_session, sha256_file
from captchalab.runtime.ocr_refine import RefineSpec

log = logging.getLogger(__name__)
REFINER_FILE = "refiner.onnx"
REFINER_FP32_FILE = "refiner.fp32.onnx"  # an int8 refiner's fp32 original (scripts/quantize-default-ocr-refiner.py)


def check_refinable(source: str | Path, out: str | Path) -> Bundle:
    """Before any work: ``source`` must be a CTC bundle and ``out`` new or an earlier bundle."""
    check_bundle_destination(Path(out))
    bundle = load_bundle(source, "ocr")
    if bundle.manifest.get("decoder") != "ctc-greedy":
        decoder = bundle.manifest.get("decoder")
        raise CaptchalabError(f"{bundle.path}: a refiner needs a CTC model (this bundle's decoder is {decoder!r})")
    return bundle


def export_refined_bundle(
    source: str | Path,
    out: str | Path,
    net: torch.nn.Module,
    spec: RefineSpec,
    parity_crops: np.ndarray,
    training: dict,
) -> dict:
    """Copy bundle ``source`` ('default' or a folder) to ``out`` with ``net`` as its refiner; returns the manifest.
    ``parity_crops``: (N, H, W) uint8 crops on which torch and ONNX must pick the same class."""
    bundle = check_refinable(source, out)
    out = Path(out)
    with bundle_copy(bundle.path, out, leave_out=(REFINER_FILE, REFINER_FP32_FILE)) as work:
        target = work / REFINER_FILE
        x = torch.from_numpy(spec.normalize(parity_crops))
        net = net.cpu().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, x[:2], str(target), input_names=["crop"], output_names=["logits"],
                              dynamic_axes={"crop": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)  # fmt: skip
        with torch.no_grad():
            expected = np.concatenate([net(x[i : i + 1024]).numpy() for i in range(0, len(x), 1024)])
        session = onnx_session(target, providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(None, {"crop": x[i : i + 1024].numpy()})[0] for i in range(0, len(x), 1024)])
        mismatches = int((expected.argmax(-1) != got.argmax(-1)).sum())
        max_diff = float(np.abs(expected - got).max())
        if mismatches:
            raise CaptchalabError(f"refiner export parity failed: ONNX and torch disagree on {mismatches} of "
                                  f"{len(x)} crops; max logit diff {max_diff:.2e}")  # fmt: skip
        manifest = dict(bundle.manifest)
        manifest["name"] = out.name
        manifest["files"] = {**manifest["files"], "refiner": REFINER_FILE}
        hashes = {k: v for k, v in manifest.get("sha256", {}).items() if k != REFINER_FP32_FILE}
        manifest["sha256"] = {**hashes, REFINER_FILE: sha256_file(target)}
        parity = {"crops": len(x), "mismatches": 0, "max_abs_logit_diff": max_diff}
        manifest["refiner"] = {**spec.to_dict(), "training": training, "parity": parity}
        install_bundle(work, out, manifest)
    log.info("wrote %s with a refiner of %r (main weight %.2f)", out, spec.chars, spec.main_weight)
    return manifest
