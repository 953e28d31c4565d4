"""A CSV logger whose ``metrics.csv`` survives ``--resume``.

Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` deletes an existing ``metrics.csv`` when it starts,
so resuming an interrupted run into the same folder would throw away the epochs logged before the crash.
With ``keep_existing=True`` the old rows are kept and the new ones appended (the header grows when new
columns appear).
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _ContinuingExperimentWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                header = next(csv.reader(handle), [])
            self.metrics_keys = sorted(key for key in header if key)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that, with ``keep_existing=True``, continues the ``metrics.csv`` already in its folder."""

    def __init__(self, *args: Any, keep_existing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_existing = keep_existing

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        writer = _ContinuingExperimentWriter if self._keep_existing else ExperimentWriter
        self._experiment = writer(log_dir=self.log_dir)
        return self._experiment
