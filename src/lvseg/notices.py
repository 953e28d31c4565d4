"""Notes on how an input was read that its user should see, not only the log: a DICOM header value that was
not a finite number and was not used, a window that mapped every pixel to one value.

The readers call :func:`input_notice`, which logs the note as a warning and adds it to the notes being
collected in the current context; a caller that shows results (the web app) wraps the decoding in
:func:`collect_input_notices` and shows what it collected beside the result. Collection is per context
(:mod:`contextvars`), so concurrent requests on other threads never see each other's notes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

_COLLECTED: ContextVar[list[str] | None] = ContextVar("lvseg_input_notices", default=None)


@contextlib.contextmanager
def collect_input_notices() -> Iterator[list[str]]:
    """The notes :func:`input_notice` gives inside the block, in order (the list fills as they come)."""
    notes: list[str] = []
    token = _COLLECTED.set(notes)
    try:
        yield notes
    finally:
        _COLLECTED.reset(token)


def input_notice(logger: logging.Logger, message: str, *args: object) -> None:
    """Log ``message % args`` on ``logger`` as a warning and add it to the notes being collected, if any."""
    text = message % args if args else message
    logger.warning("%s", text)
    notes = _COLLECTED.get()
    if notes is not None:
        notes.append(text)


__all__ = ["collect_input_notices", "input_notice"]
