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


@dataclass
class FakePrediction:
    """Same fields as ``lvseg.inference.Prediction``; ``reading`` None: the fake reads no report."""

    mask: np.ndarray
    probability: np.ndarray
    reading: Any = None


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
    calls: int = 0

    def keep_text_cache_in_memory(self, max_items: int = 4096) -> None:
        """Nothing to do: the fake has no text features to cache."""

    def predict(self, image: Any, text: str | None, threshold: float | None = None) -> FakePrediction:
        """Brightness in [0, 1] (mean over channels) as probability, ``probability > threshold`` as mask
        (default: ``decision_threshold``).

        ``image``: anything ``Segmenter.predict`` takes (path, bytes, PIL image, (H, W[, C]) array);
        the results are at the input's size.
        """
        self.calls += 1
        probability = np.ascontiguousarray(read_image(image, channels=None).mean(axis=0), dtype=np.float32)
        cut = self.decision_threshold if threshold is None else threshold
        return FakePrediction(mask=(probability > cut).astype(np.uint8), probability=probability)
