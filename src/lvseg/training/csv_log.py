"""A CSV logger whose ``metrics.csv`` survives ``--resume``.

Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` deletes an existing ``metrics.csv`` when it starts,
so resuming an interrupted run into the same folder would throw away the epochs logged before the crash.
With ``keep_existing=True`` the old rows are kept and the new ones appended (the header grows when new
columns appear); rows of epochs after ``resumed_epoch`` (the checkpoint's) are dropped first, so an epoch
that is trained again after a crash appears once.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lvseg.files import atomic_write_text


class _ContinuingExperimentWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` instead of deleting it, first dropping the rows of epochs after
    ``resumed_epoch`` (logged before the crash but not in the checkpoint: they are trained and logged again)."""

    def __init__(self, log_dir: str, resumed_epoch: int | None = None) -> None:
        self.resumed_epoch = resumed_epoch  # before the parent's constructor, which checks the folder
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        self.metrics_keys = sorted(key for key in header if key)
        if self.resumed_epoch is None:
            return
        kept = [row for row in rows if not _epoch_after(row.get("epoch"), self.resumed_epoch)]
        if len(kept) != len(rows):
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.metrics_file_path, buffer.getvalue())


def _epoch_after(value: str | None, epoch: int) -> bool:
    try:
        return int(float(value)) > epoch if value not in (None, "") else False
    except ValueError:
        return False


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that, with ``keep_existing=True``, continues the ``metrics.csv`` already in its folder."""

    def __init__(
        self, *args: Any, keep_existing: bool = False, resumed_epoch: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._keep_existing = keep_existing
        self._resumed_epoch = resumed_epoch

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if isinstance(self._experiment, ExperimentWriter):  # only this property sets it
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        if self._keep_existing:
            self._experiment = _ContinuingExperimentWriter(self.log_dir, resumed_epoch=self._resumed_epoch)
        else:
            self._experiment = ExperimentWriter(log_dir=self.log_dir)
        return self._experiment
