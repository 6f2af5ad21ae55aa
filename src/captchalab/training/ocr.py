"""Train an OCR model on a labelled folder or labels file: split, cache, epochs, early stopping, report.

Files in the run folder: config.json, split.json, cache/, last.pt (every epoch), best.pt (best validation),
log.csv, accuracy.png, report.json. Every write is atomic; ``resume=True`` continues from last.pt.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captchalab.data.cache import CachedSplit, build_cache, remove_other_caches
from captchalab.data.charset import Charset
from captchalab.data.labels import read_labelled_images
from captchalab.data.split import read_split, split_keys, write_split
from captchalab.errors import CaptchalabError
from captchalab.evaluation import ocr_report
from captchalab.folders import make_folder, rmdir_if_empty
from captchalab.imaging import Preprocess
from captchalab.models import OCR_ARCHS, create_ocr_model, model_config_dict
from captchalab.progress import track
from captchalab.runtime.decode import check_charset, decode
from captchalab.training import distributed
from captchalab.training.checkpoint import load_torch, save_torch, write_csv, write_json
from captchalab.training.ocr_init import check_init, initialise
from captchalab.training.plots import plot_curves

log = logging.getLogger(__name__)


@dataclass
class OcrTrainOptions:
    arch: str = "ctc"
    patience: int = 20
    max_epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    case_sensitive: bool = True
    charset: str | None = None  # None: derived from the labels
    height: int | None = None  # None: the architecture's default input size
    width: int | None = None
    channels: int | None = None
    augment: bool = True
    max_minutes: float | None = None  # stop after the epoch that crosses this much training time
    # plateau: halve lr when validation stalls; cosine: anneal to 0 over max_epochs (or max_minutes, if sooner)
    schedule: str = "plateau"
    device: str = "auto"
    workers: int | None = None
    model: dict = field(default_factory=dict)  # extra model config fields (e.g. widths for a tiny model)
    init: str | None = None  # start from this model (a run folder, a bundle or "default") instead of at random

    def check(self) -> None:
        """CaptchalabError naming the first option a run could not use (before anything is written)."""
        if self.arch not in OCR_ARCHS:
            raise CaptchalabError(f"unknown --arch {self.arch!r}; choose one of {', '.join(OCR_ARCHS)}")
        if self.schedule not in ("plateau", "cosine"):
            raise CaptchalabError(f"unknown --schedule {self.schedule!r}: use plateau or cosine")
        for option, value, least in (
            ("--batch-size", self.batch_size, 1),
            ("--max-epochs", self.max_epochs, 1),
            ("--patience", self.patience, 1),
            ("--workers", 1 if self.workers is None else self.workers, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise CaptchalabError(f"{option} must be a whole number of at least {least}, not {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CaptchalabError(f"--lr must be a positive number, not {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise CaptchalabError(f"weight decay must be a number >= 0, not {self.weight_decay!r}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise CaptchalabError(f"--max-minutes must be a positive number, not {self.max_minutes!r}")
        if len(self.ratios) != 3 or not all(math.isfinite(r) and r > 0 for r in self.ratios):
            raise CaptchalabError(
                f"--split {','.join(f'{r:g}' for r in self.ratios)}: training needs all three of train, valid "
                "(early stopping) and test (the report) above 0"
            )


class _Batches:
    """Mini-batches from a cached split: (B, C, H, W) float input and encoded targets."""

    def __init__(self, split: CachedSplit, charset: Charset, preprocess: Preprocess):
        self.split, self.preprocess = split, preprocess
        self.targets = [
            torch.tensor([i + 1 for i in charset.encode(label)], dtype=torch.long) for label in split.labels
        ]

    def __len__(self) -> int:
        return len(self.split.labels)

    def inputs(self, indices: np.ndarray, augment: bool, rng: np.random.Generator | None = None) -> torch.Tensor:
        batch = np.ascontiguousarray(self.split.images[indices])
        if augment and rng is not None:
            batch = _augment(batch, rng)
        return torch.from_numpy(self.preprocess.normalize(batch))


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cheap, label-preserving jitter on (B, H, W, C) uint8: shifts of a few pixels, contrast and brightness."""
    b, h, w, _ = batch.shape
    pad = 3
    padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))
    out = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)]).astype(np.float32)
    contrast = rng.uniform(0.7, 1.3, size=(b, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-25, 25, size=(b, 1, 1, 1)).astype(np.float32)
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((out - mean) * contrast + mean + brightness, 0, 255).astype(np.uint8)


def _loss_fn(decoder: str) -> nn.Module:
    return nn.CTCLoss(blank=0, zero_infinity=True) if decoder == "ctc-greedy" else nn.NLLLoss()


def _loss(criterion: nn.Module, decoder: str, log_probs: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
    """log_probs: (B, T, K+1). CTC takes concatenated targets; fixed pads every label to T with class 0."""
    device = log_probs.device
    if decoder == "ctc-greedy":
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        steps = torch.full((log_probs.shape[0],), log_probs.shape[1], dtype=torch.long)
        return criterion(log_probs.transpose(0, 1).float(), torch.cat(targets).to(device), steps, lengths)
    padded = torch.zeros(log_probs.shape[0], log_probs.shape[1], dtype=torch.long)
    for row, target in enumerate(targets):
        padded[row, : len(target)] = target
    return criterion(log_probs.reshape(-1, log_probs.shape[-1]), padded.reshape(-1).to(device))


@torch.no_grad()
def predict_cached(
    model: nn.Module, batches: _Batches, chars: str, decoder: str, device: torch.device, batch_size: int = 512
) -> list[str]:
    """Greedy predictions for a whole cached split (model in eval mode)."""
    model.eval()
    texts: list[str] = []
    for start in range(0, len(batches), batch_size):
        idx = np.arange(start, min(start + batch_size, len(batches)))
        log_probs = model(batches.inputs(idx, augment=False).to(device)).float().cpu().numpy()
        texts += [text for text, _ in decode(log_probs, chars, decoder)]
    return texts


def _prepare(
    data: Path, run: Path, opts: OcrTrainOptions, reuse_split: bool, owner: bool = True
) -> tuple[dict, dict[str, CachedSplit]]:
    """Read labels, fix the charset, the split and the caches; returns the run config and cached splits. The
    ``owner`` (rank 0) removes the run's cache files that this split and input size do not use."""
    items = read_labelled_images(data, opts.case_sensitive)
    charset = Charset(opts.charset) if opts.charset else Charset.from_labels(i.label for i in items)
    for item in items:
        if charset.unknown(item.label):
            raise CaptchalabError(
                f"{item.path}: label {item.label!r} has characters outside the charset: {charset.unknown(item.label)!r}"
            )
    _, _, decoder, (dh, dw, dc) = OCR_ARCHS[opts.arch]
    preprocess = Preprocess(opts.height or dh, opts.width or dw, opts.channels or dc)
    # an input too narrow for the labels is refused before the split and the (slow) caches are written
    longest = max(len(i.label) for i in items)
    _build_model({"arch": opts.arch, "decoder": decoder, "preprocess": preprocess.to_dict(),
                  "charset": charset.chars, "max_length": longest}, opts.model)  # fmt: skip
    if opts.init:
        check_init(opts.init, {"arch": opts.arch, "preprocess": preprocess.to_dict(), "charset": charset.chars})
    split_file = run / "split.json"
    if reuse_split and split_file.exists():
        split = read_split(split_file)
    else:
        split = split_keys([i.key for i in items], opts.ratios, opts.seed)
        write_split(split_file, split, opts.seed, opts.ratios)

    by_key = {i.key: i for i in items}
    missing = [k for keys in split.values() for k in keys if k not in by_key]
    if missing:
        raise CaptchalabError(f"{split_file}: lists {len(missing)} images no longer in the dataset, e.g. {missing[0]}")
    caches = {
        name: build_cache([by_key[k] for k in keys], preprocess, run / "cache", name, opts.workers)
        for name, keys in split.items()
    }
    if owner:
        remove_other_caches(run / "cache", list(caches.values()))
    skipped = [s for c in caches.values() for s in c.skipped]
    if skipped:
        log.warning(
            "skipped %d unreadable images: %s",
            len(skipped),
            "; ".join(skipped[:20]) + (f"; ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""),
        )
    max_length = max(len(label) for c in caches.values() for label in c.labels)
    config = {
        "arch": opts.arch,
        "decoder": decoder,
        "charset": charset.chars,
        "case_sensitive": opts.case_sensitive,
        "max_length": max_length,
        "preprocess": preprocess.to_dict(),
        "data": str(Path(data).resolve()),
        "options": {k: v for k, v in asdict(opts).items() if k != "model"},
    }
    return config, caches


def _build_model(config: dict, model_overrides: dict) -> nn.Module:
    pre = config["preprocess"]
    model = create_ocr_model(
        config["arch"],
        in_channels=pre["channels"],
        height=pre["height"],
        width=pre["width"],
        n_classes=len(config["charset"]),
        positions=config["max_length"],
        **model_overrides,
    )
    if config["decoder"] == "ctc-greedy" and model.time_steps < 2 * config["max_length"] - 1:
        raise CaptchalabError(
            f"input width {pre['width']} gives {model.time_steps} CTC steps, too few for labels of "
            f"{config['max_length']} characters; use a wider --size"
        )
    return model


def train_ocr(
    data: str | Path,
    run_dir: str | Path,
    opts: OcrTrainOptions | None = None,
    resume: bool = False,
    command: str | None = None,
    budget: dict | None = None,
) -> dict:
    """Train (or resume) a run; returns the test report. See the module docstring for the files written.

    On resume the saved options are used; ``budget`` may change ``max_epochs``, ``patience`` or ``max_minutes``
    (e.g. to train a finished run longer). ``command`` is recorded in config.json (all commands of the run).
    """
    run = Path(run_dir)
    if resume and not (run / "config.json").exists():
        raise CaptchalabError(f"{run}: nothing to resume (no config.json); start a run without --resume")
    if resume:
        saved = _read_run_config(run)
        opts = _saved_options(run, saved, budget or {})
        data = _data_to_resume(run, Path(saved["data"]), Path(data))
        commands = [*saved.get("commands", []), command]
    elif (run / "last.pt").exists():
        raise CaptchalabError(f"{run}: already holds a training run; pass --resume to continue it or pick a new --out")
    else:
        commands = [command]
    opts = opts or OcrTrainOptions()
    opts.check()
    ctx = distributed.setup(opts.device)
    torch.manual_seed(opts.seed)
    fresh = not run.exists()
    make_folder(run, "run folder", hint="; pick another --out")

    # Rank 0 writes the split and the cache first; other ranks then reuse both (no two writers on one file).
    if not ctx.is_main:
        distributed.barrier(ctx)
    try:
        config, caches = _prepare(Path(data), run, opts, reuse_split=resume or not ctx.is_main, owner=ctx.is_main)
    except CaptchalabError:  # bad data: a new run leaves no split behind (finished caches stay for the next try)
        if fresh and ctx.is_main:
            (run / "split.json").unlink(missing_ok=True)
            rmdir_if_empty(run / "cache")
            rmdir_if_empty(run)
        raise
    if ctx.is_main:
        distributed.barrier(ctx)
    model = _build_model(config, opts.model).to(ctx.device)
    config["model"] = model_config_dict(model)
    config["model_overrides"] = opts.model
    config["commands"] = [c for c in commands if c]
    if ctx.is_main:
        write_json(run / "config.json", config)

    charset, decoder = Charset(config["charset"]), config["decoder"]
    preprocess = Preprocess.from_dict(config["preprocess"])
    train, valid, test = (_Batches(caches[n], charset, preprocess) for n in ("train", "valid", "test"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    if opts.schedule == "cosine":
        scheduler = None  # set by hand from progress, so a time budget or a new epoch budget on resume just works
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(2, opts.patience // 4)
        )
    criterion = _loss_fn(decoder)
    history: list[dict] = []
    best_acc, best_epoch, start_epoch = -1.0, 0, 1
    if resume and (run / "last.pt").exists():
        state = load_torch(run / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history, best_acc, best_epoch = state["history"], state["best_acc"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        log.info("resuming %s after epoch %d (best valid %.4f at epoch %d)", run, state["epoch"], best_acc, best_epoch)
    elif opts.init:
        order = np.random.default_rng(opts.seed).permutation(len(train))
        step = min(opts.batch_size, 256)
        initialise(model, config, opts.init, lambda i: train.inputs(order[i * step : (i + 1) * step], augment=False).to(
            ctx.device), steps=max(1, min(32, len(train) // step)))  # fmt: skip
    net = model
    if ctx.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    stop = start_epoch > opts.max_epochs or (history and history[-1]["epoch"] - best_epoch >= opts.patience)
    epoch = start_epoch
    while not stop:
        started = time.perf_counter()
        if scheduler is None:
            _set_cosine_lr(optimizer, opts, history)
        train_loss = _train_epoch(net, train, criterion, optimizer, decoder, opts, epoch, ctx)
        valid_pred = predict_cached(model, valid, charset.chars, decoder, ctx.device)
        valid_report = ocr_report(valid_pred, valid.split.labels, opts.case_sensitive)
        acc = valid_report["exact_accuracy"]
        if scheduler is not None:
            scheduler.step(acc)
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 5),
            "valid_accuracy": acc,
            "valid_char_accuracy": valid_report["char_accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(row)
        improved = acc > best_acc
        if improved:
            best_acc, best_epoch = acc, epoch
        log.info(
            "epoch %d: loss %.4f, valid accuracy %.4f (best %.4f @ %d), %.0fs",
            epoch,
            train_loss,
            acc,
            best_acc,
            best_epoch,
            row["seconds"],
        )
        if ctx.is_main:
            if improved:
                save_torch({"model": model.state_dict(), "config": config, "epoch": epoch}, run / "best.pt")
            save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch,
                    "history": history,
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "config": config,
                },
                run / "last.pt",
            )
            _write_log(run, history)
        out_of_time = opts.max_minutes is not None and sum(r["seconds"] for r in history) >= opts.max_minutes * 60
        stop = distributed.broadcast_flag(
            ctx, epoch - best_epoch >= opts.patience or epoch >= opts.max_epochs or out_of_time
        )
        epoch += 1

    best = load_torch(run / "best.pt", map_location=str(ctx.device))
    model.load_state_dict(best["model"])
    test_pred = predict_cached(model, test, charset.chars, decoder, ctx.device)
    report = ocr_report(test_pred, test.split.labels, opts.case_sensitive)
    report.update(
        {
            "split": "test",
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
            "train_seconds": round(sum(r["seconds"] for r in history), 1),
            "valid_accuracy": best_acc,
            "train_images": len(train),
            "valid_images": len(valid),
            "skipped_images": [s for c in caches.values() for s in c.skipped],
        }
    )
    if ctx.is_main:
        write_json(run / "report.json", report)
    distributed.teardown()
    return report


def _read_run_config(run: Path) -> dict:
    """RUN/config.json of a run to resume; CaptchalabError when it is unreadable or not a run config."""
    file = run / "config.json"
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptchalabError(f"{file}: cannot resume, the run config is unreadable ({exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("options"), dict) or "data" not in saved:
        raise CaptchalabError(f"{file}: cannot resume, this is not a captchalab OCR run config")
    return saved


def _data_to_resume(run: Path, recorded: Path, given: Path) -> Path:
    """The data a run resumes on: the one it was started on, or ``given`` when that has moved away (split.json then
    checks that it holds the same images). CaptchalabError when ``given`` is other data, or when neither exists."""
    if recorded.exists():
        if given.resolve() != recorded.resolve():
            raise CaptchalabError(
                f"{given}: {run} was trained on {recorded}; resume it on that data (or start a new run)"
            )
        return recorded
    if not given.exists() or given.resolve() == recorded.resolve():
        raise CaptchalabError(
            f"{recorded}: the data of {run} is no longer there; give its new place as DATA to resume on it"
        )
    log.info("resuming %s on %s (it was trained on %s, which is gone)", run, given, recorded)
    return given


def _saved_options(run: Path, saved: dict, budget: dict) -> OcrTrainOptions:
    """The options a run was started with, with ``budget`` (epochs, patience, minutes) applied."""
    try:
        return OcrTrainOptions(
            **{
                **saved["options"],
                "ratios": tuple(saved["options"]["ratios"]),
                "model": saved.get("model_overrides", {}),
                **budget,
            }
        )
    except (TypeError, KeyError) as exc:
        raise CaptchalabError(f"{run / 'config.json'}: cannot resume, the saved options do not fit ({exc})") from None


def load_run_model(run: Path) -> tuple[torch.nn.Module, dict]:
    """The best checkpoint of a run, in eval mode, with the run config."""
    best = run / "best.pt"
    if not best.is_file():
        raise CaptchalabError(f"{run}: no best.pt; is this a finished (or at least one epoch old) training run?")
    state = load_torch(best)
    try:
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError("no run config in it")
        config = state["config"]
        _check_run_config(config)
        model = create_ocr_model(config["arch"], **config["model"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        reason = f"no {exc} entry" if isinstance(exc, KeyError) else str(exc).strip()[:200] or type(exc).__name__
        raise CaptchalabError(f"{best}: not a captchalab OCR checkpoint ({reason})") from None
    try:
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, AttributeError, RuntimeError):
        raise CaptchalabError(f"{best}: damaged OCR checkpoint (its weights do not fit the model it names)") from None
    return model.eval(), config


def _check_run_config(config: dict) -> None:
    """ValueError when a checkpoint's run config is not one a reader or an export can use (another kind of run)."""
    if config.get("arch") not in OCR_ARCHS:
        raise ValueError(f"arch {config.get('arch')!r} is not one of {', '.join(OCR_ARCHS)}")
    if config.get("decoder") != OCR_ARCHS[config["arch"]][2]:
        raise ValueError(f"decoder {config.get('decoder')!r} does not fit arch {config['arch']!r}")
    chars = config["charset"]
    check_charset(chars)
    if not isinstance(config["model"], dict) or config["model"].get("n_classes") != len(chars):
        raise ValueError(f"the model's classes do not fit the charset {chars!r}")
    Preprocess.from_dict(config["preprocess"])


def _train_epoch(
    net: nn.Module,
    train: _Batches,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    decoder: str,
    opts: OcrTrainOptions,
    epoch: int,
    ctx: distributed.Context,
) -> float:
    net.train()
    rng = np.random.default_rng([opts.seed, epoch])
    order = rng.permutation(len(train))[ctx.rank :: ctx.world_size]
    starts = range(0, len(order), opts.batch_size)
    total, count = 0.0, 0
    for start in track(starts, len(starts), f"epoch {epoch}"):
        idx = order[start : start + opts.batch_size]
        x = train.inputs(idx, opts.augment, rng).to(ctx.device, non_blocking=True)
        loss = _loss(criterion, decoder, net(x), [train.targets[i] for i in idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _set_cosine_lr(optimizer: torch.optim.Optimizer, opts: OcrTrainOptions, history: list[dict]) -> None:
    """Half-cosine from ``opts.lr`` to 0 over the epoch budget, or over the time budget when that ends sooner."""
    progress = len(history) / opts.max_epochs
    if opts.max_minutes:
        progress = max(progress, sum(r["seconds"] for r in history) / (opts.max_minutes * 60))
    for group in optimizer.param_groups:
        group["lr"] = opts.lr * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


def _write_log(run: Path, history: list[dict]) -> None:
    write_csv(run / "log.csv", history)
    plot_curves(history, run / "accuracy.png", ("valid_accuracy", "valid_char_accuracy"), "validation accuracy")
