"""Command line: ``captchalab <area> <verb>``. Thin layer over the library; user errors become one line + exit 2."""

from __future__ import annotations

import logging
import sys

import typer

from captchalab.cli import grid_model  # noqa: F401  (registers grid train/export/solve/eval)
from captchalab.cli.grid import app as grid_app
from captchalab.cli.ocr import app as ocr_app
from captchalab.cli.search import app as search_app
from captchalab.errors import CaptchalabError


def _flags_without_type() -> None:
    """typer 0.29 shows every flag as ``--json <bool>``, which reads as if it took a value; show no type for flags."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    option.display_type_rich = display_type_rich


_flags_without_type()

app = typer.Typer(
    help="Recognise CAPTCHA-like images with models you can train yourself.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(ocr_app, name="ocr")
app.add_typer(grid_app, name="grid")
app.add_typer(search_app, name="search")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    try:
        app()
    except CaptchalabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C into Exit(130) before it reaches the handler above
            typer.echo("interrupted", err=True)
        raise
