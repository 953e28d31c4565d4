"""The decision threshold: the probability above which a pixel is lesion (no torch import: the CLI reads the help).

A model declares its own (``SegmentationModel.decision_threshold``, 0.5 unless the family says otherwise); an
export folder carries the one of the model it was exported from; predict, evaluate and serve use it unless the
caller gives ``threshold``.
"""

from __future__ import annotations

import math

from lvseg.errors import LvsegError

#: The threshold of models that declare none, and of export folders written before folders carried theirs.
DEFAULT_THRESHOLD = 0.5
#: The help line of every ``--threshold`` option (predict, evaluate, serve).
THRESHOLD_HELP = (
    "Probability above which a pixel is lesion, between 0 and 1 (default: the model's declared "
    "threshold, 0.5 for most)."
)


def check_threshold(value: float, what: str = "threshold") -> float:
    """``value`` as a float when it lies strictly between 0 and 1; :class:`LvsegError` naming ``what`` (e.g.
    ``"--threshold"``) and the value otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LvsegError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise LvsegError(f"{what} must be between 0 and 1, got {value}")
    return number


def threshold_or_default(threshold: float | None, declared: float, what: str = "threshold") -> float:
    """The threshold to use: ``threshold`` when given (checked), else the model's ``declared`` one."""
    return check_threshold(declared if threshold is None else threshold, what)
