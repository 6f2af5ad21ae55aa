"""``captchalab ocr …``: generate, train, export, refine, eval, predict."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from captchalab.errors import CaptchalabError
from captchalab.folders import make_folder

if TYPE_CHECKING:
    from captchalab.runtime.ocr_refine import RefineSpec

app = typer.Typer(help="Text captchas: generate data, train, export, evaluate, read.", no_args_is_help=True)


def _need_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CaptchalabError(f"{what} needs torch: pip install 'captchalab[train]'") from None


@app.command()
def generate(
    out: Path = typer.Argument(..., help="Folder to write NNNNN-<label>.png files into."),
    count: int = typer.Option(1000, "--count", "-n", help="How many captchas."),
    style: str = typer.Option("captcha", help="captcha (PyPI captcha library), builtin (our renderer) or mixed."),
    charset: str = typer.Option(
        "alnum", help="Preset names joined by + (digits, lower, upper, alpha, alnum) or literal characters."
    ),
    length: str = typer.Option("4", help="Label length: 4, or a range such as 4-6."),
    size: str = typer.Option("160x60", help="Image size WIDTHxHEIGHT."),
    seed: int = typer.Option(0, help="Same seed, same images."),
    workers: int = typer.Option(1, help="Processes to render with."),
    start: int = typer.Option(0, help="Index of the first image (to extend a set)."),
    favour: str | None = typer.Option(
        None,
        help="CHARS:RATE, e.g. 0Oo:0.3: each character is one of CHARS (those in the charset) with probability "
        "RATE, else any; makes training data for look-alike characters (ocr refine).",
    ),
) -> None:
    """Write seeded, reproducible captchas with the label in the file name."""
    from captchalab.data.charset import parse_charset_spec
    from captchalab.data.generate import GenerateConfig, parse_favour, parse_length, parse_size
    from captchalab.data.generate import generate as run

    low, high = parse_length(length)
    width, height = parse_size(size)
    favoured, rate = parse_favour(favour) if favour else ("", 0.0)
    config = GenerateConfig(parse_charset_spec(charset), low, high, width, height, style, seed, favoured, rate)
    run(out, count, config, workers=workers, start=start)
    typer.echo(f"wrote {count} captchas to {out}")


@app.command()
def train(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="Folder of images (label in file name) or a .tsv / .jsonl labels file."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, split, logs, report)."),
    arch: str = typer.Option("ctc", help="ctc (fast, variable length; default) or resnet18-fixed (the article's)."),
    patience: int | None = typer.Option(
        None, help="Stop after this many epochs without a better validation accuracy (default: 20)."
    ),
    max_epochs: int | None = typer.Option(None, help="Upper bound on epochs (default: 100)."),
    max_minutes: float | None = typer.Option(None, help="Stop after the epoch that crosses this training time."),
    batch_size: int = typer.Option(128, help="Images per training step."),
    lr: float = typer.Option(1e-3, help="Adam(W) learning rate."),
    schedule: str = typer.Option("plateau", help="plateau (halve lr when validation stalls) or cosine."),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the batch order."),
    split: str = typer.Option("0.8,0.1,0.1", help="train,valid,test ratios."),
    case_insensitive: bool = typer.Option(False, "--case-insensitive", help="Fold labels to lower case."),
    charset: str | None = typer.Option(None, help="Fix the charset (default: derived from the labels)."),
    size: str | None = typer.Option(None, help="Model input WIDTHxHEIGHT (default: the arch's own)."),
    gray: bool | None = typer.Option(None, "--gray/--rgb", help="Input colour (default: the arch's own)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random shifts and contrast while training."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    workers: int | None = typer.Option(None, help="Processes for the one-off preprocessing cache."),
    channels: str | None = typer.Option(
        None, help="--arch ctc: widths of its four convolution stages (default 16,32,64,128)."
    ),
    seq_layers: int | None = typer.Option(
        None, min=0, help="--arch ctc: residual 1-D convolutions over time before the classifier (default 2)."
    ),
    init: str | None = typer.Option(
        None,
        help="Start from this model's weights instead of at random: 'default', a bundle or a run folder (same "
        "--arch ctc and input size; characters it does not know start fresh). Fine-tunes on your captchas.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out after its last finished epoch, with its saved options: only --max-epochs, "
        "--patience, --max-minutes, --device and --workers may change (a warning names others given).",
    ),
) -> None:
    """Train an OCR model; writes RUN/report.json, log.csv, accuracy.png, best.pt."""
    _need_torch("ocr train")
    from captchalab.data.charset import parse_charset_spec
    from captchalab.data.generate import parse_size
    from captchalab.data.split import parse_ratios
    from captchalab.training.ocr import OcrTrainOptions, train_ocr

    if resume:
        _warn_ignored_on_resume(ctx)
    width, height = parse_size(size) if size else (None, None)
    shape = {"widths": _parse_channels(channels) if channels else None, "seq_layers": seq_layers}
    shape = {k: v for k, v in shape.items() if v is not None}
    if shape and arch != "ctc":
        raise CaptchalabError(f"--channels and --seq-layers shape --arch ctc models, not {arch}")
    budget = {
        k: v
        for k, v in (("patience", patience), ("max_epochs", max_epochs), ("max_minutes", max_minutes))
        if v is not None
    }
    opts = OcrTrainOptions(
        arch=arch,
        **budget,
        batch_size=batch_size,
        lr=lr,
        schedule=schedule,
        seed=seed,
        ratios=parse_ratios(split),
        case_sensitive=not case_insensitive,
        charset=parse_charset_spec(charset) if charset is not None else None,
        height=height,
        width=width,
        channels=None if gray is None else (1 if gray else 3),
        augment=augment,
        device=device,
        workers=workers,
        model=shape,
        init=init,
    )
    command = shlex.join(["captchalab", *sys.argv[1:]])
    report = train_ocr(data, out, opts, resume=resume, command=command, budget=budget)
    typer.echo(
        f"test: exact {report['exact_accuracy']:.4f}, per-char {report['char_accuracy']:.4f} on "
        f"{report['images']} images (best epoch {report['best_epoch']}); report in {out / 'report.json'}"
    )


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A training run folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (model.onnx + manifest.json)."),
    int8: bool = typer.Option(False, "--int8", help="Quantise to int8 (refused if test accuracy drops)."),
    data_statement: str | None = typer.Option(None, help="What the model was trained on, for the manifest."),
    training_command: str | None = typer.Option(None, help="How it was trained (default: the recorded command)."),
    licenses: Path | None = typer.Option(None, help="JSON list of {name, license, use} credits for the manifest."),
    alphabets: str | None = typer.Option(
        None,
        help="The captcha alphabets the training data mixed, with priors, for --charset auto: e.g. "
        "lower+digits:0.2,upper+digits:0.2,alnum:0.6 (default: none; auto then reads any character).",
    ),
) -> None:
    """Export to ONNX; the test split must decode identically through torch and ONNX."""
    _need_torch("ocr export")
    from captchalab.data.charset import parse_alphabets
    from captchalab.export.common import read_licenses
    from captchalab.export.ocr import export_ocr

    priors = parse_alphabets(alphabets) if alphabets else None  # before the export's long work

    credits = read_licenses(licenses)
    manifest = export_ocr(
        run,
        out,
        int8=int8,
        training_data=data_statement,
        training_command=training_command,
        licenses=credits,
        alphabets=priors,
    )
    test = manifest["metrics"]["test"]
    typer.echo(
        f"exported {out} ({manifest['precision']}): test exact {test['exact_accuracy']:.4f}, "
        f"parity on {manifest['metrics']['parity']['images']} images"
    )


@app.command()
def refine(
    model: str = typer.Argument(..., help="'default' or an OCR bundle folder (CTC model)."),
    data: Path = typer.Argument(..., help="Labelled images (folder, .tsv or .jsonl) with the look-alike characters."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write: MODEL's files plus the refiner."),
    chars: str = typer.Option("0Oo", help="The look-alike characters to look at again."),
    epochs: int = typer.Option(4, min=1, help="Passes over the training crops."),
    batch_size: int = typer.Option(256, min=8, help="Crops per training step."),
    lr: float = typer.Option(2e-3, help="AdamW learning rate (positive)."),
    seed: int = typer.Option(0, help="Seed of the held-out split, the initialisation and the batch order."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    channels: str = typer.Option(
        "32,64,96,128", help="Widths of the classifier's four convolution stages (16,32,64,96 trains ~4x faster)."
    ),
    main_weight: list[str] | None = typer.Option(
        None,
        help="Weight of the CTC model's log-probability next to the classifier's, fixed (e.g. one chosen on "
        "development sets) instead of chosen on the held-out crops: W for all alphabets, or CLASSES=W for one (the "
        "classes its alphabet allows, e.g. 0O=0 for A-Z0-9 captchas); repeatable.",
    ),
    init: str | None = typer.Option(
        None,
        help="Start from this bundle's refiner ('default' or a folder; same --chars and --channels) instead of random "
        "weights: more training on new data, best with a smaller --lr.",
    ),
    data_statement: str | None = typer.Option(None, help="What DATA is (how it was made), for the manifest."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run of this same command from its last finished epoch."
    ),
) -> None:
    """Teach a bundle a second look at look-alike characters (such as O and 0) on full-resolution crops.

    Work in progress is kept in OUT.refining/ until the bundle is written."""
    _need_torch("ocr refine")
    from captchalab.export.ocr_refine import check_refinable, export_refined_bundle
    from captchalab.runtime.ocr_refine import RefineSpec
    from captchalab.training.checkpoint import write_json
    from captchalab.training.ocr_refine import (
        RefineOptions,
        collect_crops,
        load_crops,
        progress_folder,
        save_crops,
        split_crops,
        train_refiner,
    )
    from captchalab.training.refiner_init import init_source

    group = "".join(dict.fromkeys(chars))
    if len(group) < 2:
        raise CaptchalabError(f"--chars {chars!r}: give at least two characters that look alike")
    if not (math.isfinite(lr) and lr > 0):
        raise CaptchalabError(f"--lr must be a positive number, not {lr!r}")
    every, by_alphabet = _parse_main_weights(main_weight or [], group)
    widths = _parse_channels(channels)
    check_refinable(model, out)  # before the long work
    opts = RefineOptions(chars=group, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         channels=widths, main_weight=every, main_weights=by_alphabet, init=init)  # fmt: skip
    spec = RefineSpec(group, opts.height, opts.width)
    if init is not None:
        init_source(init, spec, widths)
    work = progress_folder(out)
    # through JSON, as job.json stores it (tuples become lists), so that a resumed job compares equal
    job = json.loads(json.dumps({"model": model, "data": str(data.resolve()), "options": vars(opts)}))
    _check_refine_job(work, job, resume)
    if resume:
        crops = load_crops(work / "crops.npz")
    else:  # the folder is made once the crops are in: an error before that leaves nothing to resume
        crops = collect_crops(model, data, spec)
        make_folder(work, "work folder")
        save_crops(crops, work / "crops.npz")
        write_json(work / "job.json", job)
    train, valid = split_crops(crops, opts.valid_fraction, opts.seed)
    net, spec, report = train_refiner(crops, spec, opts, train, valid, state_file=work / "state.pt")
    command = shlex.join(["captchalab", *sys.argv[1:]])
    training = {"data": data_statement or str(data), "command": command, "options": vars(opts), **report}
    export_refined_bundle(model, out, net, spec, crops.images[valid], training)
    shutil.rmtree(work)
    accuracy = report["valid_accuracy"]
    typer.echo(
        f"wrote {out}: {report['crops']['train']} crops learnt; on {report['crops']['valid']} held-out crops the "
        f"CTC model alone is right {accuracy['ctc_model']:.4f}, with the refiner {accuracy['combined']:.4f} "
        f"(CTC weight {_weights_text(spec)}), with a second look {accuracy['combined_second_look']:.4f}"
    )


def _parse_main_weights(given: list[str], group: str) -> tuple[float | None, dict[str, float]]:
    """--main-weight values ('0.25', '0O=0') -> (the weight for all alphabets or None, weights by alphabet)."""
    every, by_alphabet = None, {}
    for text in given:
        key, _, value = text.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise CaptchalabError(f"--main-weight {text!r}: the weight must be a number >= 0")
        if not key:
            every = weight
            continue
        ordered = "".join(c for c in group if c in key)
        if len(key) < 2 or sorted(key) != sorted(ordered):
            raise CaptchalabError(f"--main-weight {text!r}: name two or more of the --chars {group!r} before '='")
        by_alphabet[ordered] = weight
    return every, by_alphabet


def _weights_text(spec: RefineSpec) -> str:
    """'0.25' or '0.25; 0O: 0.0, 0o: 0.5' (the weight for other alphabets first)."""
    own = ", ".join(f"{k}: {w}" for k, w in spec.main_weights.items())
    return f"{spec.main_weight}; {own}" if own else str(spec.main_weight)


def _check_refine_job(work: Path, job: dict, resume: bool) -> None:
    """``--resume`` needs the interrupted run of the same job (any --device); a new run needs no leftover one."""
    if not resume:
        if work.exists():
            raise CaptchalabError(f"{work}: holds an interrupted 'ocr refine' for this --out; add --resume to continue "
                                  "it, or delete the folder to start again")  # fmt: skip
        return
    try:
        saved = json.loads((work / "job.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = "delete the folder and run" if work.exists() else "run"  # killed while saving the crops
        raise CaptchalabError(f"{work}: nothing to resume; {hint} without --resume") from None
    except (OSError, ValueError) as exc:
        raise CaptchalabError(f"{work / 'job.json'}: unreadable ({exc}); delete {work} to start again") from None
    now, then = job["options"], saved.get("options", {})
    differ = [k.upper() for k in ("model", "data") if saved.get(k) != job[k]]
    for key in sorted((set(now) | set(then)) - {"device"}):
        if now.get(key) != then.get(key):
            differ.append("--" + key.replace("_", "-"))
    if differ:
        raise CaptchalabError(f"{work}: the interrupted run differs in {', '.join(differ)}; resume it with the same "
                              "command, or delete the folder to start again")  # fmt: skip


# what `ocr train --resume` may change; every other option comes from the run's saved config
RESUME_MAY_CHANGE = {"data", "out", "resume", "patience", "max_epochs", "max_minutes", "device", "workers"}


def _warn_ignored_on_resume(ctx: typer.Context) -> None:
    """One line naming the options given on the command line that a resumed run does not take."""
    # compared by name: typer ships its own copy of click, whose ParameterSource is not click's
    given = [
        p.opts[0] for p in ctx.command.params
        if p.name not in RESUME_MAY_CHANGE and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"
    ]  # fmt: skip
    if given:
        typer.echo(f"warning: --resume keeps the run's saved options; ignoring {', '.join(given)}", err=True)


def _parse_channels(text: str) -> tuple[int, int, int, int]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 4 or not all(1 <= w <= 1024 for w in widths):
        raise CaptchalabError(f"--channels {text!r}: give four widths between 1 and 1024, e.g. 16,32,64,96")
    return widths  # type: ignore[return-value]


CHARSET_HELP = (
    "Only read these characters, when you know the captchas' alphabet: presets joined by '+' (lower, upper, digits, "
    "alpha, alnum) or literal characters, e.g. lower+digits (like ddddocr's set_ranges). 'auto' (default): inferred "
    "per image among the alphabets the model was trained on (the default model: a-z0-9, A-Z0-9, a-zA-Z0-9); 'any': "
    "any character the model knows."
)


REFINE_HELP = "Let the bundle's refiner look again at look-alike characters such as 0 / O (when it has one)."
SHIFTS_HELP = (
    "Read captchas the model is unsure of (confidence < 0.9) again, moved a pixel up and down, and average: fewer "
    "errors (the README has the figures), about a fifth slower. Bundles only."
)


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="'default', a bundle folder or a training run folder."),
    data: Path = typer.Argument(..., help="Folder of labelled images or a .tsv / .jsonl labels file."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write the JSON report (default: eval-report.json beside the data)."
    ),
    case_insensitive: bool = typer.Option(False, "--case-insensitive", help="Compare ignoring case."),
    charset: str = typer.Option("auto", help=CHARSET_HELP),
    refine: bool = typer.Option(True, "--refine/--no-refine", help=REFINE_HELP),
    average_shifts: bool = typer.Option(False, "--average-shifts", help=SHIFTS_HELP),
) -> None:
    """Score a model on labelled images: exact and per-character accuracy, most confused pairs."""
    from captchalab.ocr import evaluate

    target = out or (data if data.is_dir() else data.parent) / "eval-report.json"
    check_writable_file(target)  # before the evaluation, so its work is not lost
    report = evaluate(
        model, data, case_sensitive=not case_insensitive, charset=charset, refine=refine,
        average_shifts=average_shifts,
    )  # fmt: skip
    try:
        target.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    except OSError as exc:
        raise CaptchalabError(f"{target}: cannot write the report ({exc.strerror or exc})") from None
    low, high = report["exact_accuracy_ci95"]
    typer.echo(
        f"exact {report['exact_accuracy']:.4f} (95 % interval {low:.4f}-{high:.4f}), per-char "
        f"{report['char_accuracy']:.4f} on {report['images']} images; report in {target}"
    )


def check_writable_file(target: Path) -> None:
    """Create ``target``'s parent folders and make sure a file can be written there; CaptchalabError if not."""
    if target.is_dir():
        raise CaptchalabError(f"{target}: is a folder; give a file name for the report")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaptchalabError(f"{target.parent}: cannot create the report's folder ({exc.strerror or exc})") from None
    existed = target.exists()
    try:
        with target.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise CaptchalabError(f"{target}: cannot write the report ({exc.strerror or exc})") from None
    if not existed:
        target.unlink(missing_ok=True)


