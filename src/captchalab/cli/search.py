"""``captchalab search …``: dataset helpers. (index / query / serve need the grid image-text towers of issue #3.)"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Image search helpers: class-folder splits and channel statistics.", no_args_is_help=True)


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
