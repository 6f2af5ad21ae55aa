"""Start ``ocr refine`` from the refiner of an existing bundle (``--init``) instead of random weights: more training
on new data without paying again for what the old refiner learnt.

A bundle ships its refiner as ONNX, where the exporter folded each batch norm into the convolution before it
(weight W, bias b). The torch network gets W back, and its batch norms are set so that they change nothing in eval
mode while their running statistics are the real ones of the new crops: in train mode a batch is then normalised
by about the statistics that eval mode assumes, so the first steps do not throw the old refiner away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captchalab.errors import CaptchalabError
from captchalab.export.ocr_refine import REFINER_FP32_FILE
from captchalab.models.ocr_refiner import RefinerNet
from captchalab.runtime.bundle import load_bundle, onnx_session
from captchalab.runtime.ocr_refine import RefineSpec

log = logging.getLogger(__name__)
CALIBRATION_CROPS = 2048  # crops whose statistics the batch norms start from
_GEOMETRY = ("chars", "height", "width", "mean", "std")


@dataclass
class InitSource:
    """The float weights of a bundle's refiner, as the exporter folded them."""

    file: Path
    entry: dict  # its manifest ``refiner`` entry
    convs: list[tuple[np.ndarray, np.ndarray]]  # (weight (C_out, C_in, 3, 3), bias (C_out,)) per convolution
    fc_weight: np.ndarray  # (classes, C)
    fc_bias: np.ndarray


def init_source(source: str, spec: RefineSpec, widths: tuple[int, ...]) -> InitSource:
    """The refiner of bundle ``source``, checked against this run's ``spec`` and ``widths`` (cheap: called before
    the crops are collected)."""
    import onnx
    from onnx import numpy_helper

    bundle = load_bundle(source, "ocr")
    entry = bundle.manifest.get("refiner")
    if not entry:
        raise CaptchalabError(f"--init {source}: {bundle.path} has no refiner to start from")
    theirs = RefineSpec.from_dict(entry)
    if any(getattr(theirs, k) != getattr(spec, k) for k in _GEOMETRY):
        raise CaptchalabError(
            f"--init {source}: its refiner reads {theirs.chars!r} on {theirs.height}x{theirs.width} crops; this run "
            f"needs {spec.chars!r} on {spec.height}x{spec.width} (give the same --chars)"
        )
    file = bundle.path / REFINER_FP32_FILE  # an int8 refiner keeps its fp32 original beside it
    file = file if file.is_file() else bundle.file("refiner")
    graph = onnx.load(str(file)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    named = [n.input[1:3] for n in convs + gemms]
    if len(convs) != len(widths) or len(gemms) != 1 or any(len(k) != 2 or not set(k) <= set(weights) for k in named):
        raise CaptchalabError(f"--init {source}: {file} is not a float refiner of this network (an int8 one without "
                              f"its fp32 original?)")  # fmt: skip
    fc_weight, fc_bias = (weights[name] for name in gemms[0].input[1:3])
    if not any(a.name == "transB" and a.i == 1 for a in gemms[0].attribute):
        fc_weight = fc_weight.T
    found = InitSource(file, entry, [(weights[n.input[1]], weights[n.input[2]]) for n in convs], fc_weight, fc_bias)
    theirs_widths = tuple(w.shape[0] for w, _ in found.convs)
    if theirs_widths != tuple(widths):
        given = ",".join(map(str, theirs_widths))
        raise CaptchalabError(f"--init {source}: its refiner has the widths {given}; give --channels {given}")
    return found


def start_from(net: RefinerNet, source: str, spec: RefineSpec, sample: np.ndarray, device: torch.device) -> dict:
    """Load the refiner of bundle ``source`` into ``net`` (on ``device``), batch norms calibrated on ``sample``
    ((N, H, W) uint8 training crops); returns where it came from, for the manifest."""
    layers = [m for m in net.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, nn.BatchNorm2d)]
    init = init_source(source, spec, tuple(m.out_channels for m in layers))
    shapes = [tuple(w.shape) for w, _ in init.convs] + [tuple(init.fc_weight.shape)]
    if shapes != [tuple(m.weight.shape) for m in layers] + [tuple(net.classifier.weight.shape)]:
        raise CaptchalabError(f"--init {source}: its refiner's layers have other shapes than this run's")
    net.to(device)
    with torch.no_grad():
        for (w, b), layer, norm in zip(init.convs, layers, norms):  # batch norm = identity + the folded bias, for now
            layer.weight.copy_(torch.tensor(w))
            norm.reset_running_stats()
            norm.running_var.fill_(1.0 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.tensor(b))
        net.classifier.weight.copy_(torch.tensor(init.fc_weight))
        net.classifier.bias.copy_(torch.tensor(init.fc_bias))
    _calibrate(net, layers, norms, spec, sample[:CALIBRATION_CROPS], device)
    _check_same_as_onnx(net, init.file, spec, sample[:256], device)
    training = init.entry.get("training", {})
    provenance = {k: training.get(k) for k in ("data", "command", "valid_accuracy", "initialised_from")}
    provenance = {"bundle": source, "file": init.file.name, **provenance}
    log.info("starting from the refiner of %s (%s)", source, init.file.name)
    return {k: v for k, v in provenance.items() if v is not None}


def _calibrate(net: RefinerNet, layers: list[nn.Conv2d], norms: list[nn.BatchNorm2d], spec: RefineSpec,
               sample: np.ndarray, device: torch.device) -> None:  # fmt: skip
    """Give each batch norm the mean and variance of its convolution's output on ``sample``, with its affine part
    undoing them (eval mode: the same output as before)."""
    sums = [torch.zeros(m.out_channels, dtype=torch.float64, device=device) for m in layers]
    squares = [torch.zeros_like(s) for s in sums]
    counts = [0] * len(layers)

    def keep(k: int):
        def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:  # out: (B, C, H', W')
            out = out.double()
            sums[k] += out.sum((0, 2, 3))
            squares[k] += (out * out).sum((0, 2, 3))
            counts[k] += out.shape[0] * out.shape[2] * out.shape[3]

        return hook

    handles = [layer.register_forward_hook(keep(k)) for k, layer in enumerate(layers)]
    net.eval()
    with torch.no_grad():
        for i in range(0, len(sample), 256):
            net(torch.from_numpy(spec.normalize(sample[i : i + 256])).to(device))
        for handle in handles:
            handle.remove()
        for k, norm in enumerate(norms):
            mean = sums[k] / counts[k]
            var = (squares[k] / counts[k] - mean * mean).clamp_min(0.0)
            folded_bias = norm.bias.double()
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_((var + norm.eps).sqrt())
            norm.bias.copy_(mean + folded_bias)


def _check_same_as_onnx(net: RefinerNet, file: Path, spec: RefineSpec, crops: np.ndarray, device: torch.device) -> None:
    """The rebuilt network must give the ONNX refiner's logits (a gate: a wrong mapping would train from noise)."""
    x = spec.normalize(crops)
    session = onnx_session(file, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: x})
    net.eval()
    with torch.no_grad():
        got = net(torch.from_numpy(x).to(device)).cpu().numpy()
    diff = float(np.abs(got - expected).max())
    if diff > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise CaptchalabError(f"--init: the refiner rebuilt from {file} differs from it (max logit diff {diff:.2e})")
