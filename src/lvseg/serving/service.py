"""The synchronous work of a request: decode, segment, measure, render; on fixed worker and model threads."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lvseg.errors import LvsegError
from lvseg.rendering import (
    draw_lesion_numbers,
    draw_side_markers,
    label_lesions,
    overlay_classes,
    overlay_lesions,
    probability_heatmap,
    side_markers,
)
from lvseg.serving.errors import ApiError
from lvseg.serving.forms import FormLimits
from lvseg.serving.protocols import PredictionLike, SegmenterLike, WarningLike
from lvseg.serving.rendering import ClassMeasurement, Measurements, measure
from lvseg.serving.report_pdf import ReportContent, build_report_pdf
from lvseg.serving.results import RecentResults
from lvseg.serving.uploads import DecodeBudget, DecodedImage, ImageLimits, decode_image

if TYPE_CHECKING:
    from lvseg.inference.multiclass import ClassPrediction

logger = logging.getLogger(__name__)

#: Allocations at least this large get their own memory map from glibc's malloc, returned to the system when freed
#: (:func:`return_large_blocks_promptly`).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
_allocator_lock = threading.Lock()
_allocator_tuned: bool | None = None


def return_large_blocks_promptly() -> bool:
    """Have glibc's malloc serve every block of :data:`MMAP_THRESHOLD_BYTES` or more from its own memory map, which
    goes back to the system when the block is freed; True when set (glibc), False elsewhere. Once per process.

    By default glibc raises that threshold each time a large mapped block is freed, up to 32 MB: after the
    first large image, the arrays of later requests (3-38 MB at the working size) come from per-thread heaps,
    which keep what is freed in them, and a burst of large uploads on several threads leaves hundreds of MB
    resident that no request uses (measured: the server's peak under eight concurrent 8000x6000 uploads fell
    by about 400 MB with it; speed unchanged within noise). Setting the threshold also fixes the trim threshold
    (freed memory at the top of a heap is returned too).
    """
    global _allocator_tuned
    with _allocator_lock:
        if _allocator_tuned is None:
            _allocator_tuned = False
            name = ctypes.util.find_library("c")
            try:
                libc = ctypes.CDLL(name) if name else None
                mallopt = getattr(libc, "mallopt", None)
                if mallopt is not None and sys.platform.startswith("linux"):
                    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
            except OSError:
                pass
            logger.debug("large blocks mapped from %d bytes: %s", MMAP_THRESHOLD_BYTES, _allocator_tuned)
        return _allocator_tuned


@dataclass
class Analysis:
    """The result of one segmentation, before it is encoded for a response.

    text: the report it was computed from; text_warnings / unknown_words / report_parsed: how the model read
    that report (:class:`lvseg.text.base.TextReading`); consistency: (code, sentence) of each warning that the
    result contradicts its report or the image is unlike the training images
    (:mod:`lvseg.inference.consistency`). With classes chosen (:mod:`lvseg.inference.multiclass`):
    ``label_map`` (H, W) holds the class values, ``mask`` is its union, ``measurements`` describe the union
    (no lesion list), ``classes`` each class, ``overlay`` the classes' colours and ``heatmap`` the highest
    class probability; ``text`` is the report, kept, not sent to the model.
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
    label_map: np.ndarray | None = None
    classes: list[ClassMeasurement] | None = None


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
        return_large_blocks_promptly()  # the memory of a large upload's arrays goes back when they are freed

    def close(self) -> None:
        """Stop the worker and model threads (the app's shutdown)."""
        for executor in (self.workers, self.model_thread):
            executor.shutdown(wait=False, cancel_futures=True)

    def analyse(self, image_bytes: bytes, text: str, classes: Sequence[str] | None = None) -> Analysis:
        """Decode, segment, measure and render, with at most ``max_concurrent_jobs`` at once. ``classes``:
        names of the checkpoint's classes to segment into a label map (None: one structure, from ``text``)."""
        if classes is not None:
            return self.workers.submit(self._analyse_classes, image_bytes, text, list(classes)).result()
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
        consistency = _consistency(image, prediction.consistency)
        heatmap = _heatmap(probability)
        del probability, prediction  # full-size float maps: not kept past the measurements
        overlay = draw_lesion_numbers(overlay_lesions(image.pixels, labels, count), labels, count)
        overlay, heatmap, markers = _with_side_markers(image, overlay, heatmap)
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

    def _analyse_classes(self, image_bytes: bytes, text: str, classes: list[str]) -> Analysis:
        image = decode_image(image_bytes, self.config.image_limits, self.decode_budget)
        start = time.perf_counter()
        try:
            prediction = self.model_thread.submit(
                self._segment_classes, image.model_input, classes, image.pixel_spacing_mm
            ).result()
        except LvsegError as error:
            raise ApiError(422, str(error)) from error
        inference_ms = (time.perf_counter() - start) * 1000.0
        label_map = prediction.label_map
        expected = (image.height, image.width)
        if label_map.shape != expected:
            raise RuntimeError(f"the model returned a {label_map.shape} label map for a {expected} image")
        probability = prediction.max_probability
        union = (label_map > 0).astype(np.uint8)
        labels, count = label_lesions(union)
        # The union's totals; the per-class rows replace the lesion list (its colours are the lesions', not the classes').
        measurements = replace(
            measure(union, probability, labels, count, pixel_spacing_mm=image.pixel_spacing_mm), lesion_list=[]
        )
        heatmap = _heatmap(probability)
        overlay = overlay_classes(image.pixels, label_map, prediction.colours)
        overlay, heatmap, markers = _with_side_markers(image, overlay, heatmap)
        return Analysis(
            image.without_model_input(),
            union,
            overlay,
            measurements,
            round(inference_ms, 2),
            heatmap=heatmap,
            side_markers=markers,
            text=text,
            text_warnings=prediction.warnings(),
            consistency=_consistency(image, prediction.consistency),
            label_map=label_map,
            classes=[ClassMeasurement.of(result) for result in prediction.classes],
        )

    def _segment_classes(
        self, model_input: np.ndarray, classes: list[str], pixel_spacing_mm: tuple[float, float] | None
    ) -> ClassPrediction:
        with _inference_mode():
            return self.segmenter.segment_classes(
                model_input, classes, threshold=self.config.threshold, pixel_spacing_mm=pixel_spacing_mm
            )

    def _predict(self, model_input: np.ndarray, text: str, row_direction: str | None) -> PredictionLike:
        with _inference_mode():
            return self.segmenter.predict(
                model_input, text, threshold=self.config.threshold, row_direction=row_direction
            )


