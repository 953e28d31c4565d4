"""The ``lvseg`` command line: a few clear verbs, each defined in its own module.

Start-up stays light (``lvseg --help`` in about the time of importing torch): each verb imports what it runs
with (MONAI, Lightning, transformers) inside its function, and a verb whose options themselves need heavy
modules (:data:`DEFERRED_COMMANDS`) is loaded only when it is invoked, or its own ``--help`` is asked for.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from lvseg import __version__
from lvseg.errors import DataValidationError, LvsegError, first_line
from lvseg.files import os_error_message

logger = logging.getLogger(__name__)

#: Modules whose ``register(app)`` adds their commands at start-up, in the order of ``lvseg --help``.
COMMAND_MODULES = ("data", "report", "models", "train", "evaluate", "predict", "export", "tune", "serve", "demo")
#: Verbs built from heavy modules (``train``'s options are the fields of TrainConfig, whose choices come from
#: the optimiser and augmentation registries, which load MONAI): {verb, as named in :data:`COMMAND_MODULES`:
#: (module with ``register(app)``, one-line summary for ``lvseg --help``)}. The summary is the first line of
#: the command's docstring (tests/test_cli_startup.py checks that they agree).
DEFERRED_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lvseg.cli.train", "Train a segmentation model on a dataset in the LViT folder layout."),
}


class LvsegGroup(TyperGroup):
    """The root command group: a deferred verb is a placeholder until it is resolved, and ``--help`` lists it
    by its summary without importing it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.loaded: set[str] = set()  # deferred verbs whose real command replaced the placeholder

    # Contexts, formatters and commands are typer's own click classes (typer vendors click): typed Any here.
    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in DEFERRED_COMMANDS and cmd_name in self.commands and cmd_name not in self.loaded:
            self.commands[cmd_name] = _load_deferred(cmd_name)
            self.loaded.add(cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        commands = [(name, command) for name, command in self.commands.items() if not command.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])


def _load_deferred(name: str) -> Any:
    """The real click command of the deferred verb ``name`` (its module imported now)."""
    module, _ = DEFERRED_COMMANDS[name]
    holder = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    importlib.import_module(module).register(holder)
    return typer.main.get_group(holder).commands[name]


def _placeholder(name: str) -> Any:
    def deferred() -> None:  # replaced by the real command before it can run (LvsegGroup.get_command)
        raise RuntimeError(f"the deferred command {name!r} was not loaded")

    deferred.__doc__ = DEFERRED_COMMANDS[name][1]
    return deferred


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lvseg {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=LvsegGroup,
    rich_markup_mode=None,  # plain help: flags read as flags (the rich layout prints `--resume <bool>`)
    name="lvseg",
    help="Language-guided medical image segmentation: train, evaluate, predict and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print lvseg's version and exit."
    ),
) -> None:
    pass


for _module in COMMAND_MODULES:
    if _module in DEFERRED_COMMANDS:
        app.command(_module)(_placeholder(_module))
    else:
        importlib.import_module(f"lvseg.cli.{_module}").register(app)


def error_message(error: LvsegError) -> str:
    """The text after ``error:``; a dataset with a single problem gets it on that one line."""
    if isinstance(error, DataValidationError) and len(error.problems) == 1:
        return error.problems[0]
    return str(error)


def _print_error(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (Python's, or PyTorch's CPU or CUDA allocator)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return "can't allocate memory" in text or "CUDA out of memory" in text


def main() -> None:
    """Console-script entry point: user errors become one red line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Deprecation chatter from Lightning's own internals; it says nothing about the user's run.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*treespec.*")
    try:
        app()
    except LvsegError as error:
        _print_error(error_message(error))
        sys.exit(2)
    except OSError as error:
        # A file the checks before the work could not foresee (a folder made read-only meanwhile, a full disk):
        # its path and the system's reason. An OSError without a path is no user's doing: a traceback.
        if error.filename is None:
            raise
        logger.debug("file-system error", exc_info=True)
        _print_error(os_error_message(error))
        sys.exit(2)
    except (MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        logger.debug("out of memory", exc_info=True)
        _print_error(
            f"out of memory ({first_line(error, 160)}); lower --batch-size, --img-size or --text-length, or use a "
            "machine with more memory"
        )
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
