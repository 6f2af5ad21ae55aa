"""Train a refiner of look-alike characters for an OCR bundle (``captchalab ocr refine``).

Crops are collected the way the runtime cuts them: the bundle reads every labelled image, and each character of the
group (e.g. '0Oo') that it emitted where the label has a character of the group too becomes a crop labelled with the
true character. A small CNN (models/ocr_refiner.py) learns them; the weight of the CTC model's own score next to the
CNN's is then chosen on held-out crops, and export/ocr_refine.py writes the refined bundle.

Work in progress lives beside the bundle, in ``<out>.refining/``: the collected crops (``crops.npz``), the job
(``job.json``) and the state after every epoch (``state.pt``), so that ``ocr refine --resume`` continues an
interrupted run (Ctrl-C, kill -9) from its last finished epoch. The folder is removed once the bundle is written.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from captchalab.data.labels import read_labelled_images
from captchalab.errors import CaptchalabError
from captchalab.imaging import load_image
from captchalab.models.ocr_refiner import RefinerNet
from captchalab.progress import track
from captchalab.runtime.ocr import OcrReader
from captchalab.runtime.ocr_refine import (
    SECOND_LOOK_MARGIN,
    SECOND_LOOK_SHIFTS,
    RefineSpec,
    candidates,
    sources_of,
)
from captchalab.training.checkpoint import load_torch, save_arrays, save_torch
from captchalab.training.distributed import resolve_device
from captchalab.training.refiner_init import CALIBRATION_CROPS, start_from

log = logging.getLogger(__name__)
MAIN_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)  # candidates for RefineSpec.main_weight, picked on held-out crops
# Held-out accuracies closer than this count as a tie, won by the larger weight (leaning on the CTC model is the
# safer side: with weight 0 rather than 0.25, the default refiner read 5 of 32,773 held-out crops better but lost
# 0.6 pt on the 5-6 char a-z0-9 development set, where the CTC model's alphabet context matters)
WEIGHT_TIE = 0.0005
# Held-out crops an alphabet (the classes allowed there, e.g. "0O" in A-Z0-9 captchas) needs for a weight of its own
MIN_ALPHABET_CROPS = 500


@dataclass
class RefineOptions:
    chars: str = "0Oo"
    epochs: int = 4
    batch_size: int = 256
    lr: float = 2e-3
    seed: int = 0
    valid_fraction: float = 0.1
    device: str = "auto"
    height: int = 60
    width: int = 48
    channels: tuple[int, int, int, int] = (32, 64, 96, 128)  # RefinerNet widths
    main_weight: float | None = None  # fixed RefineSpec.main_weight; None: chosen on the held-out crops
    main_weights: dict[str, float] = field(default_factory=dict)  # fixed weights of some alphabets (e.g. {"0O": 0})
    init: str | None = None  # a bundle whose refiner to start from (training/refiner_init.py); None: random weights


@dataclass
class Crops:
    """Collected training material. ``main``: the CTC model's best log-probability of each class over the
    character's steps (-inf for classes it could not output there), to weigh it against the CNN."""

    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) index into spec.chars
    main: np.ndarray  # (N, G) float32
    skipped: list[str] = field(default_factory=list)


def collect_crops(model: str | os.PathLike, data: str | os.PathLike, spec: RefineSpec, batch: int = 256) -> Crops:
    """Run ``model`` (a bundle or 'default', its refiner off) on the labelled images of ``data`` and cut a crop
    around every emitted character of ``spec.chars`` whose true character is of the group too (readings of the
    right length only, so that characters line up)."""
    reader = OcrReader(model, refine=False)
    group = spec.chars
    unknown = sorted(set(group) - set(reader.model_charset))
    if unknown:
        raise CaptchalabError(f"--chars: the model cannot output {''.join(unknown)!r}")
    items = read_labelled_images(data, reader.case_sensitive)
    collector = _Collector(spec)
    skipped: list[str] = []
    for start in track(range(0, len(items), batch), math.ceil(len(items) / batch), "collecting crops"):
        loaded, collector.truths = [], []
        for item in items[start : start + batch]:
            try:
                loaded.append(load_image(item.path))
                collector.truths.append(item.label)
            except CaptchalabError as exc:
                skipped.append(str(exc))
        if loaded:
            collector.images = loaded
            reader.run(reader.inputs(loaded), hook=collector)
    if skipped:
        log.warning("skipped %d unreadable images: %s", len(skipped), "; ".join(skipped[:20]))
    if len(set(collector.labels)) < 2:
        raise CaptchalabError(
            f"{data}: too few look-alike characters to learn from ({len(collector.labels)} crops of {group!r}, "
            f"{len(set(collector.labels))} kinds); label more images that contain them (ocr generate --favour helps)"
        )
    labels = np.asarray(collector.labels, dtype=np.int64)
    return Crops(np.stack(collector.crops), labels, np.stack(collector.main), skipped)


