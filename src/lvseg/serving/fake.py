"""A tiny deterministic stand-in for a trained Segmenter, for tests, demos and the load test.

It has the interface of ``lvseg.inference.Segmenter`` (``predict`` and the descriptive attributes),
reads its input with the same reader (:func:`lvseg.data.images.read_image`), and marks bright pixels
as lesion: the probability is the pixel's brightness.

Given a ``class_table`` it is a multi-class checkpoint: class t of K (table position) owns the t-th of K
vertical bands of the image, where its probability is the brightness (elsewhere a fifth of it), and
:meth:`FakeSegmenter.segment_classes` composes the label map with lvseg's own rule
(:mod:`lvseg.inference.multiclass`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvseg.data.classes import ClassInfo
from lvseg.data.images import read_image
from lvseg.data.reports import EXAMPLE_REPORTS
from lvseg.inference.consistency import ConsistencyWarning, report_warnings
from lvseg.inference.multiclass import (
    ClassPrediction,
    build_class_prediction,
    class_prompts,
    select_classes,
    table_colours,
)


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
    class_table: list[ClassInfo] = field(default_factory=list)
    output_classes: int = 1
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

    def class_prompts(
        self, classes: Sequence[ClassInfo], prompts: Mapping[str, str] | None = None, modality: str | None = None
    ) -> list[str]:
        """What ``Segmenter.class_prompts`` asks: the caller's text, the class's template, else its name."""
        if not self.requires_text:
            return [""] * len(classes)
        return class_prompts(classes, prompts, modality)

    def segment_classes(
        self,
        image: Any,
        classes: str | Sequence[str] = "all",
        threshold: float | None = None,
        prompts: Mapping[str, str] | None = None,
        modality: str | None = None,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> ClassPrediction:
        """The label map of ``classes`` (module docstring: class t owns the t-th vertical band)."""
        self.calls += 1
        chosen = select_classes(self.class_table, classes)
        brightness = np.ascontiguousarray(read_image(image, channels=None).mean(axis=0), dtype=np.float32)
        width, count = brightness.shape[1], len(self.class_table)
        position = {info.value: index for index, info in enumerate(self.class_table)}
        columns = np.arange(width)
        probabilities = []
        for info in chosen:
            start, stop = position[info.value] * width // count, (position[info.value] + 1) * width // count
            band = (columns >= start) & (columns < stop)
            probabilities.append(np.where(band[None, :], brightness, brightness * 0.2))
        return build_class_prediction(
            np.stack(probabilities),
            chosen,
            table_colours(self.class_table),
            self.decision_threshold if threshold is None else threshold,
            prompts=self.class_prompts(chosen, prompts, modality),
            pixel_spacing_mm=pixel_spacing_mm,
        )
