"""Contrastive fine-tuning of an image-text model on a Chinese-CLIP-format dataset.

Loss: cells that share a text are positives of each other, never negatives. Image -> text is a softmax over the
*distinct* texts (all training texts when there are at most ``ALL_TEXTS_LIMIT``, else those in the batch); text ->
image averages the log-likelihood of every image of that text in the batch (multi-positive InfoNCE).

Run folder: config.json, vocab.txt, last.pt (atomic, every --save-every steps and each epoch), best.pt (best
validation image->text accuracy), log.csv, curves.png, report.json. ``resume`` continues mid-epoch after kill -9.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from captchalab.errors import CaptchalabError
from captchalab.folders import make_folder
from captchalab.imaging import ClipPreprocess
from captchalab.models.clip import build_clip, clip_preprocess, context_length, describe_clip, vocab_size
from captchalab.models.gridclip import GridClip, GridClipConfig
from captchalab.progress import track
from captchalab.runtime.tokenizer import BertTokenizer, build_char_vocab, write_vocab
from captchalab.training import distributed
from captchalab.training.checkpoint import load_torch, save_torch, write_csv, write_json
from captchalab.training.grid_data import (
    CellSet,
    optional_cells,
    read_cells,
    split_exists,
    split_texts,
    to_model_input,
)
from captchalab.training.plots import plot_curves

log = logging.getLogger(__name__)
ALL_TEXTS_LIMIT = 1024
MAX_CONTEXT_LENGTH = 512  # BERT's position limit; a captcha word needs far fewer tokens


@dataclass
class GridTrainOptions:
    init: str = "default"  # default | imagenet | scratch | a grid bundle folder | cn-clip:PATH | hf:PATH
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-5
    wd: float = 0.001
    warmup: int = 100
    context_length: int | None = None  # None: the model's own (52 for Chinese-CLIP, 16 for a new gridclip)
    augment: bool = False
    freeze_vision: bool = False
    accum: int = 1
    save_every: int = 0  # optimizer steps between last.pt saves; 0 = once per epoch
    valid_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    resume: str | None = None  # a run folder or a .pt checkpoint
    reset_optimizer: bool = False
    device: str = "auto"
    seed: int = 0
    vocab: str | None = None  # vocab.txt for cn-clip inits (Chinese-CLIP's vocab does not ship offline)
    max_minutes: float | None = None
    model: dict = field(default_factory=dict)  # gridclip config fields for new models (image_size, ...)


def check_options(opts: GridTrainOptions) -> None:
    """Refuse option values that make no sense (one line naming the option), before any data is read."""
    for option, value, least in (
        ("--epochs", opts.epochs, 1),
        ("--accum", opts.accum, 1),
        ("--batch-size", opts.batch_size, 2),
    ):
        if value < least:
            raise CaptchalabError(f"{option} {value}: must be >= {least}")
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise CaptchalabError(f"--lr {opts.lr}: the learning rate must be a finite number > 0")
    if not (math.isfinite(opts.wd) and opts.wd >= 0):
        raise CaptchalabError(f"--wd {opts.wd}: the weight decay must be a finite number >= 0")
    for name in ("warmup", "save_every", "valid_every"):
        if getattr(opts, name) < 0:
            raise CaptchalabError(f"--{name.replace('_', '-')} {getattr(opts, name)}: must be >= 0")
    if opts.max_minutes is not None and not (math.isfinite(opts.max_minutes) and opts.max_minutes > 0):
        raise CaptchalabError(f"--max-minutes {opts.max_minutes}: must be a finite number > 0")
    if not 0 <= opts.seed < 2**32:
        raise CaptchalabError(f"--seed {opts.seed}: must be from 0 to {2**32 - 1}")
    if opts.context_length is not None and not 3 <= opts.context_length <= MAX_CONTEXT_LENGTH:
        raise CaptchalabError(
            f"--context-length {opts.context_length}: must be from 3 ([CLS] + one token + [SEP]) to "
            f"{MAX_CONTEXT_LENGTH}"
        )
    try:
        GridClipConfig(**{"vocab_size": 1, **opts.model})
    except (TypeError, ValueError) as exc:
        raise CaptchalabError(f"bad model settings (--model-config / --image-size): {exc}") from None


@dataclass
class _Model:
    net: torch.nn.Module
    vocab: list[str]
    preprocess: ClipPreprocess
    context_length: int


def _new_model(opts: GridTrainOptions, texts: list[str]) -> _Model:
    """A fresh gridclip (ImageNet trunk unless ``scratch``) whose char vocab covers the dataset's texts."""
    vocab = build_char_vocab(texts)
    fields = {"vocab_size": len(vocab), **opts.model}
    if opts.context_length:
        fields["context_length"] = opts.context_length
    net = GridClip(GridClipConfig(**fields), imagenet_init=opts.init == "imagenet")
    return _Model(net, vocab, clip_preprocess(net), net.config.context_length)