class _Collector:
    """Decoding hook that keeps a crop of each group character read where the label has one of the group too."""

    def __init__(self, spec: RefineSpec):
        self.spec = spec
        self.truths: list[str] = []  # labels and loaded images of the batch being read
        self.images: list[Image.Image] = []
        self.crops: list[np.ndarray] = []
        self.labels: list[int] = []
        self.main: list[np.ndarray] = []

    def __call__(self, texts: list[str], log_probs: np.ndarray, chars: str, rows: np.ndarray) -> list[str]:
        group, steps = self.spec.chars, log_probs.shape[1]
        found = candidates(texts, log_probs, chars, group)
        sources = sources_of(self.spec, [self.images[r] for r in rows], found)
        for c in found:
            truth = self.truths[rows[c.row]]
            if len(truth) != len(texts[c.row]) or truth[c.position] not in c.options:
                continue
            self.crops.append(c.crop(self.spec, sources[c.row], steps))
            self.labels.append(group.index(truth[c.position]))
            scores = [c.ctc_score(log_probs, chars, g) if g in c.options else -np.inf for g in group]
            self.main.append(np.asarray(scores, dtype=np.float32))
        return texts


def progress_folder(out: str | os.PathLike) -> Path:
    """Where ``ocr refine --out OUT`` keeps its work until the bundle is written."""
    out = Path(out)
    return out.with_name(out.name + ".refining")


def save_crops(crops: Crops, path: Path) -> None:
    save_arrays(path, images=crops.images, labels=crops.labels, main=crops.main,
                skipped=np.asarray(crops.skipped, dtype=str))  # fmt: skip


def load_crops(path: Path) -> Crops:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Crops(data["images"], data["labels"], data["main"], [str(s) for s in data["skipped"]])
    except (OSError, ValueError, KeyError) as exc:  # a damaged file: collecting again is the fix
        raise CaptchalabError(f"{path}: cannot read the collected crops ({exc}); delete {path.parent}") from None


