"""Several structures at once: ``segmenter.segment_classes(image, ["liver", "kidney"])`` -> a label map.

The classes are the checkpoint's: ``hparams["class_table"]`` (``{"value", "name", "template"}`` rows in table
order, written for models with one output channel per class), else ``hparams["classes"]`` (the class names
a text model was trained on, values 1 ... K in that order). :func:`class_table_of` reads them,
:func:`select_classes` checks a choice (``"all"``, ``"liver,kidney"`` or a list of names) against them.

**How class k is asked for.**

* A text model (one output: lvseg's multi-class training asks for one structure per prompt) runs once per
  class, the image repeated in one batch, with the prompt of class k (:func:`class_prompts`):

  1. the caller's text for that class (``prompts={"liver": "..."}``; ``lvseg predict --class-text``; a
     folder's ``Description_<name>`` column), else
  2. the class's template (``classes.csv``'s ``prompt`` column) when it uses ``{name}`` and ``{modality}``
     only: ``{count}``, ``{sizes}`` and ``{locations}`` describe the answer, unknown before it, else
  3. what training asked of a class without describing its regions (the prompt of a negative sample,
     :func:`lvseg.data.prompts.class_prompt`): the class name ("liver"), or "liver in a CT slice" when the
     modality is known (given, or recorded by training) and the model was trained on ``p5``/``p6``/``random``
     prompts; ``p0`` training: the empty prompt.

  The free report a clinician types is **not** a prompt here: a multi-class model was trained on prompts that
  each name one structure, and a report naming several would ask for all of them at once. The app keeps
  the report with the result (its PDF prints it) and asks the model class by class.
* A model with one output channel per class (``output_classes`` K > 1, image-only) runs once; channel k is
  the k-th class of its table.

**The label map.** Every pixel gets the value of the chosen class with the highest probability among those
above the decision threshold, 0 (background) when none is: where classes overlap, the most probable one
wins (a tie: the first in table order). A class's mask is its pixels of the label map, so the areas of the
classes add up to the labelled area; ``outvoted_px`` counts the pixels above the threshold that went to a
more probable class. Areas are in pixels, in % of the image and, when the pixel size is known (DICOM
PixelSpacing), in mm². The class at position i of the table is drawn in :func:`lvseg.rendering.lesion_color`
(i), whatever the selection, so a class keeps its colour.

Pure numpy (no torch): the app's test fake composes its results with the same functions.
"""

from __future__ import annotations

import io
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvseg.data.classes import MAX_CLASS_VALUE, ClassInfo
from lvseg.errors import CheckpointError, LvsegError
from lvseg.inference.consistency import ConsistencyWarning
from lvseg.rendering import Color, hex_color, label_lesions, lesion_color

#: The choice of every class of the table.
ALL_CLASSES = "all"
#: Training prompt types whose per-class prompts say the modality ("two small kidneys in a CT slice").
_MODALITY_STYLES = ("p5", "p6", "random")
_ANSWER_FIELDS = ("count", "sizes", "locations")


