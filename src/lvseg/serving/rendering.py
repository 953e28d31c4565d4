"""Measurements of a predicted mask (pure numpy/scipy).

Lesion labelling, lesion colours and the colour-coded overlay live in :mod:`lvseg.rendering`
(shared with ``lvseg evaluate`` / ``lvseg predict``), PNG encoding in :mod:`lvseg.data.images`
(:func:`~lvseg.data.images.png_bytes`, :func:`~lvseg.data.images.mask_to_uint8`); this module adds what
only the web app reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from scipy import ndimage

from lvseg.rendering import hex_color, lesion_color

if TYPE_CHECKING:
    from lvseg.inference.multiclass import ClassResult


@dataclass(frozen=True)
class Lesion:
    """One connected lesion: its label (1-based), area, overlay colour and bounding box (x, y, w, h)."""

    label: int
    area_px: int
    colour: str
    bbox: tuple[int, int, int, int]
    area_mm2: float | None = None


NO_LESION: Final = "no lesion found"
LESION: Final = "lesion found"


@dataclass
class Measurements:
    """What the app reports about a mask.

    confidence: the mean probability inside the mask; with no lesion, the highest probability anywhere (how
    close the model came to marking a lesion), never None. max_probability: the highest probability anywhere.
    """

    area_px: int
    area_percent: float
    lesions: int
    confidence: float
    max_probability: float
    lesion_list: list[Lesion] = field(default_factory=list)
    pixel_area_mm2: float | None = None

    @property
    def area_mm2(self) -> float | None:
        """The lesion area in mm² when the image gives its pixel size (DICOM PixelSpacing), else None."""
        return None if self.pixel_area_mm2 is None else round(self.area_px * self.pixel_area_mm2, 3)

    def area_text(self) -> str:
        text = f"{self.area_px} px ({self.area_percent:.2f} % of the image)"
        return text + (f", {self.area_mm2:.1f} mm\u00b2" if self.area_mm2 is not None else "")

    @property
    def finding(self) -> Literal["lesion found", "no lesion found"]:
        return LESION if self.area_px else NO_LESION

    def confidence_text(self) -> str:
        """The mean lesion probability in words (not a diagnostic confidence), or "no lesion found" with the
        highest probability."""
        if self.area_px:
            return f"{self.confidence:.3f} (the model's mean probability inside the mask; not a diagnostic confidence)"
        return f"{NO_LESION} (highest probability {self.max_probability:.3f})"


def measure(
    mask: np.ndarray,
    probability: np.ndarray,
    labels: np.ndarray,
    count: int,
    max_listed: int = 50,
    pixel_spacing_mm: tuple[float, float] | None = None,
) -> Measurements:
    """Area, lesion count, confidence (see :class:`Measurements`), highest probability, largest lesions.

    ``labels``/``count`` come from :func:`lvseg.rendering.label_lesions`; each lesion's colour is
    the one :func:`lvseg.rendering.overlay_lesions` draws it in (the page's legend shows it).
    ``pixel_spacing_mm``: (row, column) size of a pixel of ``mask`` in mm; areas are then also in mm².
    """
    pixel_area = None if pixel_spacing_mm is None else float(pixel_spacing_mm[0] * pixel_spacing_mm[1])
    inside = mask > 0
    area = int(inside.sum())
    total = int(mask.size) or 1
    max_probability = float(probability.max()) if probability.size else 0.0
    confidence = float(probability[inside].mean()) if area else max_probability
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    boxes = ndimage.find_objects(labels)
    lesions = []
    for label in range(1, count + 1):
        box = boxes[label - 1]
        if box is None:
            continue
        y, x = box[0].start, box[1].start
        lesions.append(
            Lesion(
                label=label,
                area_px=int(areas[label]),
                colour=hex_color(lesion_color(label - 1)),
                bbox=(int(x), int(y), int(box[1].stop - x), int(box[0].stop - y)),
                area_mm2=None if pixel_area is None else round(int(areas[label]) * pixel_area, 3),
            )
        )
    lesions.sort(key=lambda lesion: (-lesion.area_px, lesion.label))
    return Measurements(
        area_px=area,
        area_percent=round(100.0 * area / total, 4),
        lesions=count,
        confidence=round(confidence, 6),
        max_probability=round(max_probability, 6),
        lesion_list=lesions[:max_listed],
        pixel_area_mm2=pixel_area,
    )


@dataclass(frozen=True)
class ClassMeasurement:
    """What the app reports about one class of a label map (``lvseg.inference.multiclass.ClassResult``):
    its colour ('#rrggbb'), the prompt it was asked with, its area (px, % of the image, mm² with a pixel
    size), connected regions, highest and mean probability (None when absent) and the pixels above the
    threshold that a more probable class took (``outvoted_px``)."""

    name: str
    value: int
    colour: str
    prompt: str
    area_px: int
    area_percent: float
    area_mm2: float | None
    regions: int
    max_probability: float
    mean_probability: float | None
    outvoted_px: int

    @classmethod
    def of(cls, result: ClassResult) -> ClassMeasurement:
        mean = result.mean_probability
        return cls(
            name=result.name,
            value=result.value,
            colour=hex_color(result.colour),
            prompt=result.prompt,
            area_px=result.area_px,
            area_percent=result.area_percent,
            area_mm2=result.area_mm2,
            regions=result.regions,
            max_probability=round(result.max_probability, 6),
            mean_probability=None if mean is None else round(mean, 6),
            outvoted_px=result.outvoted_px,
        )

    @property
    def found(self) -> bool:
        return self.area_px > 0

    @property
    def finding(self) -> str:
        """ "liver found" or "no liver found (highest probability 0.123)"."""
        if self.found:
            return f"{self.name} found"
        return f"no {self.name} found (highest probability {self.max_probability:.3f})"

    def area_text(self) -> str:
        text = f"{self.area_px} px ({self.area_percent:.2f} % of the image)"
        return text + (f", {self.area_mm2:.1f} mm\u00b2" if self.area_mm2 is not None else "")