def split_crops(crops: Crops, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / validation indices."""
    order = np.random.default_rng(seed).permutation(len(crops.labels))
    n_valid = max(1, int(round(len(order) * fraction)))
    if n_valid >= len(order):
        raise CaptchalabError(f"only {len(order)} crops: too few to hold some out for validation")
    return order[n_valid:], order[:n_valid]


def combined_accuracy(cnn: np.ndarray, main: np.ndarray, labels: np.ndarray, weight: float | np.ndarray) -> float:
    """Accuracy of the runtime's rule (CNN log-prob + weight x CTC log-prob, over the classes allowed there);
    ``weight``: one for all crops, or (N, 1) one per crop."""
    score = np.where(np.isfinite(main), cnn + weight * np.where(np.isfinite(main), main, 0.0), -np.inf)
    return float((score.argmax(-1) == labels).mean())


def train_refiner(
    crops: Crops,
    spec: RefineSpec,
    opts: RefineOptions,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    state_file: Path | None = None,
) -> tuple[RefinerNet, RefineSpec, dict]:
    """Fit the CNN on the crops ``train_idx`` (from random weights, or ``opts.init``'s refiner), choose the CTC
    model's weights (``main_weight``, ``main_weights``) on ``valid_idx`` (see ``split_crops``);
    returns (model on CPU, eval mode), the spec with those weights, and a report. With ``state_file``, the state is
    saved there after every epoch and, when the file exists, training continues from it (the same result as
    without the interruption)."""
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    device = resolve_device(opts.device)
    # The crops stay uint8 and each batch is normalised when it is drawn: as float32 they would take four times the
    # memory (7.5 GB for 655k crops of 60x48), and the arithmetic per value is the same either way.
    y_all = torch.from_numpy(crops.labels)
    valid_crops, main, labels = crops.images[valid_idx], crops.main[valid_idx], crops.labels[valid_idx]
    net = RefinerNet(len(spec.chars), opts.channels).to(device)
    steps_per_epoch = max(1, len(train_idx) // opts.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), opts.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, opts.lr, total_steps=opts.epochs * steps_per_epoch,
                                                   pct_start=0.1)  # fmt: skip
    history: list[dict] = []
    first_epoch, earlier_seconds, init = 0, 0.0, None
    if opts.init is not None and not (state_file is not None and state_file.exists()):
        init = start_from(net, opts.init, spec, crops.images[train_idx[:CALIBRATION_CROPS]], device)
        init["valid_accuracy_before"] = combined_accuracy(predict_log_probs(net, spec, valid_crops, device), main,
                                                          labels, 0.0)  # fmt: skip
        log.info("the refiner of %s reads %.4f of the held-out crops before training", opts.init,
                 init["valid_accuracy_before"])  # fmt: skip
    if state_file is not None and state_file.exists():
        state = load_torch(state_file)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        first_epoch, history, earlier_seconds = state["epoch"], state["history"], state["seconds"]
        init = state.get("init")
        log.info("resuming the refiner after epoch %d of %d", first_epoch, opts.epochs)
    started = time.time() - earlier_seconds
    for epoch in range(first_epoch, opts.epochs):
        net.train()
        order = rng.permutation(train_idx)
        total = 0.0
        for s in track(range(steps_per_epoch), steps_per_epoch, f"refiner epoch {epoch + 1}/{opts.epochs}"):
            batch = order[s * opts.batch_size : (s + 1) * opts.batch_size]
            x = _jitter(torch.from_numpy(spec.normalize(crops.images[batch])), rng).to(device)
            loss = F.cross_entropy(net(x), y_all[batch].to(device), label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        cnn = predict_log_probs(net, spec, valid_crops, device)
        accuracy = combined_accuracy(cnn, main, labels, 0.0)
        history.append({"epoch": epoch, "train_loss": round(total / steps_per_epoch, 4), "valid_accuracy": accuracy,
                        "seconds": round(time.time() - started, 1)})  # fmt: skip
        log.info("refiner epoch %d: loss %.4f, held-out crop accuracy %.4f", epoch, total / steps_per_epoch, accuracy)
        if state_file is not None:
            save_torch({"epoch": epoch + 1, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "numpy_rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(), "history": history, "init": init,
                        "seconds": time.time() - started}, state_file)  # fmt: skip
    if first_epoch >= opts.epochs:  # resumed after the last epoch: the held-out log-probs of the saved model
        cnn = predict_log_probs(net, spec, valid_crops, device)
    net = net.cpu().eval()  # cnn: the last epoch's held-out log-probs, from this very model
    by_weight = {w: combined_accuracy(cnn, main, labels, w) for w in MAIN_WEIGHTS}
    by_alphabet = weights_by_alphabet(cnn, main, labels, spec.chars)
    if opts.main_weight is None:  # one weight per alphabet with enough crops, and one for the rest
        weight, weights = choose_main_weight(by_weight), {k: v["chosen"] for k, v in by_alphabet.items()}
    else:
        weight, weights = opts.main_weight, {}
        by_weight.setdefault(weight, combined_accuracy(cnn, main, labels, weight))
    weights.update(opts.main_weights)
    chosen = RefineSpec(**{**spec.to_dict(), "main_weight": weight, "main_weights": weights})
    per_crop = np.array([chosen.weight_for(k) for k in allowed_classes(main, spec.chars)], dtype=np.float32)
    # what the second look would do (RefineSpec.shifts; off unless the manifest asks for it): for the report
    trial = chosen if chosen.shifts else replace(chosen, shifts=SECOND_LOOK_SHIFTS, shift_margin=SECOND_LOOK_MARGIN)
    looked = second_look(net, trial, valid_crops, cnn, main, per_crop[:, None], device)
    report = {
        "crops": {
            "train": len(train_idx),
            "valid": len(valid_idx),
            "per_class": {c: int((crops.labels == i).sum()) for i, c in enumerate(spec.chars)},
        },  # fmt: skip
        "valid_accuracy": {
            "ctc_model": combined_accuracy(np.zeros_like(cnn), main, labels, 1.0),
            "refiner": by_weight[0.0],
            "combined": combined_accuracy(cnn, main, labels, per_crop[:, None]),
            "combined_second_look": combined_accuracy(looked, main, labels, per_crop[:, None]),
        },  # fmt: skip
        "accuracy_by_main_weight": {str(w): a for w, a in by_weight.items()},
        "accuracy_by_alphabet": by_alphabet,
        "main_weight_from": _weights_from(opts),
        "history": history,
        "skipped_images": len(crops.skipped),
    }
    if init is not None:
        report["initialised_from"] = init
    return net, chosen, report


def _weights_from(opts: RefineOptions) -> str:
    """Where the CTC weights came from, for the report."""
    rest = "--main-weight" if opts.main_weight is not None else "held-out crops, per alphabet"
    given = ", ".join(opts.main_weights)
    return f"--main-weight for {given}; {rest} for the rest" if given else rest


def allowed_classes(main: np.ndarray, chars: str) -> np.ndarray:
    """(N, G) CTC scores of collected crops -> (N,) the classes each crop's alphabet allowed, e.g. "0O" (the key of
    ``RefineSpec.main_weights``)."""
    return np.array(["".join(c for c, ok in zip(chars, row) if ok) for row in np.isfinite(main)])


def weights_by_alphabet(cnn: np.ndarray, main: np.ndarray, labels: np.ndarray, chars: str) -> dict[str, dict]:
    """Held-out accuracy by CTC weight for each alphabet with at least MIN_ALPHABET_CROPS crops, and its choice."""
    allowed = allowed_classes(main, chars)
    found = {}
    for key in sorted(set(allowed.tolist()), key=lambda k: (len(k), k)):
        rows = allowed == key
        if rows.sum() < MIN_ALPHABET_CROPS:
            continue
        by_weight = {w: combined_accuracy(cnn[rows], main[rows], labels[rows], w) for w in MAIN_WEIGHTS}
        found[key] = {"crops": int(rows.sum()), "accuracy_by_main_weight": by_weight,
                      "chosen": choose_main_weight(by_weight)}  # fmt: skip
    return found


def choose_main_weight(by_weight: dict[float, float]) -> float:
    """The largest weight whose held-out accuracy is within WEIGHT_TIE of the best."""
    best = max(by_weight.values())
    return max(w for w, accuracy in by_weight.items() if accuracy >= best - WEIGHT_TIE)


def second_look(net: torch.nn.Module, spec: RefineSpec, images: np.ndarray, cnn: np.ndarray, main: np.ndarray,
                weight: np.ndarray, device: torch.device) -> np.ndarray:  # fmt: skip
    """The runtime's second look on collected crops: (N, G) log-probs ``cnn`` of (N, H, W) ``images``, with the
    probabilities of crops whose combined scores (``weight``: (N, 1)) are closer than ``spec.shift_margin`` averaged
    over ``spec.shifts``. The crops are shifted within themselves, edges repeated (the runtime cuts them from the
    image), so this is close to the runtime's figure, not equal to it."""
    score = np.where(np.isfinite(main), cnn + weight * np.where(np.isfinite(main), main, 0.0), -np.inf)
    top = np.sort(score, -1)
    unsure = np.flatnonzero(top[:, -1] - top[:, -2] < spec.shift_margin)
    if not spec.shifts or not len(unsure):
        return cnn
    probs = np.exp(cnn[unsure])
    padded = torch.from_numpy(images[unsure]).float()[:, None]
    for dx, dy in spec.shifts:
        moved = _shift(padded, dx, dy)[:, 0].round().to(torch.uint8).numpy()
        probs += np.exp(predict_log_probs(net, spec, moved, device))
    looked = cnn.copy()
    looked[unsure] = np.log(probs / (1 + len(spec.shifts)))
    return looked


def predict_log_probs(net: torch.nn.Module, spec: RefineSpec, crops: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, height, width) uint8 crops -> (N, classes) log-probabilities, normalised and run 1,024 at a time."""
    net.eval()
    with torch.no_grad():
        out = [F.log_softmax(net(torch.from_numpy(spec.normalize(crops[i : i + 1024])).to(device)), -1).cpu()
               for i in range(0, len(crops), 1024)]  # fmt: skip
    return torch.cat(out).numpy()


def _jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Shift a batch by up to 3 px sideways and 2 px up or down (edges repeated): the CTC step that places a crop
    is 4 source pixels wide, so the runtime's crops are off-centre by that much."""
    return _shift(x, int(rng.integers(-3, 4)), int(rng.integers(-2, 3)))


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(..., H, W) -> the window moved ``dx`` px right and ``dy`` down, edges repeated."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)), mode="replicate")
    return padded[..., abs(dy) + dy : abs(dy) + dy + h, abs(dx) + dx : abs(dx) + dx + w]
