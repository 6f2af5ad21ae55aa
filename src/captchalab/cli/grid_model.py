"""``captchalab grid train|export|calibrate|solve|eval``: the image-text model side of picture grids."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from captchalab.cli.grid import app
from captchalab.cli.ocr import _need_torch
from captchalab.errors import CaptchalabError


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="Chinese-CLIP-format dataset folder (TSV/JSONL, or lmdb/ only)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, log.csv, curves.png, report)."),
    init: str = typer.Option(
        "default", help="default (shipped model), a grid bundle, imagenet, scratch, cn-clip:PATH or hf:PATH."
    ),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(5e-5),
    wd: float = typer.Option(0.001, help="AdamW weight decay (not on biases and norms)."),
    warmup: int = typer.Option(100, help="Linear warm-up steps before the cosine decay."),
    context_length: int | None = typer.Option(None, help="Token ids per text (default: the model's own)."),
    augment: bool = typer.Option(False, "--augment", help="Random zoom, shift, rotation, flip, brightness."),
    freeze_vision: bool = typer.Option(False, "--freeze-vision", help="Train the text tower only."),
    accum: int = typer.Option(1, help="Batches per optimizer step (gradient accumulation)."),
    save_every: int = typer.Option(0, help="Save last.pt every N steps (0: each epoch)."),
    valid_every: int = typer.Option(0, help="Validate every N steps (0: each epoch)."),
    resume: str | None = typer.Option(None, help="Continue from a run folder or a .pt checkpoint."),
    reset_optimizer: bool = typer.Option(False, "--reset-optimizer", help="With --resume: weights only."),
    vocab: Path | None = typer.Option(None, help="vocab.txt for --init cn-clip:PATH (Chinese-CLIP's BERT vocab)."),
    image_size: int | None = typer.Option(
        None, help="Input size of a gridclip model, new or fine-tuned from a bundle (default: 64, or the bundle's)."
    ),
    model_config: str | None = typer.Option(None, help='JSON fields for a new gridclip, e.g. {"trunk_blocks": 8}.'),
    max_minutes: float | None = typer.Option(None, help="Stop after this much training time."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    seed: int = typer.Option(0),
) -> None:
    """Contrastive fine-tuning; cells that share a text are positives of each other."""
    _need_torch("grid train")
    from captchalab.training.grid import GridTrainOptions, train_grid

    if epochs < 1 or batch_size < 2 or accum < 1:
        raise CaptchalabError("--epochs and --accum must be >= 1 and --batch-size >= 2")
    opts = GridTrainOptions(
        init=init, epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, warmup=warmup, context_length=context_length,
        augment=augment, freeze_vision=freeze_vision, accum=accum, save_every=save_every, valid_every=valid_every,
        resume=resume, reset_optimizer=reset_optimizer, device=device, seed=seed, vocab=str(vocab) if vocab else None,
        max_minutes=max_minutes, model=_model_fields(model_config, image_size),
    )  # fmt: skip
    report = train_grid(dataset, out, opts, command=shlex.join(["captchalab", *sys.argv[1:]]))
    test = report.get("test")
    tail = f"; test image->text accuracy {test['i2t_accuracy']:.4f} on {test['images']} images" if test else ""
    typer.echo(f"best validation image->text accuracy {report['best']['i2t_accuracy']:.4f}{tail}; run in {out}")


def _model_fields(model_config: str | None, image_size: int | None) -> dict:
    from dataclasses import fields

    from captchalab.models.gridclip import GridClipConfig

    try:
        extra = json.loads(model_config) if model_config else {}
    except json.JSONDecodeError as exc:
        raise CaptchalabError(f"--model-config is not valid JSON: {exc}") from None
    known = {f.name for f in fields(GridClipConfig)} - {"vocab_size"}
    unknown = sorted(set(extra) - known) if isinstance(extra, dict) else ["(not an object)"]
    if unknown:
        raise CaptchalabError(
            f"--model-config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return {**extra, **({"image_size": image_size} if image_size is not None else {})}


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A grid training run folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder (image.onnx, text.onnx, vocab, manifest)."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision, for GPUs (slower on most CPUs)."),
    int8: bool = typer.Option(False, "--int8", help="int8 image tower for CPUs (refused if it costs accuracy)."),
    dataset: Path | None = typer.Option(None, help="Dataset whose valid split gates and calibrates (default: run's)."),
    aliases: Path | None = typer.Option(None, help="words.json with English aliases of the prompt words."),
    licenses: Path | None = typer.Option(None, help="JSON list of data/model licences for the manifest."),
    data_statement: str | None = typer.Option(None, help="What the training data was, for the manifest."),
    training_command: str | None = typer.Option(None, help="How the run was trained (default: the run's command)."),
    no_weights: bool = typer.Option(False, "--no-weights", help="Leave out the torch weights (no fine-tuning)."),
) -> None:
    """Export two ONNX towers + manifest; parity-gated, decision rule calibrated on validation grids."""
    _need_torch("grid export")
    from captchalab.export.common import read_licenses
    from captchalab.export.grid import export_grid

    if fp16 and int8:
        raise CaptchalabError("choose one of --fp16 and --int8")
    license_list = read_licenses(licenses)
    manifest = export_grid(
        run, out, "fp16" if fp16 else "int8" if int8 else "fp32", dataset=dataset, aliases=aliases,
        training_data=data_statement, training_command=training_command, licenses=license_list,
        include_weights=not no_weights,
    )  # fmt: skip
    decision = manifest["decision"]
    rate = decision["rules"][decision["rule"]]["valid_solve_rate"]
    typer.echo(f"wrote {out}: rule {decision['rule']}, simulated validation solve rate {rate:.4f}")


@app.command()
def calibrate(
    model: str = typer.Argument(..., help="'default' or a grid bundle folder."),
    grids: list[Path] = typer.Argument(
        ..., help="Labelled grids of the target kind: folders with manifest.jsonl (one or more, fitted together)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (the model files are copied)."),
    keep_threshold: bool = typer.Option(False, "--keep-threshold", help="Fit only each rule's 'relative'."),
    pictures: Path | None = typer.Option(
        None,
        help="Labelled cells (<word>/<image> folders or JSONL): the bundle remembers prototype pictures of each "
        "word and blends them with the text similarity (the blend is fitted on GRIDS too).",
    ),  # fmt: skip
    rule: str | None = typer.Option(
        None, help="The bundle's rule from now on: threshold, margin, softmax or context (default: best on GRIDS)."
    ),
    text_share: float | None = typer.Option(
        None, help="With pictures: keep this share of the text similarity (1 = text only) instead of fitting it."
    ),
) -> None:
    """Re-fit the decision rules (threshold, relative margin, context model) on labelled grids; the ONNX model is
    unchanged."""
    from captchalab.export.grid_recalibrate import recalibrate

    report = recalibrate(
        model, grids, out, keep_threshold=keep_threshold, pictures=pictures, rule=rule, text_share=text_share
    )
    for rule, row in report["rules"].items():
        before = "-" if row["before"] is None else f"{row['before']:.4f}"
        typer.echo(f"  rule {rule:9s}: solve rate {before:>6s} -> {row['after']:.4f} "
                   f"(threshold {row['threshold']:.4f}, relative {row['relative']:.3f})")  # fmt: skip
    skipped = f", {report['skipped']} skipped" if report["skipped"] else ""
    if "pictures" in report:
        typer.echo(f"  pictures: {report['pictures']['prototypes']} prototypes of {report['pictures']['words']} words, "
                   f"text share {report['picture_weight']:.2f}")  # fmt: skip
    typer.echo(f"wrote {out}: rule {report['rule']}, fitted on {report['scored']} grids{skipped}")


@app.command()
def solve(
    images: list[Path] = typer.Argument(..., help="The grid image (or, with --cells, its cells row-major)."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The word to find (read from a --screenshot)."),
    layout: str = typer.Option("auto", help="auto, 2x3 (2 rows of 3), 3x2 or 3x3."),
    model: str = typer.Option("default", "--model", "-m", help="'default' or a grid bundle folder."),
    cells: bool = typer.Option(False, "--cells", help="IMAGES are the cells, row-major."),
    screenshot: bool = typer.Option(False, "--screenshot", help="IMAGE is a screenshot: read prompt, find grid."),
    rule: str | None = typer.Option(
        None, help="threshold, margin, softmax or context (default: the bundle's calibrated)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Which cells show the prompt: 1-based positions, row-major (left to right, top to bottom)."""
    from captchalab.runtime.grid import load_solver

    solver = load_solver(model)
    if screenshot:
        if len(images) != 1 or cells:
            raise CaptchalabError("--screenshot takes one screenshot image (not --cells)")
        from captchalab.runtime.screenshot import read_screenshot

        parsed = read_screenshot(images[0], read_prompt=prompt is None)  # a given --prompt needs no OCR
        where = f"{images[0]} (its grid at {parsed.grid_box})"
        answer = solver.solve(prompt or parsed.prompt, image=parsed.grid, layout=layout, rule=rule, name=where)
    elif prompt is None:
        raise CaptchalabError("give the word to find with --prompt (or use --screenshot)")
    elif cells:
        answer = solver.solve(prompt, cells=images, layout=layout, rule=rule)
    else:
        if len(images) != 1:
            raise CaptchalabError(f"{len(images)} images given: one grid image, or use --cells for separate cells")
        answer = solver.solve(prompt, image=images[0], layout=layout, rule=rule)
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    probs = " ".join(f"{p:.2f}" for p in answer.probabilities)
    typer.echo(f"{answer.positions}  ({answer.layout}, {answer.prompt}, rule {answer.rule}"
               f"{', unsure' if answer.unsure else ''}; probabilities {probs})")  # fmt: skip


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="'default' or a grid bundle folder."),
    grids: Path = typer.Argument(..., help="A folder with manifest.jsonl (from `grid generate`)."),
    rule: str | None = typer.Option(None, help="Decision rule (default: the bundle's calibrated)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the report as JSON here."),
    limit: int | None = typer.Option(None, help="Only the first N grids."),
) -> None:
    """Solve rate, cell precision/recall/F1, a per-prompt table and, for generated grids, one per art style."""
    from captchalab.grid import evaluate

    if out:
        from captchalab.cli.ocr import check_writable_file

        check_writable_file(out)  # before the evaluation, so its work is not lost
    report = evaluate(model, grids, rule=rule, limit=limit)
    if out:
        out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    for error in report["errors"][:5]:
        typer.echo(f"warning: {error}", err=True)
    if len(report["errors"]) > 5:
        more = len(report["errors"]) - 5
        typer.echo(f"warning: ... and {more} more unreadable grids (all in the JSON report with -o)", err=True)
    worst = sorted(report["per_prompt"].items(), key=lambda kv: kv[1]["solve_rate"])[:5]
    typer.echo(
        f"{report['grids']} grids: solve rate {report['solve_rate']:.4f}, cell precision {report['cell_precision']:.4f}"
        f", recall {report['cell_recall']:.4f}, F1 {report['cell_f1']:.4f}; unsure {report['unsure_rate']:.3f}; "
        f"rule {report['rule']}; median {report['latency_ms']['median']:.1f} ms/grid"
    )
    sure, flagged = report["solve_rate_when_sure"], report["wrong_flagged_unsure"]
    typer.echo(
        "answers not flagged unsure: "
        + ("none" if sure is None else f"solve rate {sure:.4f}")
        + "; "
        + ("no wrong answers" if flagged is None else f"{flagged:.1%} of the wrong answers were flagged unsure")
    )
    kinds = report["failure_kinds"]
    if any(kinds.values()) or report["errors"]:
        parts = [f"{kind.replace('_', ' ')} {n}" for kind, n in kinds.items()]
        parts.append(f"not scored (unreadable or mislabelled) {len(report['errors'])}")
        typer.echo("wrong answers: " + ", ".join(parts))
    typer.echo("hardest prompts: " + ", ".join(f"{p} {v['solved']}/{v['grids']}" for p, v in worst))
    if report["per_design"]:
        designs = sorted(report["per_design"].items(), key=lambda kv: kv[1]["solve_rate"])
        typer.echo("by style of the matching cells: " + ", ".join(f"{d} {v['solve_rate']:.3f} ({v['grids']})"
                                                                   for d, v in designs))  # fmt: skip
