"""Measurements, colour-coded overlays and PNG encoding of a predicted mask (pure numpy/scipy/PIL)."""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

# Distinct colours for the first lesions (Sasha Trubetskoy's palette), then golden-ratio hues.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def lesion_colour(index: int) -> tuple[int, int, int]:
    """The overlay colour of lesion ``index`` (0-based): distinct for neighbours, stable across calls."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass(frozen=True)
class Lesion:
    """One connected lesion: its label (1-based), area, overlay colour and bounding box (x, y, w, h)."""

    label: int
    area_px: int
    colour: str
    bbox: tuple[int, int, int, int]


@dataclass
class Measurements:
    """What the app reports about a mask."""

    area_px: int
    area_percent: float
    lesions: int
    confidence: float | None
    lesion_list: list[Lesion] = field(default_factory=list)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected lesions of a binary mask (8-connected): an int32 label image and their number."""
    labels, count = ndimage.label(mask > 0, structure=_EIGHT_CONNECTED)
    return labels.astype(np.int32, copy=False), int(count)


def measure(
    mask: np.ndarray, probability: np.ndarray, labels: np.ndarray, count: int, max_listed: int = 50
) -> Measurements:
    """Area, lesion count, mean probability inside the mask (None for an empty mask), largest lesions."""
    inside = mask > 0
    area = int(inside.sum())
    total = int(mask.size) or 1
    confidence = float(probability[inside].mean()) if area else None
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
                colour=hex_colour(lesion_colour(label - 1)),
                bbox=(int(x), int(y), int(box[1].stop - x), int(box[0].stop - y)),
            )
        )
    lesions.sort(key=lambda lesion: (-lesion.area_px, lesion.label))
    return Measurements(
        area_px=area,
        area_percent=round(100.0 * area / total, 4),
        lesions=count,
        confidence=None if confidence is None else round(confidence, 6),
        lesion_list=lesions[:max_listed],
    )


def render_overlay(pixels: np.ndarray, labels: np.ndarray, count: int, alpha: float = 0.45) -> np.ndarray:
    """Blend each lesion's colour over the RGB image and draw its outline in full colour."""
    overlay = pixels.copy()
    if count == 0:
        return overlay
    lut = np.zeros((count + 1, 3), dtype=np.float32)
    for index in range(count):
        lut[index + 1] = lesion_colour(index)
    inside = labels > 0
    outline = inside & ~ndimage.binary_erosion(inside, structure=_EIGHT_CONNECTED, border_value=0)
    colours = lut[labels[inside]]
    blended = (1.0 - alpha) * pixels[inside].astype(np.float32) + alpha * colours
    overlay[inside] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    overlay[outline] = lut[labels[outline]].astype(np.uint8)
    return overlay


def mask_to_image(mask: np.ndarray) -> np.ndarray:
    """A viewable 8-bit mask: 255 where the lesion is, 0 elsewhere."""
    return np.where(mask > 0, 255, 0).astype(np.uint8)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W) gray or (H, W, 3) RGB uint8 array (fast compression: latency over size)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
