"""The synchronous work of a request: decode, segment, measure, render; on fixed worker and model threads."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvseg.errors import LvsegError
from lvseg.rendering import (
    draw_lesion_numbers,
    draw_side_markers,
    label_lesions,
    overlay_lesions,
    probability_heatmap,
    side_markers,
)
from lvseg.serving.errors import ApiError
from lvseg.serving.forms import FormLimits
from lvseg.serving.protocols import PredictionLike, SegmenterLike
from lvseg.serving.rendering import Measurements, measure
from lvseg.serving.report_pdf import ReportContent, build_report_pdf
from lvseg.serving.results import RecentResults
from lvseg.serving.uploads import DecodeBudget, DecodedImage, ImageLimits, decode_image


@dataclass
class Analysis:
    """The result of one segmentation, before it is encoded for a response.

    text: the report it was computed from; text_warnings / unknown_words / report_parsed: how the model read
    that report (:class:`lvseg.text.base.TextReading`); consistency: (code, sentence) of each warning that the
    result contradicts its report or the image is unlike the training images
    (:mod:`lvseg.inference.consistency`).
    """

    image: DecodedImage
    mask: np.ndarray
    overlay: np.ndarray
    measurements: Measurements
    inference_ms: float
    heatmap: np.ndarray
    side_markers: tuple[str, str] | None = None
    text: str = ""
    text_warnings: list[str] = field(default_factory=list)
    unknown_words: list[str] = field(default_factory=list)
    report_parsed: bool | None = None
    consistency: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ServiceConfig:
    """Limits and options of one app instance."""

    form_limits: FormLimits
    image_limits: ImageLimits
    max_text_chars: int
    max_note_chars: int
    max_study_id_chars: int
    threshold: float  # the probability above which a pixel is lesion (the model's declared one unless given)


class Admission:
    """At most ``max_pending`` uploads in the server at once (an event-loop counter: no lock); more get 503."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending_requests must be at least 1")
        self.max_pending = max_pending
        self.pending = 0

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count one upload for the block, or refuse it with 503 when the server is full."""
        if self.pending >= self.max_pending:
            raise ApiError(
                503,
                f"the server is busy with {self.max_pending} uploads; try again in a moment",
                {"max_pending_requests": self.max_pending},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1


class Service:
    """The model plus the synchronous work of a request (run in the thread pool)."""

    def __init__(self, segmenter: SegmenterLike, config: ServiceConfig, max_concurrent_jobs: int) -> None:
        self.segmenter = segmenter
        self.config = config
        # Every model call runs on this one thread: one at a time (identical inputs give identical masks), and
        # torch's per-calling-thread state (OpenMP team, oneDNN scratch, malloc arena) exists once, not once per
        # request thread (8 concurrent requests otherwise cost gigabytes).
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvseg-model")
        # Decoding, measuring and rendering run on a fixed set of ``max_concurrent_jobs`` threads, not on the
        # request threads: at most that many large images are in memory at once, and the memory each thread's
        # allocator keeps after a large image exists for those threads only.
        self.workers = ThreadPoolExecutor(max_workers=max_concurrent_jobs, thread_name_prefix="lvseg-job")
        self.decode_budget = DecodeBudget()
        self.results = RecentResults()

    def close(self) -> None:
        """Stop the worker and model threads (the app's shutdown)."""
        for executor in (self.workers, self.model_thread):
            executor.shutdown(wait=False, cancel_futures=True)

    def analyse(self, image_bytes: bytes, text: str) -> Analysis:
        """Decode, segment, measure and render, with at most ``max_concurrent_jobs`` at once."""
        return self.workers.submit(self._analyse, image_bytes, text).result()

    def report(self, original: np.ndarray, overlay: np.ndarray, content: ReportContent) -> bytes:
        """Render the PDF report, counted as a job like a segmentation."""
        return self.workers.submit(build_report_pdf, original, overlay, content).result()

    def _analyse(self, image_bytes: bytes, text: str) -> Analysis:
        image = decode_image(image_bytes, self.config.image_limits, self.decode_budget)
        start = time.perf_counter()
        try:
            # The float array of lvseg.data.images.read_image, as training and `lvseg predict` read the file.
            prediction = self.model_thread.submit(self._predict, image.model_input, text, image.row_direction).result()
        except LvsegError as error:  # the model refused this input (e.g. its text), in plain words
            raise ApiError(422, str(error)) from error
        inference_ms = (time.perf_counter() - start) * 1000.0
        mask = np.asarray(prediction.mask).astype(np.uint8, copy=False)
        probability = np.asarray(prediction.probability, dtype=np.float32)
        expected = (image.height, image.width)
        if mask.shape != expected or probability.shape != expected:
            raise RuntimeError(f"the model returned a {mask.shape} mask for a {expected} image")
        labels, count = label_lesions(mask)
        measurements = measure(mask, probability, labels, count, pixel_spacing_mm=image.pixel_spacing_mm)
        reading = prediction.reading
        consistency = [(warning.code, warning.message) for warning in prediction.consistency]
        heatmap = probability_heatmap(probability)
        del probability, prediction  # full-size float maps: not kept past the measurements
        overlay = draw_lesion_numbers(overlay_lesions(image.pixels, labels, count), labels, count)
        markers = side_markers(image.row_direction) if image.row_direction else None
        if markers:  # the patient's sides, from DICOM PatientOrientation, on what is shown (not on the mask)
            overlay, heatmap = draw_side_markers(overlay, markers), draw_side_markers(heatmap, markers)
        return Analysis(
            image.without_model_input(),
            mask,
            overlay,
            measurements,
            round(inference_ms, 2),
            heatmap=heatmap,
            side_markers=markers,
            text=text,
            text_warnings=reading.warnings() if reading is not None else [],
            unknown_words=list(dict.fromkeys(reading.unknown_words)) if reading is not None else [],
            report_parsed=reading.parsed if reading is not None else None,
            consistency=consistency,
        )

    def _predict(self, model_input: np.ndarray, text: str, row_direction: str | None) -> PredictionLike:
        with _inference_mode():
            return self.segmenter.predict(
                model_input, text, threshold=self.config.threshold, row_direction=row_direction
            )


def _inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode()`` when torch is in use (a real model), else nothing."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()
