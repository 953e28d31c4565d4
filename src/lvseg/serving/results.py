"""The result store: the last segmentations, reduced to what a PDF report needs, in memory only."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lvseg.serving.forms import MIB
from lvseg.serving.rendering import ClassMeasurement, Measurements

if TYPE_CHECKING:
    from lvseg.serving.service import Analysis

#: What a result id looks like (``secrets.token_urlsafe(16)``: 22 URL-safe characters).
RESULT_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


@dataclass(frozen=True)
class KeptResult:
    """What a PDF report needs of an :class:`~lvseg.serving.service.Analysis`: the image and overlay reduced to
    the PDF's size, the measurements, the report and how it was read (a few MB, whatever the upload's size)."""

    pixels: np.ndarray
    overlay: np.ndarray
    measurements: Measurements
    text: str
    text_warnings: list[str]
    consistency: list[tuple[str, str]]
    image_format: str
    image_size: tuple[int, int]
    analysed_size: tuple[int, int]
    inference_ms: float
    patient_id: str = ""  # the image's own identifiers (DICOM), for a report form that leaves them blank
    study_id: str = ""
    classes: list[ClassMeasurement] | None = None  # with classes chosen: one row per class

    @classmethod
    def of(cls, analysis: Analysis) -> KeptResult:
        """The part of ``analysis`` a report shows, its images reduced."""
        image = analysis.image
        return cls(
            pixels=_reduced_for_pdf(image.pixels),
            overlay=_reduced_for_pdf(analysis.overlay),
            measurements=analysis.measurements,
            text=analysis.text,
            text_warnings=list(analysis.text_warnings),
            consistency=list(analysis.consistency),
            image_format=image.format,
            image_size=(image.original_width, image.original_height),
            analysed_size=(image.width, image.height),
            inference_ms=analysis.inference_ms,
            patient_id=image.patient_id,
            study_id=image.study_id,
            classes=list(analysis.classes) if analysis.classes is not None else None,
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the two images."""
        return int(self.pixels.nbytes + self.overlay.nbytes)


def _reduced_for_pdf(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` shrunk to fit the PDF's image side (unchanged when already small enough)."""
    from PIL import Image

    from lvseg.serving.report_pdf import PDF_IMAGE_SIDE

    if max(pixels.shape[:2]) <= PDF_IMAGE_SIDE:
        return pixels
    picture = Image.fromarray(pixels)
    picture.thumbnail((PDF_IMAGE_SIDE, PDF_IMAGE_SIDE))
    return np.asarray(picture)


class RecentResults:
    """The last results, in memory only (never on disk), so a PDF is made of the result the user saw.

    At most ``max_items`` results and ``max_bytes`` of images, each for ``ttl_s`` seconds; ids are random
    (``secrets.token_urlsafe``), so one client cannot guess another's.
    """

    def __init__(self, max_items: int = 32, max_bytes: int = 128 * MIB, ttl_s: float = 1800.0) -> None:
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self._items: OrderedDict[str, tuple[float, KeptResult]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, analysis: Analysis) -> str:
        """Keep ``analysis`` (reduced) and return its new random id."""
        result_id = secrets.token_urlsafe(16)
        kept = KeptResult.of(analysis)
        with self._lock:
            self._items[result_id] = (time.monotonic(), kept)
            self._expire()
        return result_id

    def get(self, result_id: str) -> KeptResult | None:
        """The result kept under ``result_id``, or None when it is unknown or expired."""
        with self._lock:
            self._expire()
            entry = self._items.get(result_id)
            return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items and (
            len(self._items) > self.max_items
            or sum(item.nbytes for _, item in self._items.values()) > self.max_bytes
            or now - next(iter(self._items.values()))[0] > self.ttl_s
        ):
            self._items.popitem(last=False)