#: Rows of the probability map coloured at a time (:func:`_heatmap`).
HEATMAP_BAND_ROWS = 128


#: The consistency code of a note on how the image file was read (:attr:`DecodedImage.notices`).
IMAGE_READ_AS_REPAIRED = "image-header-value-ignored"


def _consistency(image: DecodedImage, warnings: Sequence[WarningLike]) -> list[tuple[str, str]]:
    """(code, sentence) of each note on how the image was read (first: it bears on everything after), then of
    each of the result's consistency ``warnings``."""
    return [(IMAGE_READ_AS_REPAIRED, note) for note in image.notices] + [(w.code, w.message) for w in warnings]


def _with_side_markers(
    image: DecodedImage, overlay: np.ndarray, heatmap: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Any]:
    """(overlay, heat map, markers): the patient's sides, from a DICOM's PatientOrientation, drawn on what is
    shown (never on the mask); both images unchanged and no markers for an image without an orientation."""
    markers = side_markers(image.row_direction) if image.row_direction else None
    if markers:
        overlay, heatmap = draw_side_markers(overlay, markers), draw_side_markers(heatmap, markers)
    return overlay, heatmap, markers


def _heatmap(probability: np.ndarray) -> np.ndarray:
    """:func:`~lvseg.rendering.probability_heatmap` of ``probability`` (H, W), computed in bands of
    :data:`HEATMAP_BAND_ROWS` rows: the same pixels (each depends on its own probability only), but its float
    temporaries (about 70 bytes a pixel: 220 MB at 2048x1536) exist for one band at a time."""
    probability = np.asarray(probability)
    if probability.ndim != 2:
        return probability_heatmap(probability)
    heatmap = np.empty((*probability.shape, 3), dtype=np.uint8)
    for top in range(0, probability.shape[0], HEATMAP_BAND_ROWS):
        heatmap[top : top + HEATMAP_BAND_ROWS] = probability_heatmap(probability[top : top + HEATMAP_BAND_ROWS])
    return heatmap


def _inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode()`` when torch is in use (a real model), else nothing."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()
