"""The ``report-vector`` text front end: a report read by the QaTa grammar into C2FVL's 8-value vector.

``[bilateral, number, lupper, lmiddle, llower, rupper, rmiddle, rlower]``
(:data:`lvseg.data.reports.REPORT_VECTOR_FIELDS`), parsed by :func:`lvseg.data.reports.read_report`,
the package's one report grammar. No weights: nothing is learned or stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from lvseg.data.reports import REPORT_VECTOR_FIELDS, ReportError, read_report, report_vector
from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder, TextFeatures, TextReading, check_texts

logger = logging.getLogger(__name__)

UNPARSABLE_MODES = ("error", "zero")


class ReportVectorEncoder(TextEncoder):
    """Reports -> (B, 1, 8) vectors (``tokens``; ``pooled`` is (B, 8), ``mask`` all True).

    ``unparsable="error"`` (default): a report outside the grammar raises :class:`LvsegError` naming every
    such report of the batch and the part not understood. ``unparsable="zero"``: it becomes the zero
    vector, counted in :attr:`zeroed` and logged. An empty report (what the text ablation's "empty" mode
    sends) is the zero vector in both modes: no text, no findings. :meth:`problems` still lists it, so a
    dataset with empty reports fails the training data check.
    """

    trainable = False
    _device_marker: torch.Tensor  # an empty buffer: where .to() moved the encoder
    feature_dim = len(REPORT_VECTOR_FIELDS)
    max_length = 1

    def __init__(self, unparsable: str = "error") -> None:
        super().__init__()
        if unparsable not in UNPARSABLE_MODES:
            raise LvsegError(f"unparsable reports: {unparsable!r} is not one of {', '.join(UNPARSABLE_MODES)}")
        self.unparsable = unparsable
        self.zeroed = 0
        self.register_buffer("_device_marker", torch.zeros(0), persistent=False)

    def config(self) -> dict[str, Any]:
        return {"type": "report-vector", "unparsable": self.unparsable}

    def problems(self, texts: Sequence[str]) -> dict[int, ReportError]:
        """The reports outside the grammar: {position in ``texts``: the error naming the part not understood}."""
        found = {}
        for index, text in enumerate(texts):
            try:
                read_report(text)
            except ReportError as error:
                found[index] = error
        return found

    def read(self, text: str) -> TextReading:
        """Whether ``text`` follows the report grammar (an empty report is not reported: no text, no findings)."""
        if not text.strip():
            return TextReading()
        try:
            read_report(text)
        except ReportError as error:
            return TextReading(parsed=False, problem=str(error))
        return TextReading(parsed=True)

    def vectors(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, 8) float32 on the encoder's device."""
        rows, failed = [], []
        for text in check_texts(texts):
            if not text.strip():
                rows.append([0.0] * self.feature_dim)
                continue
            try:
                findings, bilateral = read_report(text)
                rows.append(report_vector(findings, bilateral))
            except ReportError as error:
                failed.append(error)
                rows.append([0.0] * self.feature_dim)
        if failed and self.unparsable == "error":
            raise LvsegError(
                f"{len(failed)} report(s) do not follow the report grammar: "
                + "; ".join(str(error) for error in failed[:10])
                + " (or accept them as zero vectors with unparsable_reports='zero')"
            )
        if failed:
            log = logger.warning if not self.zeroed else logger.debug  # once; training reports the total upfront
            log("%d report(s) outside the grammar read as zero vectors, e.g. %s", len(failed), failed[0])
            self.zeroed += len(failed)
        return torch.tensor(rows, dtype=torch.float32, device=self._device_marker.device)

    def forward(self, texts: list[str]) -> TextFeatures:
        pooled = self.vectors(texts)
        return TextFeatures(
            tokens=pooled.unsqueeze(1),
            mask=torch.ones(len(pooled), 1, dtype=torch.bool, device=pooled.device),
            pooled=pooled,
        )
