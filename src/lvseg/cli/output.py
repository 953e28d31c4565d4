"""How the CLI writes to the console: one console factory, counted nouns, and the ``lvseg`` command to suggest."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from rich.console import Console


def console(stderr: bool = False) -> Console:
    """A rich console for the verbs' output. Lines wrap at the terminal's width on a terminal, and are written
    whole otherwise, so a log file (``lvseg train ... > train.log``) keeps a suggested command on one line."""
    out = Console(stderr=stderr)
    if not out.is_terminal:
        out.soft_wrap = True
    return out


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun`` in agreement: "1 epoch", "2 epochs", "0 epochs" (``plural``: an irregular one)."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


def lvseg_command() -> str:
    """The command that runs this ``lvseg``, as the user can type it in the shell this process came from.

    ``lvseg`` when that name on the PATH is this installation; otherwise the script's path as it was started
    (``.venv/bin/lvseg`` from ``make demo``, whose virtual environment is not active in the user's shell), and
    ``python -m lvseg.cli.main`` with this interpreter's path when no script is found."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.name != "lvseg" or not script.is_file():
        beside = Path(sys.executable).parent / "lvseg"  # an in-process call (tests, python -m): the venv's script
        script = beside if beside.is_file() else None
    if script is None:
        return f"{shlex.quote(sys.executable)} -m lvseg.cli.main"
    on_path = shutil.which("lvseg")
    if on_path is not None and _same_file(Path(on_path), script):
        return "lvseg"
    shown = str(script) if script.is_absolute() or os.sep in str(script) else f".{os.sep}{script}"
    return shlex.quote(shown)


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve() or first.samefile(second)
    except OSError:
        return False
