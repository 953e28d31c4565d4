"""Atomic file writes (a crash never leaves a half-written output behind), and checking that an output can be
written before any work starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lvseg.errors import LvsegError


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:  # named by the file asked for, not the temporary one it never became
        raise type(error)(error.errno, error.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename == tmp_name:
            raise type(error)(error.errno, error.strerror, str(target)) from None
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def output_problems(path: str | os.PathLike[str], flag: str, expect: str, purpose: str = "") -> list[str]:
    """What stops a command from writing its output at ``path`` (given as ``flag``), before any work starts:
    ``expect`` is ``"folder"`` (created when missing) or ``"file"`` (its folder created when missing).

    A file where a folder is expected (or the reverse), a file in the way of a folder to create, and a folder
    this process may not write into (``os.access``: also a read-only file system) are each one line naming
    ``flag``, the path and what was expected; ``purpose`` says what the output holds ("a run folder: best.ckpt,
    ..."). Returns [] when the output can be written as far as can be told without writing."""
    if expect not in ("folder", "file"):
        raise ValueError(f"expect must be 'folder' or 'file', got {expect!r}")
    target = Path(path)
    wanted = f"expected a {expect}{f' ({purpose})' if purpose else ''}"
    if expect == "folder" and target.exists() and not target.is_dir():
        return [f"{flag} '{target}' is a file; {wanted}"]
    if expect == "file" and target.is_dir():
        return [f"{flag} '{target}' is a folder; {wanted}"]
    base = target if expect == "folder" else target.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if base.exists() and not base.is_dir():
        return [f"{flag} '{target}' cannot be created: '{base}' is a file, not a folder; {wanted}"]
    if not os.access(base, os.W_OK | os.X_OK):
        return [
            f"{flag} '{target}' cannot be written: the folder '{base}' is not writable; {wanted} in a writable place"
        ]
    refusal = _refuses_new_files(base)  # what os.access cannot tell: root on /proc or /sys, some mounts
    if refusal is not None:
        return [f"{flag} '{target}' cannot be written: the folder '{base}' refuses new files ({refusal}); {wanted}"]
    return []


def _refuses_new_files(folder: Path) -> str | None:
    """Why ``folder`` refuses a new file (a probe file is created and removed at once), or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=".lvseg-write-check-", dir=folder)
    except OSError as error:
        return error.strerror or type(error).__name__
    os.close(fd)
    Path(name).unlink(missing_ok=True)
    return None


def check_output(path: str | os.PathLike[str], flag: str, expect: str, purpose: str = "") -> None:
    """Raise :class:`~lvseg.errors.LvsegError` with :func:`output_problems`, if any."""
    problems = output_problems(path, flag, expect, purpose)
    if problems:
        raise LvsegError("; ".join(problems))


def os_error_message(error: OSError) -> str:
    """One line for a file-system error met while a command wrote or read a file (the last resort of the CLI,
    after the checks made before any work): the path(s), what the system said, what to check."""
    paths = " -> ".join(f"'{name}'" for name in (error.filename, error.filename2) if name is not None)
    reason = error.strerror or type(error).__name__
    return f"cannot use {paths}: {reason} ({type(error).__name__}); check that the path exists and is writable"