@app.command()
def predict(
    paths: list[str] = typer.Argument(
        None, help="Images or folders; '-' reads one image from stdin. Give none to type paths one by one at a prompt."
    ),
    model: str = typer.Option("default", "--model", "-m", help="'default', a bundle folder or a run folder."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image."),
    case_insensitive: bool = typer.Option(
        False, "--case-insensitive", help="Merge upper and lower case of each letter (answers in lower case)."
    ),
    charset: str = typer.Option("auto", help=CHARSET_HELP),
    refine: bool = typer.Option(True, "--refine/--no-refine", help=REFINE_HELP),
    average_shifts: bool = typer.Option(False, "--average-shifts", help=SHIFTS_HELP),
) -> None:
    """Read captchas. Bad files get one line each on stderr and the rest are still read; exit code 2 if any failed
    (also in the interactive prompt, which ends at end of input, e.g. Ctrl-D)."""
    from captchalab.imaging import load_image
    from captchalab.ocr import expand_paths, load_reader

    reader = load_reader(
        model, case_sensitive=not case_insensitive, charset=charset, refine=refine, average_shifts=average_shifts
    )
    if not paths:
        if not _interactive(reader, as_json):
            raise typer.Exit(2)
        return
    failed = 0
    stdin = getattr(sys.stdin, "buffer", None)
    for name, source in expand_paths(paths, stdin=stdin):
        try:
            if isinstance(source, CaptchalabError):
                raise source
            reading = reader.read(load_image(source, name=name))
        except CaptchalabError as exc:
            failed += 1
            typer.echo(f"error: {exc}", err=True)
            continue
        _print_reading(name, reading, as_json)
    if failed:
        raise typer.Exit(2)


def _print_reading(name: str, reading, as_json: bool) -> None:  # noqa: ANN001
    """One line per image: tab-separated, or a JSON object with ``--json``."""
    if as_json:
        payload = {"file": name, "text": reading.text, "confidence": round(reading.confidence, 4)}
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        typer.echo(f"{name}\t{reading.text}\t{reading.confidence:.3f}")


def _interactive(reader, as_json: bool = False) -> bool:  # noqa: ANN001
    """The article's loop: ask for a path, print the reading, until end of input. Quotes around a pasted path are
    dropped. Returns False if any path failed (the command then exits with code 2, as for listed paths)."""
    from captchalab.imaging import load_image

    ok = True
    while True:
        try:
            path = input("Image path: ").strip()
        except EOFError:
            typer.echo("")
            return ok
        if len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
            path = path[1:-1].strip()
        if not path:
            continue
        try:
            if Path(path).is_dir():
                raise CaptchalabError(f"{path}: is a folder; give one image file here")
            reading = reader.read(load_image(path))
            if as_json:
                _print_reading(path, reading, True)
            else:
                typer.echo(f"{reading.text}  (confidence {reading.confidence:.3f})")
        except CaptchalabError as exc:
            ok = False
            typer.echo(f"error: {exc}", err=True)
