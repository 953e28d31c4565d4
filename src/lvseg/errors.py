"""User-facing errors.

Anything a user can cause (bad data, bad flags, a wrong checkpoint) raises
:class:`LvsegError` with a message that names the file, field or value and what
was expected. The CLI prints that message in one line and exits with status 2,
without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class LvsegError(Exception):
    """An error caused by the user's input, with a message meant for humans."""


class DataValidationError(LvsegError):
    """A dataset split has one or more problems; all of them are listed at once."""

    def __init__(self, problems: Iterable[str], where: str = "dataset") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{where} has {len(self.problems)} problem(s):\n{lines}")


class CheckpointError(LvsegError):
    """A checkpoint is missing, corrupted, or holds another kind of model."""


#: Lines of a native library's error that only say where in its C++ sources it was raised (OpenVINO's
#: "Exception from src/inference/src/cpp/core.cpp:84:", "Check '...' failed at src/...:117:", its frontends'
#: "FrontEnd API failed with GeneralFailure:"): not what went wrong.
_SOURCE_LOCATION = re.compile(
    r"^(exception from \S+:\d+:?|check '.*' failed at \S+:\d+:?|\S+\.(cpp|cc|h|hpp):\d+:?|"
    r"frontend api failed with \w+:)$",
    re.IGNORECASE,
)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's message that says what went wrong (at most ``limit`` characters;
    lines naming only a C++ source location are skipped), else its type's name: what a one-line message quotes
    of a third-party library's error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not _SOURCE_LOCATION.match(line)]
    chosen = meaningful or lines
    return chosen[0][:limit] if chosen else type(error).__name__
