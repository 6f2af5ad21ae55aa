"""``captchalab grid …``: picture-grid data. (Training, export and the solver come with the rest of issue #3.)"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from captchalab.data.gridgen import CellSource

app = typer.Typer(help="Picture grids: solve/eval/calibrate, generate/cells, train/export.", no_args_is_help=True)
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
    from captchalab.data.cnclip_lmdb import build_lmdb

    typer.echo(f"wrote {build_lmdb(dataset)}")


@dataset_app.command("unpack")
def unpack(
    dataset: Path = typer.Argument(..., help="A Chinese-CLIP-format dataset folder."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write <text>/<image_id>.<ext> and <split>_labels.jsonl (exact texts) into."
    ),
    split: str = typer.Option("train", help="train, valid or test."),
) -> None:
    """Write a split back out as labelled cell folders."""
    from captchalab.data.cnclip import export_cells

    count = export_cells(dataset, split, out)
    typer.echo(f"wrote {count} images to {out}, listed with their texts in {out / f'{split}_labels.jsonl'}")


# ---------------------------------------------------------------------------------------- synthetic grids (data)
def _command_line() -> str:
    import shlex
    import sys

    return "captchalab " + shlex.join(sys.argv[1:])


@app.command("generate")
def generate_grids_cmd(
    out: Path = typer.Argument(..., help="Folder to write grids/*.png, manifest.jsonl and summary.json into."),
    count: int = typer.Option(..., "--count", "-n", help="How many grids."),
    layout: str = typer.Option("mixed", help="2x3 (六宫格, 2 rows of 3), 3x3 (九宫格) or mixed (half each)."),
    seed: int = typer.Option(0, help="Grid i depends only on (seed, i)."),
    icons: Path | None = typer.Option(None, help="Icon library (default data/grid-icons)."),
    cells: Path | None = typer.Option(None, help="Instead of icons: a folder of <label>/<image> cells."),
    styles: str | None = typer.Option(None, help="Icon styles, comma-separated (default: the library's defaults)."),
    split: str | None = typer.Option(None, help="Icons: test (each word's held-out style; default), train or all."),
    cell_size: int = typer.Option(100, help="Cell side in pixels."),
    words: int | None = typer.Option(None, help="Icons: use only this many words (a fixed, seed-free subset)."),
    skip_words: int = typer.Option(
        0, help="Icons: leave out the first N words of that fixed order (a set disjoint from --words N)."
    ),
    add_styles: str | None = typer.Option(
        None,
        help="Icons: give each word its icons in these styles too, whatever --split (e.g. designs a model never saw,"
        " so that the matching cells of a grid show different drawings).",
    ),
    workers: int = typer.Option(1, help="Processes; the output is the same for any number."),
) -> None:
    """Synthetic picture-grid captchas with their answers (manifest.jsonl)."""
    from captchalab.data.gridgen import GridConfig, generate_grids, parse_layout

    source = _grid_source(
        icons, cells, styles, split, words, default_split="test", skip_words=skip_words, add_styles=add_styles
    )
    config = GridConfig(source, tuple(parse_layout(layout)), cell_size=cell_size, seed=seed)
    summary = generate_grids(out, count, config, workers=workers, command=_command_line())
    layouts = ", ".join(f"{name} {n}" for name, n in summary["layouts"].items())
    where = f"icons {','.join(source.styles)} split {source.split}" if source.kind == "icons" else "cells"
    typer.echo(f"wrote {count} grids to {out} ({layouts}; {summary['words']} words from {where})")


@app.command("cells")
def generate_cells_cmd(
    out: Path = typer.Argument(..., help="Folder to write <word>/00000.png ... and words.json into."),
    per_word: int = typer.Option(..., "--per-word", help="Styled cells per word, cycling through its icons."),
    seed: int = typer.Option(0, help="A word's cells depend only on (seed, word)."),
    icons: Path | None = typer.Option(None, help="Icon library (default data/grid-icons)."),
    styles: str | None = typer.Option(None, help="Icon styles, comma-separated (default: the library's defaults)."),
    split: str = typer.Option("train", help="train (each word's styles but its held-out one), test or all."),
    cell_size: int = typer.Option(100, help="Cell side in pixels."),
    words: int | None = typer.Option(None, help="Use only this many words (a fixed, seed-free subset)."),
    workers: int = typer.Option(1, help="Processes; the output is the same for any number."),
) -> None:
    """Styled training cells from the icon library, ready for `grid dataset build`."""
    from captchalab.data.gridgen import CellsConfig, generate_cells

    source = _grid_source(icons, None, styles, split, words, default_split="train")
    config = CellsConfig(source, cell_size=cell_size, seed=seed)
    summary = generate_cells(out, per_word, config, workers=workers, command=_command_line())
    typer.echo(
        f"wrote {summary['cells']} cells of {len(source.labels)} words to {out}"
        f" (styles {','.join(source.styles)}, split {source.split})"
    )


def _grid_source(
    icons: Path | None,
    cells: Path | None,
    styles: str | None,
    split: str | None,
    words: int | None,
    default_split: str,
    skip_words: int = 0,
    add_styles: str | None = None,
) -> CellSource:
    from captchalab.data.gridgen import DEFAULT_ICONS, load_folder_source, load_icon_source, parse_styles
    from captchalab.errors import CaptchalabError

    if cells is not None:
        if icons is not None:
            raise CaptchalabError("give --icons or --cells, not both")
        if styles is not None or split is not None or words is not None or skip_words or add_styles is not None:
            raise CaptchalabError(
                "--styles, --split, --words, --skip-words and --add-styles apply to the icon library, not --cells"
            )
        return load_folder_source(cells)
    return load_icon_source(
        icons or DEFAULT_ICONS,
        parse_styles(styles),
        split or default_split,
        words,
        skip_words,
        add_styles=parse_styles(add_styles),
    )
