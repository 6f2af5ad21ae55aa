"""Start an OCR run from the weights of another model (``ocr train --init``): a run folder or an exported bundle.

A bundle holds ONNX, where the export has folded every batch norm into the convolution before it. Such a model is
unfolded: each convolution takes the folded weight, and its batch norm is set so that it gives back exactly the
folded bias in eval mode *and* normalises as in training: its running statistics are measured on the new run's own
training images, and its scale and shift undo that normalisation (scale = std, shift = bias + mean). Training then
goes on as in any run, with batch statistics close to the running ones from the first step.

Classes are matched by character: a character of the new charset that the source model knows keeps its classifier
row (and the CTC blank its own); one it does not know starts from the fresh initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captchalab.errors import CaptchalabError
from captchalab.runtime.bundle import load_bundle
from captchalab.training.checkpoint import load_torch

log = logging.getLogger(__name__)


def load_init_source(spec: str) -> tuple[dict[str, torch.Tensor] | None, list[tuple[np.ndarray, np.ndarray]], dict]:
    """``default``, a bundle folder or a run folder -> (run state dict or None, ONNX conv weights in graph order, info).

    ``info`` has the source's ``charset``, ``preprocess`` and ``arch``; exactly one of the first two is filled."""
    path = Path(spec)
    if spec != "default" and (path / "best.pt").is_file():
        state = load_torch(path / "best.pt")
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "model" not in state:
            raise CaptchalabError(f"{path / 'best.pt'}: not a captchalab OCR checkpoint")
        config = state["config"]
        return state["model"], [], {k: config.get(k) for k in ("charset", "preprocess", "arch")}
    if spec != "default" and not (path / "manifest.json").is_file():
        raise CaptchalabError(
            f"--init {spec}: neither a training run (no best.pt) nor a model bundle (no manifest.json)"
        )
    bundle = load_bundle(spec, "ocr")
    manifest = bundle.manifest
    onnx_file = bundle.path / "model.fp32.onnx"
    if not onnx_file.is_file():
        onnx_file = bundle.file("model")
    if manifest.get("precision", "fp32") != "fp32" and onnx_file.name != "model.fp32.onnx":
        raise CaptchalabError(
            f"--init {spec}: an int8 bundle without its fp32 model (model.fp32.onnx) cannot be trained"
        )
    return None, _onnx_convolutions(onnx_file), {k: manifest.get(k) for k in ("charset", "preprocess", "arch")}


def _onnx_convolutions(file: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every Conv node of an ONNX model, in graph order (bias zeros when it has none)."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(file)).graph
    except Exception as exc:  # onnx raises DecodeError and friends from protobuf
        raise CaptchalabError(f"{file}: not a readable ONNX model ({type(exc).__name__})") from None
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[1] not in weights:
            raise CaptchalabError(f"{file}: convolution {node.name} has no stored weight (a quantised model?)")
        weight = weights[node.input[1]]
        bias = weights[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0])
        convs.append((weight, bias))
    return convs


def check_init(spec: str, config: dict) -> tuple:
    """The source of ``spec`` (see load_init_source) after checking that it fits the run ``config`` (arch,
    preprocess, charset); CaptchalabError naming the mismatch otherwise. Cheap: a run calls it before caching."""
    if config["arch"] != "ctc":
        raise CaptchalabError(f"--init works for --arch ctc runs, not {config['arch']}")
    state, convs, info = load_init_source(spec)
    if info.get("arch") not in (None, config["arch"]):
        raise CaptchalabError(f"--init {spec}: is a {info['arch']} model; this run trains --arch {config['arch']}")
    source_pre, pre = info.get("preprocess") or {}, config["preprocess"]
    size = {k: source_pre.get(k) for k in ("width", "height", "channels")}
    if size != {k: pre[k] for k in size}:
        raise CaptchalabError(
            f"--init {spec}: reads {size['width']}x{size['height']} images with {size['channels']} channel(s); "
            f"this run {pre['width']}x{pre['height']} with {pre['channels']}: pass --size and --gray/--rgb to match"
        )
    _class_rows(info.get("charset") or "", config["charset"])
    return state, convs, info