def _read_vocab(path: Path) -> list[str]:
    if not path.is_file():
        raise CaptchalabError(f"{path}: vocab file not found")
    return path.read_text(encoding="utf-8").splitlines()


def _init_model(opts: GridTrainOptions, texts: list[str]) -> _Model:
    model = _load_init(opts, texts)
    length = opts.context_length
    if length is None:
        return model
    positions = _max_positions(model.net)
    if positions is not None and length > positions:
        raise CaptchalabError(
            f"--context-length {length}: the --init model's text tower has only {positions} positions"
        )
    return replace(model, context_length=length)


def _max_positions(net: torch.nn.Module) -> int | None:
    """How many token positions the text tower has (None when unknown)."""
    if isinstance(net, GridClip):
        return int(net.text.position.shape[0])
    text = getattr(getattr(net, "config", None), "text", None)
    return getattr(text, "max_position_embeddings", None)


def _load_init(opts: GridTrainOptions, texts: list[str]) -> _Model:
    init = opts.init
    if init in ("imagenet", "scratch"):
        return _new_model(opts, texts)
    if init == "default":
        from captchalab.runtime.bundle import default_bundle_path

        return _with_image_size(_from_bundle(default_bundle_path("grid")), opts)
    if (Path(init) / "manifest.json").is_file():
        return _with_image_size(_from_bundle(Path(init)), opts)
    if init.startswith("cn-clip:"):
        from captchalab.models.cnclip import load_cn_clip_checkpoint

        if not opts.vocab:
            raise CaptchalabError(
                "--init cn-clip:PATH needs --vocab vocab.txt (Chinese-CLIP's BERT vocab, 21128 lines)"
            )
        net = load_cn_clip_checkpoint(init.split(":", 1)[1])
        vocab = _read_vocab(Path(opts.vocab))
    elif init.startswith("hf:"):
        from captchalab.models.cnclip import load_hf_chinese_clip

        folder = Path(init.split(":", 1)[1])
        net = load_hf_chinese_clip(folder)
        vocab = _read_vocab(Path(opts.vocab) if opts.vocab else folder / "vocab.txt")
    else:
        raise CaptchalabError(
            f"unknown --init {init!r}: use default, imagenet, scratch, a grid bundle folder, cn-clip:PATH or hf:PATH"
        )
    if len(vocab) != vocab_size(net):
        raise CaptchalabError(f"vocab has {len(vocab)} tokens but the model's text tower expects {vocab_size(net)}")
    return _Model(net, vocab, clip_preprocess(net), opts.context_length or context_length(net))


def _with_image_size(model: _Model, opts: GridTrainOptions) -> _Model:
    """``--image-size`` on a gridclip being fine-tuned: the trunk is convolutional and mean-pooled, so the same weights
    take another input size; only the preprocessing (and the size recorded with the model) changes."""
    size = opts.model.get("image_size")
    if size is None or size == getattr(model.net.config, "image_size", None):
        return model
    if not isinstance(model.net, GridClip):
        raise CaptchalabError("--image-size applies to gridclip models only (Chinese-CLIP towers have a fixed size)")
    model.net.config = replace(model.net.config, image_size=int(size))
    return _Model(model.net, model.vocab, clip_preprocess(model.net), model.context_length)