class ClassSelectionError(LvsegError):
    """A class choice the checkpoint cannot answer; ``unknown`` names the values it does not know and
    ``accepted`` the class names it does (the app returns both)."""

    def __init__(self, message: str, unknown: Sequence[str] = (), accepted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unknown = list(unknown)
        self.accepted = list(accepted)


# ------------------------------------------------------------------------------------------- class tables


def class_table_of(hparams: Mapping[str, Any]) -> list[ClassInfo]:
    """The classes a checkpoint's ``hparams`` record, in table order ([] for a binary checkpoint).

    ``class_table`` (rows ``{"value", "name", "template"}``) first, else ``classes`` (names; values 1 ... K).
    Raises :class:`CheckpointError` listing every malformed row.
    """
    table = hparams.get("class_table")
    if table:
        problems, classes = [], []
        for number, row in enumerate(table, start=1):
            try:
                value, name = int(row["value"]), str(row["name"]).strip()
            except (KeyError, TypeError, ValueError):
                problems.append(f"row {number} ({row!r}) has no integer 'value' and 'name'")
                continue
            if not name or not 1 <= value <= MAX_CLASS_VALUE:
                problems.append(f"row {number}: class {value} {name!r} needs a name and a value 1-{MAX_CLASS_VALUE}")
                continue
            template = row.get("template") if isinstance(row, Mapping) else None
            classes.append(ClassInfo(value, name, str(template) if template else None))
        names = [info.name.lower() for info in classes]
        values = [info.value for info in classes]
        if len(set(names)) != len(names) or len(set(values)) != len(values):
            problems.append("class names and values must be unique")
        if problems:
            raise CheckpointError("the checkpoint's class_table is malformed: " + "; ".join(problems))
        return classes
    names = hparams.get("classes") or []
    return [ClassInfo(value, str(name)) for value, name in enumerate(names, start=1)]


def select_classes(table: Sequence[ClassInfo], choice: str | Sequence[str]) -> list[ClassInfo]:
    """The classes of ``table`` named by ``choice``, in table order: ``"all"``, comma-separated names
    (``"liver,kidney"``, any case) or a list of names. Raises :class:`ClassSelectionError` naming every
    unknown name and the accepted ones; a binary checkpoint (empty ``table``) has no class to choose."""
    names = (
        [part.strip() for part in choice.split(",")] if isinstance(choice, str) else [str(c).strip() for c in choice]
    )
    names = [name for name in names if name]
    accepted = [info.name for info in table]
    if not table:
        raise ClassSelectionError(
            "this checkpoint has no class table: it segments one structure, from the report alone (choose no classes)",
            names,
        )
    if not names:
        raise ClassSelectionError(
            f"no class chosen; choose {ALL_CLASSES!r} or some of: {', '.join(accepted)}", [], accepted
        )
    if any(name.lower() == ALL_CLASSES for name in names):
        return list(table)
    by_name = {info.name.lower(): info for info in table}
    unknown = [name for name in dict.fromkeys(names) if name.lower() not in by_name]
    if unknown:
        raise ClassSelectionError(
            f"unknown class{'es' if len(unknown) > 1 else ''} {', '.join(repr(name) for name in unknown)}; "
            f"this checkpoint's classes are {', '.join(accepted)} (or {ALL_CLASSES!r})",
            unknown,
            accepted,
        )
    chosen = {by_name[name.lower()].name for name in names}
    return [info for info in table if info.name in chosen]


def table_colours(table: Sequence[ClassInfo]) -> dict[int, Color]:
    """{class value: colour}: the class at table position i gets ``lesion_color(i)``."""
    return {info.value: lesion_color(index) for index, info in enumerate(table)}


# ------------------------------------------------------------------------------------------------ prompts


def _name_and_modality_only(template: str) -> bool:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:
        return False
    return not fields & set(_ANSWER_FIELDS)


def class_prompts(
    classes: Sequence[ClassInfo],
    prompts: Mapping[str, str] | None = None,
    modality: str | None = None,
    prompt_type: str | None = None,
) -> list[str]:
    """The prompt each of ``classes`` is asked with (the module docstring's rule, in that order).

    ``prompts``: {class name: text} given by the caller (names of ``classes``, any case; others are an
    error); ``modality``: e.g. "CT slice"; ``prompt_type``: the one the model was trained on (p0-p9, random;
    None: not recorded).
    """
    from lvseg.data.prompts import article, class_prompt

    given = {name.strip().lower(): text for name, text in (prompts or {}).items()}
    known = {info.name.lower() for info in classes}
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ClassSelectionError(
            f"a text is given for {', '.join(repr(name) for name in unknown)}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not among the chosen classes "
            f"({', '.join(info.name for info in classes)})",
            unknown,
            [info.name for info in classes],
        )
    empty = [name for name, text in given.items() if not text.strip()]
    if empty:
        raise ClassSelectionError(f"the text given for {', '.join(map(repr, empty))} is empty", empty)
    texts = []
    for info in classes:
        if info.name.lower() in given:
            texts.append(" ".join(given[info.name.lower()].split()))
        elif prompt_type == "p0":
            texts.append("")
        elif info.template and _name_and_modality_only(info.template):
            text = info.template.format(name=info.name, modality=article(modality or "image"))
            texts.append(" ".join(text.split()))
        else:
            style = "p5" if modality and (prompt_type is None or prompt_type in _MODALITY_STYLES) else "p1"
            texts.append(class_prompt(np.zeros((1, 1), dtype=np.uint8), info.name, modality or "image", style))
    return texts


# ------------------------------------------------------------------------------------------------ results


@dataclass
class ClassResult:
    """One class of a :class:`ClassPrediction`.

    mask: (H, W) uint8 {0, 1}, the class's pixels of the label map; probability: (H, W) float32 in [0, 1],
    the model's own for this class (before overlaps are settled). area_percent: of the whole image;
    area_mm2: None without a pixel size. regions: connected regions (8-connectivity) of ``mask``;
    outvoted_px: pixels above the threshold for this class that a more probable class took. prompt: what the
    model was asked ("" for a model with one channel per class); reading: how it read that prompt (None
    when it reads none).
    """

    info: ClassInfo
    colour: Color
    prompt: str
    mask: np.ndarray
    probability: np.ndarray
    area_px: int
    area_percent: float
    area_mm2: float | None
    regions: int
    outvoted_px: int
    reading: Any = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def value(self) -> int:
        return self.info.value

    @property
    def found(self) -> bool:
        return self.area_px > 0

    @property
    def max_probability(self) -> float:
        return float(self.probability.max()) if self.probability.size else 0.0

    @property
    def mean_probability(self) -> float | None:
        """The mean probability inside the class's mask (None when it is empty)."""
        inside = self.mask > 0
        return float(self.probability[inside].mean()) if inside.any() else None

    @property
    def finding(self) -> str:
        """ "liver found" or "no liver found"."""
        return f"{self.name} found" if self.found else f"no {self.name} found"

    @property
    def warnings(self) -> list[str]:
        """How the model read this class's prompt (unknown words, ...), in plain sentences."""
        return list(self.reading.warnings()) if self.reading is not None else []

    def area_text(self) -> str:
        """ "1234 px (5.67 % of the image, 89.0 mm²)"."""
        mm2 = f", {self.area_mm2:.1f} mm\u00b2" if self.area_mm2 is not None else ""
        return f"{self.area_px} px ({self.area_percent:.2f} % of the image{mm2})"

    def summary(self) -> str:
        """One line: finding, area and regions, or the highest probability of an absent class."""
        if not self.found:
            return f"{self.finding} (highest probability {self.max_probability:.3f})"
        return f"{self.finding}: {self.area_text()}, {self.regions} region{'s' if self.regions != 1 else ''}"


@dataclass
class ClassPrediction:
    """The chosen classes of one image: ``label_map`` (H, W) of class values (0 background; uint8, or uint16
    when a value exceeds 255) and one :class:`ClassResult` per class, in table order. consistency: warnings
    about the image (unlike the training images); pixel_spacing_mm: (row, column) in mm, when known."""

    label_map: np.ndarray
    classes: list[ClassResult]
    threshold: float
    consistency: list[ConsistencyWarning] = field(default_factory=list)
    pixel_spacing_mm: tuple[float, float] | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """(K, H, W) float32: each class's probability, in the order of :attr:`classes`."""
        return np.stack([result.probability for result in self.classes])

    @property
    def max_probability(self) -> np.ndarray:
        """(H, W) float32: the highest class probability of every pixel (the app's heat-map)."""
        return self.probabilities.max(axis=0)

    @property
    def found(self) -> bool:
        return bool(self.label_map.any())

    @property
    def colours(self) -> dict[int, Color]:
        """{class value: colour} of the chosen classes."""
        return {result.value: result.colour for result in self.classes}

    def legend(self) -> list[tuple[str, Color]]:
        """(class name, colour) of each chosen class, for a legend."""
        return [(result.name, result.colour) for result in self.classes]

    def result(self, name: str) -> ClassResult:
        """The result of class ``name`` (any case)."""
        for result in self.classes:
            if result.name.lower() == name.lower():
                return result
        raise KeyError(name)

    def warnings(self) -> list[str]:
        """Each class's reading warnings, prefixed with its name."""
        return [f"{result.name}: {warning}" for result in self.classes for warning in result.warnings]

    def area_rows(self) -> list[dict[str, object]]:
        """One row per class: name, value, colour, finding, area (px, %, mm²), regions, probabilities, prompt."""
        return [
            {
                "class": result.name,
                "value": result.value,
                "colour": hex_color(result.colour),
                "finding": result.finding,
                "area_px": result.area_px,
                "area_percent": result.area_percent,
                "area_mm2": "" if result.area_mm2 is None else result.area_mm2,
                "regions": result.regions,
                "outvoted_px": result.outvoted_px,
                "max_probability": round(result.max_probability, 6),
                "prompt": result.prompt,
            }
            for result in self.classes
        ]


def label_map_dtype(values: Sequence[int]) -> type[np.unsignedinteger[Any]]:
    """uint8 when every value fits, else uint16."""
    return np.uint8 if max(values, default=0) <= 255 else np.uint16


def compose_label_map(probabilities: np.ndarray, values: Sequence[int], threshold: float) -> np.ndarray:
    """(K, H, W) class probabilities -> (H, W) label map: the value of the most probable class above
    ``threshold`` at each pixel (a tie: the first), 0 where no class is above it."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or probabilities.shape[0] != len(values):
        raise ValueError(f"expected ({len(values)}, H, W) probabilities, got {probabilities.shape}")
    above = probabilities > threshold
    best = np.where(above, probabilities, -1.0).argmax(axis=0)
    lut = np.asarray(values, dtype=label_map_dtype(values))
    return np.where(above.any(axis=0), lut[best], 0).astype(lut.dtype)


def build_class_prediction(
    probabilities: np.ndarray,
    classes: Sequence[ClassInfo],
    colours: Mapping[int, Color],
    threshold: float,
    prompts: Sequence[str] | None = None,
    readings: Sequence[Any] | None = None,
    consistency: Sequence[ConsistencyWarning] = (),
    pixel_spacing_mm: tuple[float, float] | None = None,
) -> ClassPrediction:
    """The :class:`ClassPrediction` of (K, H, W) ``probabilities`` of ``classes`` (module docstring's rule)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    values = [info.value for info in classes]
    label_map = compose_label_map(probabilities, values, threshold)
    total = int(label_map.size) or 1
    pixel_area = None if pixel_spacing_mm is None else float(pixel_spacing_mm[0] * pixel_spacing_mm[1])
    results = []
    for index, info in enumerate(classes):
        mask = (label_map == info.value).astype(np.uint8)
        area = int(mask.sum())
        _, regions = label_lesions(mask)
        results.append(
            ClassResult(
                info=info,
                colour=colours[info.value],
                prompt=prompts[index] if prompts is not None else "",
                mask=mask,
                probability=probabilities[index],
                area_px=area,
                area_percent=round(100.0 * area / total, 4),
                area_mm2=None if pixel_area is None else round(area * pixel_area, 3),
                regions=regions,
                outvoted_px=int((probabilities[index] > threshold).sum()) - area,
                reading=readings[index] if readings is not None else None,
            )
        )
    return ClassPrediction(label_map, results, threshold, list(consistency), pixel_spacing_mm)


# ------------------------------------------------------------------------------------------------ files


def label_map_png(label_map: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of a label map (H, W): 8-bit gray for uint8, 16-bit gray for uint16, values kept exactly."""
    from PIL import Image

    from lvseg.data.images import png_bytes

    array = np.asarray(label_map)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"a label map is (H, W) uint8 or uint16, got {array.dtype} {array.shape}")
    if array.dtype == np.uint8:
        return png_bytes(array, compress_level)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def write_label_map(path: str | Path, label_map: np.ndarray, compress_level: int = 6) -> Path:
    """Write :func:`label_map_png` of ``label_map`` to ``path`` atomically (parents created)."""
    from lvseg.files import atomic_write_bytes

    return atomic_write_bytes(path, label_map_png(label_map, compress_level))


def write_area_table(path: str | Path, prediction: ClassPrediction) -> Path:
    """Write :meth:`ClassPrediction.area_rows` as a CSV file, atomically; returns the path."""
    import csv

    from lvseg.files import atomic_write_text

    rows = prediction.area_rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def pixel_spacing_of(path: str | Path) -> tuple[float, float] | None:
    """(row, column) pixel size in mm of a DICOM file (PixelSpacing, else ImagerPixelSpacing); None for other
    formats, a DICOM without it, or an unreadable file."""
    from lvseg.data.dicom import DICOM_MAGIC_OFFSET, is_dicom, read_dicom_header

    try:
        with open(path, "rb") as handle:
            if not is_dicom(handle.read(DICOM_MAGIC_OFFSET + 4)):
                return None
        return read_dicom_header(Path(path).read_bytes(), str(path))[1].pixel_spacing_mm
    except (OSError, LvsegError):
        return None


__all__ = [
    "ALL_CLASSES",
    "ClassPrediction",
    "ClassResult",
    "ClassSelectionError",
    "build_class_prediction",
    "class_prompts",
    "class_table_of",
    "compose_label_map",
    "label_map_png",
    "pixel_spacing_of",
    "select_classes",
    "table_colours",
    "write_area_table",
    "write_label_map",
]
