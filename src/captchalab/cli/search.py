"""``captchalab search …``: index a folder, query it by text or image, serve it, classify, near-duplicates, and
the article's dataset helpers (split, stats). Each command parses, calls one library function and prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(help="Search images by text or by image; dataset helpers.", no_args_is_help=True)

MODEL_HELP = "'default' (the shipped grid model) or a grid bundle folder."
INDEX_HELP = "Index folder (default: ./.captchalab-index)."


def _single_threaded_blas() -> None:
    """Queries are one vector at a time: a BLAS thread pool only adds hand-off stalls there (a 10k exact search took
    8 ms instead of 0.4 ms on 2 busy cores), so query and serve keep numpy's BLAS on one thread unless told otherwise.
    Effective only before numpy is imported, which the CLI does lazily."""
    if "numpy" not in sys.modules:
        for variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")


def _echo_json(data: object) -> None:
    from captchalab.search.service import to_json

    typer.echo(to_json(data))


def _echo_line(line: str) -> None:
    """A line naming files as they are on disk, even a name that is not valid UTF-8 (its bytes are written)."""
    typer.echo(line.encode("utf-8", "surrogateescape"))


def _index_or_default(index: Path | None) -> Path:
    from captchalab.search.service import INDEX_NAME

    return index if index is not None else Path(INDEX_NAME)


@app.command()
def index(
    folder: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    index_path: Path | None = typer.Option(None, "--index", help="Index folder (default: FOLDER/.captchalab-index)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help=MODEL_HELP + " Default: the index's own model, or 'default' for a new index."
    ),
    workers: int | None = typer.Option(None, help="Image-reading threads (default: up to 4)."),
    batch_size: int = typer.Option(64, help="Images per embedding batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed new and changed images under FOLDER into the index; drop deleted ones; list unreadable ones."""
    from captchalab.search.service import index_folder

    run = index_folder(folder, index_path, model, workers=workers, batch_size=batch_size)
    report = run.report
    if report.skipped:
        shown = "; ".join(report.skipped[:20]) + (
            f"; … {len(report.skipped) - 20} more" if len(report.skipped) > 20 else ""
        )
        typer.echo(f"warning: skipped {len(report.skipped)} unreadable file(s): {shown}", err=True)
    if as_json:
        _echo_json(run.to_dict())
        return
    typer.echo(
        f"{run.index}: added {report.added}, updated {report.changed}, removed {report.removed}, "
        f"unchanged {report.unchanged}, skipped {len(report.skipped)} in {run.seconds:.2f} s ({run.rate:.0f} img/s)"
    )


@app.command()
def query(
    text: str | None = typer.Option(None, "--text", "-t", help="Find images that match this text (e.g. 猫)."),
    image: Path | None = typer.Option(None, "--image", "-i", help="Find images like this one."),
    k: int = typer.Option(10, "-k", help="How many results."),
    index_path: Path | None = typer.Option(None, "--index", help=INDEX_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help="Only to check: the index remembers its model."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"path", "score"}].'),
    no_server: bool = typer.Option(False, "--no-server", help="Search in this process even if a server runs."),
) -> None:
    """Top-k images by cosine score; uses the index's running server (search serve) when there is one."""
    _single_threaded_blas()
    from captchalab.search.service import query as run_query

    hits = run_query(_index_or_default(index_path), text, image, k, model, use_server=not no_server)
    if as_json:
        _echo_json([hit.to_dict() for hit in hits])
    else:
        for hit in hits:
            _echo_line(f"{hit.score:.4f}  {hit.path}")


@app.command()
def classify(
    image: Path = typer.Argument(..., help="The image to label."),
    labels: str = typer.Option(..., "--labels", "-l", help="Comma-separated labels, e.g. 猫,狗,自行车."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help='Print [{"label", "probability"}].'),
) -> None:
    """Zero-shot label probabilities (softmax of logit_scale x cosine over the labels), most likely first."""
    from captchalab.search.service import classify as run_classify
    from captchalab.search.service import parse_labels

    ranked = run_classify(image, parse_labels(labels), model)
    if as_json:
        typer.echo(json.dumps([{"label": lab, "probability": p} for lab, p in ranked], ensure_ascii=False))
    else:
        for label, probability in ranked:
            typer.echo(f"{probability:7.2%}  {label}")


@app.command()
def dupes(
    index_path: Path | None = typer.Option(None, "--index", help=INDEX_HELP),
    threshold: float = typer.Option(0.95, help="Cosine similarity at or above which two images are listed."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"a", "b", "score"}].'),
) -> None:
    """Near-duplicate pairs in an index, most similar first."""
    from captchalab.search.service import duplicates

    pairs = duplicates(_index_or_default(index_path), threshold)
    if as_json:
        _echo_json([{"a": a, "b": b, "score": s} for a, b, s in pairs])
    else:
        for a, b, score in pairs:
            _echo_line(f"{score:.4f}  {a}  {b}")
        typer.echo(f"{len(pairs)} pair(s) at cosine >= {threshold}", err=True)


@app.command()
def serve(
    index_path: Path | None = typer.Option(None, "--index", help=INDEX_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (keep it local: there is no authentication)."),
    port: int = typer.Option(8765, help="Port; 0 picks a free one."),
    model: str | None = typer.Option(None, "--model", "-m", help="Only to check: the index remembers its model."),
    threads: int | None = typer.Option(None, help="onnxruntime threads per query (default: its own)."),
) -> None:
    """Keep the model and index in memory and answer queries over HTTP, with a web page at /; until Ctrl-C."""
    _single_threaded_blas()
    from captchalab.search.server import serve as run_server

    run_server(
        _index_or_default(index_path),
        host,
        port,
        model,
        on_ready=lambda url: typer.echo(f"serving {_index_or_default(index_path)} at {url}/ (Ctrl-C to stop)"),
        threads=threads,
    )


@app.command()
def split(
    class_dir: Path = typer.Argument(..., help="Folder of <class>/<image> sub-folders."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for train/val/test/<class>/ copies."),
    ratios: str = typer.Option("0.8,0.1,0.1", help="train,val,test ratios (stratified per class)."),
    seed: int = typer.Option(0, help="Same seed, same split."),
    size: str | None = typer.Option(None, help="Resize to WIDTHxHEIGHT (default: keep size)."),
) -> None:
    """Split class folders into train/val/test (RGB copies, optional resize), recorded in OUT/split.json."""
    from captchalab.data.generate import parse_size
    from captchalab.data.split import parse_ratios
    from captchalab.search.datasets import split_class_folders

    summary = split_class_folders(
        class_dir, out, parse_ratios(ratios), seed=seed, size=parse_size(size) if size else None
    )
    totals = {name: sum(classes.values()) for name, classes in summary["counts"].items()}
    typer.echo(
        f"wrote {out}: "
        + ", ".join(f"{name} {n}" for name, n in totals.items())
        + (f"; skipped {len(summary['skipped'])} unreadable" if summary["skipped"] else "")
    )


@app.command()
def stats(
    folder: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per-channel mean and std of all pixels (scaled to [0, 1]), streaming over any number of images."""
    from captchalab.search.datasets import compute_channel_stats

    result = compute_channel_stats(folder)
    row = {
        "mean": [round(float(v), 6) for v in result.mean],
        "std": [round(float(v), 6) for v in result.std],
        "images": result.images,
    }
    typer.echo(json.dumps(row) if as_json else f"mean {row['mean']}  std {row['std']}  ({result.images} images)")
