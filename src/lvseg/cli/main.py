"""The ``lvseg`` command line: a few clear verbs, each defined in its own module."""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape

from lvseg.errors import DataValidationError, LvsegError

app = typer.Typer(
    rich_markup_mode=None,  # plain help: flags read as flags (the rich layout prints `--resume <bool>`)
    name="lvseg",
    help="Language-guided medical image segmentation: train, evaluate, predict and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines ``register(app)`` that adds its commands.
COMMAND_MODULES = ("data", "report", "models", "train", "evaluate", "predict", "export", "serve", "demo")
for _module in COMMAND_MODULES:
    importlib.import_module(f"lvseg.cli.{_module}").register(app)


def error_message(error: LvsegError) -> str:
    """The text after ``error:``; a dataset with a single problem gets it on that one line."""
    if isinstance(error, DataValidationError) and len(error.problems) == 1:
        return error.problems[0]
    return str(error)


def main() -> None:
    """Console-script entry point: user errors become one red line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Deprecation chatter from Lightning's own internals; it says nothing about the user's run.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*treespec.*")
    try:
        app()
    except LvsegError as error:
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error:[/] {escape(error_message(error))}", highlight=False
        )
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