def initialise(
    model: nn.Module, config: dict, spec: str, batches: Callable[[int], torch.Tensor], steps: int = 32
) -> None:
    """Load the weights of ``spec`` into ``model`` (built from the run ``config``); ``batches(i)`` gives the i-th
    (B, C, H, W) batch of training input, used to measure the batch-norm statistics of an unfolded ONNX model."""
    state, convs, info = check_init(spec, config)
    rows = _class_rows(info["charset"], config["charset"])
    if state is not None:
        _load_state(model, state, rows, spec)
    else:
        _load_unfolded(model, convs, rows, spec)
        _measure_batch_norms(model, batches, steps)
    new = [c for c, r in zip(config["charset"], rows[1:]) if r is None]
    log.info(
        "initialised from %s%s",
        spec,
        f"; {len(new)} characters it does not know start fresh: {''.join(new)}" if new else "",
    )


def _class_rows(source_chars: str, chars: str) -> list[int | None]:
    """For every output class of the new model (blank first), its row in the source model, or None."""
    where = {c: i + 1 for i, c in enumerate(source_chars)}
    rows = [0, *(where.get(c) for c in chars)]
    if all(r is None for r in rows[1:]):
        raise CaptchalabError(f"--init: the model knows none of this run's characters ({chars!r})")
    return rows


def _copy_classes(target: torch.Tensor, source: torch.Tensor, rows: list[int | None]) -> None:
    with torch.no_grad():
        for new, old in enumerate(rows):
            if old is not None:
                target[new] = source[old]


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], rows: list[int | None], spec: str) -> None:
    own = model.state_dict()  # shares storage with the model: copying into it loads the weights
    head = {"classifier.weight", "classifier.bias"}
    for name, tensor in own.items():
        source = state.get(name)
        if source is None or (name not in head and source.shape != tensor.shape):
            raise CaptchalabError(f"--init {spec}: its layer {name} does not fit this run's model (other options?)")
        if name in head:
            _copy_classes(tensor, source, rows)
        else:
            tensor.copy_(source)


def _conv_norm_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """Every convolution of the model in definition order, with the batch norm that follows it (or None)."""
    modules = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d))]
    pairs = []
    for i, module in enumerate(modules):
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            following = modules[i + 1] if i + 1 < len(modules) else None
            pairs.append((module, following if isinstance(following, (nn.BatchNorm1d, nn.BatchNorm2d)) else None))
    return pairs


def _load_unfolded(model: nn.Module, convs: list, rows: list[int | None], spec: str) -> None:
    pairs = _conv_norm_pairs(model)
    classifier = model.classifier  # check_init allows --arch ctc only
    if len(pairs) != len(convs):
        raise CaptchalabError(f"--init {spec}: its {len(convs)} convolutions do not fit this run's {len(pairs)}")
    with torch.no_grad():
        for (conv, norm), (weight, bias) in zip(pairs, convs):
            weight, bias = torch.from_numpy(weight.copy()).float(), torch.from_numpy(bias.copy()).float()
            if conv is classifier:
                if weight.shape[1:] != conv.weight.shape[1:]:
                    raise CaptchalabError(f"--init {spec}: its classifier does not fit this run's model")
                _copy_classes(conv.weight, weight, rows)
                _copy_classes(conv.bias, bias, rows)
                continue
            if weight.shape != conv.weight.shape or norm is None:
                raise CaptchalabError(
                    f"--init {spec}: a convolution of shape {tuple(weight.shape)} does not fit this run's model "
                    f"({tuple(conv.weight.shape)}); were other --channels or --arch options used?"
                )
            conv.weight.copy_(weight)
            # identity for now (exact in eval mode); _measure_batch_norms gives it real statistics
            norm.running_mean.zero_()
            norm.running_var.fill_(1 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(bias)


@torch.no_grad()
def _measure_batch_norms(model: nn.Module, batches: Callable[[int], torch.Tensor], steps: int) -> None:
    """Running statistics of every batch norm's input over ``steps`` batches, with the function kept (eval mode)."""
    norms = [norm for _, norm in _conv_norm_pairs(model) if norm is not None]
    sums = {id(n): [0.0, 0.0, 0] for n in norms}

    def record(norm: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1).double()  # (C, everything else)
        total = sums[id(norm)]
        total[0] = total[0] + x.sum(1)
        total[1] = total[1] + (x * x).sum(1)
        total[2] += x.shape[1]

    hooks = [n.register_forward_pre_hook(record) for n in norms]
    was_training = model.training
    model.eval()
    try:
        for step in range(steps):
            model(batches(step))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for norm in norms:
        total, squares, count = sums[id(norm)]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        shift = norm.bias.double().clone()
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.weight.copy_((var + norm.eps).sqrt())
        norm.bias.copy_(shift + mean)
