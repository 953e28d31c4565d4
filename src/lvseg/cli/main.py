"""The ``lvseg`` command line: a few clear verbs, each defined in its own module."""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from lvseg.errors import LvsegError

app = typer.Typer(
    name="lvseg",
    help="Language-guided medical image segmentation: train, evaluate, predict and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines ``register(app)`` that adds its commands.
COMMAND_MODULES = ("data", "models", "train", "evaluate", "predict", "serve", "demo")
for _module in COMMAND_MODULES:
    importlib.import_module(f"lvseg.cli.{_module}").register(app)


def main() -> None:
    """Console-script entry point: user errors become one red line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except LvsegError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
