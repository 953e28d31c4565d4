"""A tiny deterministic stand-in for a trained Segmenter, for tests, demos and the load test.

It has the interface of ``lvseg.inference.Segmenter`` (``predict`` and the descriptive attributes)
and marks bright pixels as lesion: the probability is the pixel's brightness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FakePrediction:
    """Same fields as ``lvseg.inference.Prediction``."""

    mask: np.ndarray
    probability: np.ndarray


@dataclass
class FakeSegmenter:
    """Thresholds brightness; needs text unless ``requires_text`` is False."""

    requires_text: bool = True
    model_name: str = "fake-brightness"
    img_size: int = 224
    device: str = "cpu"
    metrics: dict[str, float] = field(default_factory=lambda: {"val_dice": 0.5})
    text_encoder: Any = None
    calls: int = 0

    def predict(self, image: Any, text: str | None, threshold: float = 0.5) -> FakePrediction:
        """Brightness in [0, 1] as probability, ``probability > threshold`` as mask, at the input's size."""
        self.calls += 1
        array = np.asarray(image)
        if array.dtype == np.uint8:
            unit = array.astype(np.float32) / 255.0
            gray = unit.mean(axis=2) if unit.ndim == 3 else unit
        else:  # float (C, H, W) in [0, 1]
            unit = array.astype(np.float32)
            gray = unit.mean(axis=0) if unit.ndim == 3 else unit
        probability = np.ascontiguousarray(gray, dtype=np.float32)
        return FakePrediction(mask=(probability > threshold).astype(np.uint8), probability=probability)