def _from_bundle(bundle_dir: Path) -> _Model:
    """The torch weights a grid bundle carries for further fine-tuning (``weights.safetensors`` + manifest)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from captchalab.runtime.bundle import load_bundle, reading_manifest

    if not (bundle_dir / "manifest.json").is_file():
        raise CaptchalabError(f"{bundle_dir}: no grid bundle here (no manifest.json); train with --init imagenet")
    bundle = load_bundle(bundle_dir, "grid")  # checks the manifest is a grid bundle's, one clear line if not
    with reading_manifest(bundle):
        torch_info = bundle.manifest.get("torch")
        if not torch_info or not (bundle_dir / torch_info["weights"]).is_file():
            raise CaptchalabError(f"{bundle_dir}: the bundle carries no torch weights to fine-tune from")
        kind, config, weights = torch_info["kind"], torch_info["config"], bundle_dir / torch_info["weights"]
        vocab_file, length = (
            bundle_dir / bundle.manifest["files"]["vocab"],
            int(bundle.manifest["text"]["context_length"]),
        )
        net = build_clip(kind, config)
    try:
        net.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    except (SafetensorError, OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptchalabError(f"{weights}: not the weights of the bundle's model ({reason})") from None
    return _Model(net, _read_vocab(vocab_file), clip_preprocess(net), length)


_CHECKPOINT_KEYS = ("kind", "config", "state_dict", "vocab", "preprocess", "context_length")


def _from_checkpoint(state: dict, path: Path) -> _Model:
    """The model of one of our checkpoints; a malformed one is one error naming ``path``."""
    if not isinstance(state, dict) or any(key not in state for key in _CHECKPOINT_KEYS):
        raise CaptchalabError(f"{path}: not a checkpoint of 'captchalab grid train'")
    try:
        net = build_clip(state["kind"], state["config"])
        net.load_state_dict(state["state_dict"])
        preprocess = ClipPreprocess.from_dict(state["preprocess"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptchalabError(f"{path}: malformed grid checkpoint ({reason})") from None
    return _Model(net, list(state["vocab"]), preprocess, int(state["context_length"]))


def _resume_state(resume: str) -> tuple[dict, Path]:
    """(checkpoint, its path) of ``--resume`` (a run folder or a .pt file)."""
    path = Path(resume)
    path = path / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise CaptchalabError(f"{path}: no checkpoint to resume from")
    state = load_torch(path)
    needed = (*_CHECKPOINT_KEYS, "optimizer", "step")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise CaptchalabError(f"{path}: not a checkpoint of 'captchalab grid train'; cannot resume from it")
    return state, path


def _check_run_folder(run: Path, resume: str | None) -> None:
    """Refuse to train over an earlier run unless it is the one being resumed (its best.pt would be lost)."""
    if run.exists() and not run.is_dir():
        raise CaptchalabError(f"{run}: exists and is not a folder; pick another --out")
    earlier = [name for name in ("last.pt", "best.pt") if (run / name).is_file()]  # config.json alone: nothing trained
    if not earlier:
        return
    source = Path(resume) if resume is not None else None
    if source is not None and (source if source.is_dir() else source.parent).resolve() == run.resolve():
        return  # resuming this very run
    raise CaptchalabError(
        f"{run}: already holds a training run ({', '.join(earlier)}); pass --resume {run} to continue it "
        "or pick a new --out"
    )


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Multi-positive CLIP loss. image_features (B, D), text_features (U, D) distinct texts, both unit length;
    labels (B,) index of each image's text in 0..U-1."""
    logits = scale * image_features @ text_features.T  # (B, U)
    image_to_text = F.cross_entropy(logits, labels)
    positives = F.one_hot(labels, text_features.shape[0]).T.float()  # (U, B)
    present = positives.sum(dim=1) > 0
    log_probs = logits.T.log_softmax(dim=1)  # (U, B): each text over the batch's images
    text_to_image = -((log_probs * positives).sum(1)[present] / positives.sum(1)[present]).mean()
    return (image_to_text + text_to_image) / 2


