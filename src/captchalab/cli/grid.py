"""``captchalab grid …``: picture-grid data. (Training, export and the solver come with the rest of issue #3.)"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Picture grids: Chinese-CLIP-format datasets.", no_args_is_help=True)
dataset_app = typer.Typer(
    help="Build and unpack Chinese-CLIP-format datasets (TSV / JSONL / LMDB).", no_args_is_help=True
)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
def build(
    cells: Path = typer.Argument(..., help="Folder of <label>/<image> sub-folders, or a JSONL of {image, text}."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write."),
    split: str = typer.Option("0.8,0.1,0.1", help="train,valid,test ratios (stratified per label)."),
    seed: int = typer.Option(0, help="Same seed, same split."),
    lmdb: bool = typer.Option(False, "--lmdb", help="Also write lmdb/{split}/{imgs,pairs} as Chinese-CLIP does."),
) -> None:
    """Labelled cells -> {split}_imgs.tsv + {split}_texts.jsonl (+ LMDB)."""
    from captchalab.data.cnclip import build_dataset
    from captchalab.data.split import parse_ratios

    summary = build_dataset(cells, out, parse_ratios(split), seed=seed, lmdb=lmdb)
    counts = ", ".join(f"{name} {row['images']}" for name, row in summary["splits"].items())
    typer.echo(
        f"wrote {out}: {len(summary['labels'])} labels; images {counts}"
        + (f"; skipped {len(summary['skipped'])} unreadable" if summary["skipped"] else "")
    )


@dataset_app.command("lmdb")
def lmdb_cmd(dataset: Path = typer.Argument(..., help="A folder of {split}_imgs.tsv + {split}_texts.jsonl.")) -> None:
    """Build the LMDB of an existing TSV/JSONL dataset (ours or made by Chinese-CLIP's tools)."""
    from captchalab.data.cnclip import build_lmdb

    typer.echo(f"wrote {build_lmdb(dataset)}")


@dataset_app.command("unpack")
def unpack(
    dataset: Path = typer.Argument(..., help="A Chinese-CLIP-format dataset folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write <text>/<image_id>.<ext> into."),
    split: str = typer.Option("train", help="train, valid or test."),
) -> None:
    """Write a split back out as labelled cell folders."""
    from captchalab.data.cnclip import export_cells

    typer.echo(f"wrote {export_cells(dataset, split, out)} images to {out}")
