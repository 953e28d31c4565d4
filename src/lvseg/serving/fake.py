"""A tiny deterministic stand-in for a trained Segmenter, for tests, demos and the load test.

It has the interface of ``lvseg.inference.Segmenter`` (``predict`` and the descriptive attributes),
reads its input with the same reader (:func:`lvseg.data.images.read_image`), and marks bright pixels
as lesion: the probability is the pixel's brightness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvseg.data.images import read_image
from lvseg.data.reports import EXAMPLE_REPORTS
from lvseg.inference.consistency import ConsistencyWarning, report_warnings


@dataclass
class FakePrediction:
    """Same fields as ``lvseg.inference.Prediction``; ``reading`` None: the fake reads no report."""

    mask: np.ndarray
    probability: np.ndarray
    reading: Any = None
    consistency: list[ConsistencyWarning] = field(default_factory=list)


@dataclass
class FakeSegmenter:
    """Thresholds brightness; needs text unless ``requires_text`` is False."""

    requires_text: bool = True
    model_name: str = "fake-brightness"
    img_size: int = 224
    device: str = "cpu"
    metrics: dict[str, float] = field(default_factory=lambda: {"val_dice": 0.5})
    hparams: dict[str, Any] = field(default_factory=dict)
    text_encoder: Any = None
    decision_threshold: float = 0.5
    example_reports: tuple[str, ...] = EXAMPLE_REPORTS
    calls: int = 0

    def keep_text_cache_in_memory(self, max_items: int = 4096) -> None:
        """Nothing to do: the fake has no text features to cache."""

    def predict(
        self, image: Any, text: str | None, threshold: float | None = None, row_direction: str | None = None
    ) -> FakePrediction:
        """Brightness in [0, 1] (mean over channels) as probability, ``probability > threshold`` as mask
        (default: ``decision_threshold``).

        ``image``: anything ``Segmenter.predict`` takes (path, bytes, PIL image, (H, W[, C]) array);
        the results are at the input's size; ``consistency``: the report checks of the real model (no image
        check: the fake records no training statistics).
        """
        self.calls += 1
        probability = np.ascontiguousarray(read_image(image, channels=None).mean(axis=0), dtype=np.float32)
        cut = self.decision_threshold if threshold is None else threshold
        mask = (probability > cut).astype(np.uint8)
        warnings = report_warnings(mask, probability, text or "", row_direction)
        return FakePrediction(mask=mask, probability=probability, consistency=warnings)