@torch.no_grad()
def embed_cells(net: torch.nn.Module, cells: CellSet, preprocess: ClipPreprocess, device: torch.device) -> torch.Tensor:
    net.eval()
    chunks = []
    for start in range(0, len(cells), 256):
        x = to_model_input(cells.pixels[start : start + 256], preprocess, device, None)
        chunks.append(F.normalize(net.encode_image(x).float(), dim=-1))
    return torch.cat(chunks)


@torch.no_grad()
def embed_texts(net: torch.nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    net.eval()
    return F.normalize(net.encode_text(token_ids).float(), dim=-1)


def retrieval_metrics(
    image_features: torch.Tensor, texts: list[str], candidates: list[str], text_features: torch.Tensor
) -> dict:
    """Image->text accuracy and recall@5 over ``candidates``; text->image recall@1 (mean over the texts present)."""
    index = {t: i for i, t in enumerate(candidates)}
    labels = torch.tensor([index[t] for t in texts], device=image_features.device)
    sims = image_features @ text_features.T  # (N, U)
    top = sims.topk(min(5, sims.shape[1]), dim=1).indices
    accuracy = (top[:, 0] == labels).float().mean().item()
    recall5 = (top == labels[:, None]).any(dim=1).float().mean().item()
    present = labels.unique()
    best_image = sims[:, present].argmax(dim=0)  # (P,)
    t2i = (labels[best_image] == present).float().mean().item()
    return {"i2t_accuracy": accuracy, "i2t_recall@5": recall5, "t2i_recall@1": t2i, "images": len(texts)}


def train_grid(dataset: str | Path, run: str | Path, opts: GridTrainOptions, command: str = "") -> dict:
    """Train; returns the report (also written to RUN/report.json)."""
    dataset, run = Path(dataset), Path(run)
    check_options(opts)
    ctx = distributed.setup(opts.device)
    torch.manual_seed(opts.seed)
    _check_run_folder(run, opts.resume)
    state, state_path = _resume_state(opts.resume) if opts.resume else (None, None)
    if state is not None:
        model = _from_checkpoint(state, state_path)
    elif opts.init in ("imagenet", "scratch"):
        texts = split_texts(dataset, "train")
        extra = split_texts(dataset, "valid", allow_empty=True) if split_exists(dataset, "valid") else []
        model = _init_model(opts, texts + extra)
    else:
        model = _init_model(opts, [])
    preprocess = model.preprocess
    train = read_cells(dataset, "train", preprocess)
    if len(set(train.texts)) < 2:
        raise CaptchalabError(
            f"{dataset}: the train split has only one text ({train.texts[0]!r}); contrastive training needs at "
            "least two different texts"
        )
    valid = optional_cells(dataset, "valid", preprocess)
    if valid is None:
        log.warning("%s: no valid split, the best checkpoint is chosen on the training split", dataset)
    # read (and checked) now, not after the training: a bad test split must not cost the run
    test = optional_cells(dataset, "test", preprocess) if ctx.is_main else None
    make_folder(run, "run folder", hint="; pick another --out")  # before the long work
    write_vocab(model.vocab, run / "vocab.txt")
    tokenizer = BertTokenizer(run / "vocab.txt", model.context_length)
    _warn_unknown(tokenizer, sorted(set(train.texts)))
    net = model.net.to(ctx.device)
    kind, config = describe_clip(net)

    train_texts = sorted(set(train.texts))
    text_index = {t: i for i, t in enumerate(train_texts)}
    labels = np.array([text_index[t] for t in train.texts])
    text_ids = torch.from_numpy(tokenizer.encode(train_texts)).to(ctx.device)
    candidates = sorted(set(train_texts) | set(valid.texts if valid else []))
    candidate_ids = torch.from_numpy(tokenizer.encode(candidates)).to(ctx.device)

    if opts.freeze_vision:
        for p in net.visual.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.wd}, {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr
    )
    use_amp = ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    per_rank = max(1, opts.batch_size // ctx.world_size)
    batches_per_epoch = max(1, len(train) // (per_rank * ctx.world_size))
    steps_per_epoch = max(1, batches_per_epoch // opts.accum)
    total_steps = steps_per_epoch * opts.epochs

    step, epoch, batch_in_epoch, history, best = 0, 0, 0, [], {"i2t_accuracy": -1.0, "step": 0}
    if state is not None:
        if not opts.reset_optimizer and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state.get("scaler", {}))
            step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            history, best = state["history"], state["best"]
        log.info("resumed from %s at epoch %d, step %d", opts.resume, epoch, step)
    trainable = torch.nn.parallel.DistributedDataParallel(net) if ctx.world_size > 1 else net

    config_record = {
        "kind": kind, "config": config, "preprocess": preprocess.to_dict(), "context_length": model.context_length,
        "dataset": str(dataset), "options": asdict(opts), "train_images": len(train), "train_texts": len(train_texts),
        "valid_images": len(valid) if valid else 0, "command": command,
        "commands": _previous_commands(run) + [command],
    }  # fmt: skip
    if ctx.is_main:
        write_json(run / "config.json", config_record)

    def checkpoint() -> dict:
        return {
            "kind": kind, "config": config, "state_dict": net.state_dict(), "vocab": model.vocab,
            "preprocess": preprocess.to_dict(), "context_length": model.context_length,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "history": history, "best": best, "texts": train_texts,
        }  # fmt: skip

    def validate(loss: float) -> None:
        nonlocal best
        cells = valid or train
        metrics = retrieval_metrics(
            embed_cells(net, cells, preprocess, ctx.device), cells.texts, candidates, embed_texts(net, candidate_ids)
        )
        row = {"epoch": round(step / steps_per_epoch, 3), "step": step, "train_loss": round(loss, 5),
               **{k: v for k, v in metrics.items() if k != "images"}, "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        history.append(row)
        improved = metrics["i2t_accuracy"] > best["i2t_accuracy"]
        if improved:
            best = {"i2t_accuracy": metrics["i2t_accuracy"], "step": step}
        log.info(
            "step %d (epoch %.2f): loss %.4f, valid image->text accuracy %.4f, recall@5 %.4f%s",
            step, row["epoch"], loss, metrics["i2t_accuracy"], metrics["i2t_recall@5"], " (best)" if improved else "",
        )  # fmt: skip
        if ctx.is_main:
            if improved:
                save_torch(checkpoint(), run / "best.pt")
            _write_logs(run, history)
        _train_mode(net, opts.freeze_vision)

    started = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    generator = torch.Generator().manual_seed(opts.seed * 1000 + ctx.rank)
    running, seen = 0.0, 0
    _train_mode(net, opts.freeze_vision)
    stop = False
    while epoch < opts.epochs and not stop:
        order = np.random.default_rng(opts.seed + epoch).permutation(len(train))
        batches = range(batch_in_epoch, batches_per_epoch)
        for b in track(batches, len(batches), f"epoch {epoch + 1}/{opts.epochs}", disable=not ctx.is_main):
            rows = order[(b * ctx.world_size + ctx.rank) * per_rank :][:per_rank]
            images = to_model_input(train.pixels[rows], preprocess, ctx.device, generator if opts.augment else None)
            with torch.autocast(ctx.device.type, enabled=use_amp):
                image_features, text_features, scale = trainable(images, text_ids)
                loss = contrastive_loss(
                    image_features.float(), text_features.float(), torch.from_numpy(labels[rows]).to(ctx.device),
                    scale.float().clamp(max=100),
                )  # fmt: skip
            scaler.scale(loss / opts.accum).backward()
            running, seen = running + loss.item(), seen + 1
            batch_in_epoch = b + 1
            if batch_in_epoch % opts.accum:
                continue
            _set_lr(optimizer, opts, step, total_steps)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            with torch.no_grad():
                net.logit_scale.clamp_(0, math.log(100))
            if opts.valid_every and step % opts.valid_every == 0:
                validate(running / max(seen, 1))
                running, seen = 0.0, 0
            if opts.save_every and step % opts.save_every == 0 and ctx.is_main:
                save_torch(checkpoint(), run / "last.pt")
            if opts.max_minutes and time.perf_counter() - started > opts.max_minutes * 60:
                stop = True
                break
        if not stop:
            epoch, batch_in_epoch = epoch + 1, 0
        if not opts.valid_every or stop:
            validate(running / max(seen, 1))
            running, seen = 0.0, 0
        if ctx.is_main:
            save_torch(checkpoint(), run / "last.pt")
    return _finish(run, test, net, model, candidates, best, history, config_record, ctx)


def _previous_commands(run: Path) -> list[str]:
    """Commands of earlier sessions of this run (a resumed run keeps the history of how it was made)."""
    import json

    try:
        return list(json.loads((run / "config.json").read_text(encoding="utf-8")).get("commands", []))
    except (OSError, ValueError):
        return []


def _train_mode(net: torch.nn.Module, freeze_vision: bool) -> None:
    """Training mode, except a frozen image tower, whose BatchNorm statistics must not drift either."""
    net.train()
    if freeze_vision:
        net.visual.eval()


def _set_lr(optimizer: torch.optim.Optimizer, opts: GridTrainOptions, step: int, total: int) -> None:
    """Linear warm-up for ``opts.warmup`` steps, then half-cosine to 0 (Chinese-CLIP's schedule)."""
    if step < opts.warmup:
        lr = opts.lr * (step + 1) / opts.warmup
    else:
        progress = (step - opts.warmup) / max(1, total - opts.warmup)
        lr = opts.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _warn_unknown(tokenizer: BertTokenizer, texts: list[str]) -> None:
    unknown = [t for t in texts if tokenizer.unknown_fraction(t) > 0]
    if unknown:
        log.warning(
            "%d of %d texts have characters the model's vocab lacks ([UNK]), e.g. %s",
            len(unknown), len(texts), ", ".join(unknown[:5]),
        )  # fmt: skip


def _write_logs(run: Path, history: list[dict]) -> None:
    write_csv(run / "log.csv", history)
    plot_curves(history, run / "curves.png", ("i2t_accuracy", "i2t_recall@5", "t2i_recall@1"), "validation")


def _finish(run: Path, test: CellSet | None, net, model: _Model, candidates, best, history, config_record, ctx) -> dict:  # noqa: ANN001
    """Restore the best weights, evaluate the test split when there is one, write report.json."""
    best_file = run / "best.pt"
    if best_file.is_file():
        net.load_state_dict(load_torch(best_file)["state_dict"])
    report = {"best": best, "epochs_logged": len(history), "config": config_record}
    if test is not None and ctx.is_main:
        tokenizer = BertTokenizer(run / "vocab.txt", model.context_length)
        names = sorted(set(candidates) | set(test.texts))
        ids = torch.from_numpy(tokenizer.encode(names)).to(ctx.device)
        report["test"] = retrieval_metrics(
            embed_cells(net, test, model.preprocess, ctx.device), test.texts, names, embed_texts(net, ids)
        )
        log.info("test: image->text accuracy %.4f on %d images", report["test"]["i2t_accuracy"], len(test))
    if ctx.is_main:
        write_json(run / "report.json", report)
    distributed.teardown()
    return report


def load_run(run: str | Path, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """(eval-mode model, checkpoint dict) of a grid run; ``which`` = best or last."""
    path = Path(run) / f"{which}.pt"
    if not path.is_file():
        raise CaptchalabError(f"{run}: not a grid training run (no {which}.pt)")
    state = load_torch(path)
    model = _from_checkpoint(state, path)
    if not isinstance(state.get("texts"), list) or not _is_int(state.get("step")):
        raise CaptchalabError(f"{path}: not a checkpoint of 'captchalab grid train' (no texts or step)")
    return model.net.eval(), state


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
