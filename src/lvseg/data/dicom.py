"""DICOM images as lvseg reads them everywhere (training, ``lvseg predict``, the web app): first frame,
grayscale through the modality rescale and the VOI window to [0, 1], colour by its stored bit depth.

Needs ``pydicom`` (part of the ``serve`` extra: ``pip install 'lvseg[serve]'``); a missing pydicom is a
:class:`~lvseg.errors.LvsegError` saying so. Width and height are read from the header
(:func:`read_dicom_header`) before any pixel is decoded, so callers can refuse an image by its size first.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvseg.errors import LvsegError
from lvseg.notices import input_notice

logger = logging.getLogger(__name__)

DICOM_MAGIC_OFFSET = 128


class DicomError(LvsegError):
    """A DICOM file lvseg cannot read: ``unsupported`` (an encoding pydicom cannot decode here) or not."""

    def __init__(self, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True)
class DicomHeader:
    """What the header says: size, frames, and the physical pixel size when it is given.

    pixel_spacing_mm: (row spacing, column spacing) in mm (``PixelSpacing``, else ``ImagerPixelSpacing``),
    or None. row_direction: the patient direction the rows run toward (first value of ``PatientOrientation``,
    e.g. "L"), or None. patient_id / study_id: the file's ``PatientID`` and ``StudyID`` ("" when absent),
    which a report uses when its form leaves them blank.
    """

    rows: int
    columns: int
    frames: int
    pixel_spacing_mm: tuple[float, float] | None
    row_direction: str | None = None
    patient_id: str = ""
    study_id: str = ""


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise LvsegError("reading DICOM needs pydicom: pip install 'lvseg[serve]' (or pip install pydicom)") from None
    return pydicom


def first_value(value: Any) -> float | None:
    """The first number of a possibly multi-valued DICOM element, or None."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _spacing(dataset: Any) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword, None)
        try:
            row, column = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and column > 0:
            return row, column
    return None


def _row_direction(dataset: Any) -> str | None:
    value = dataset.get("PatientOrientation", None)
    try:
        first = str(value[0]).strip().upper() if value is not None and len(value) else ""
    except (TypeError, IndexError):
        return None
    return first or None


#: DICOM LO/SH elements hold at most 64 / 16 characters; anything longer is not a real identifier.
_MAX_ID_CHARS = 64


def _text_element(dataset: Any, keyword: str) -> str:
    """A short text element as plain printable text ("" when absent or unreadable)."""
    try:
        value = str(dataset.get(keyword, "") or "")
    except Exception:  # a malformed value must not stop the image from being read
        return ""
    return "".join(character for character in value if character.isprintable()).strip()[:_MAX_ID_CHARS]


def file_row_direction(path: str | Path) -> str | None:
    """The row direction (PatientOrientation's first value) of a DICOM file; None for another format, a
    DICOM without it, or an unreadable one (the consistency checks then assume the radiological convention)."""
    try:
        with open(path, "rb") as handle:
            if not is_dicom(handle.read(DICOM_MAGIC_OFFSET + 4)):
                return None
        return read_dicom_header(Path(path).read_bytes(), str(path))[1].row_direction
    except (OSError, LvsegError):
        return None


def read_dicom_header(data: bytes, name: str = "<DICOM bytes>") -> tuple[Any, DicomHeader]:
    """(the parsed dataset, its header); pixel data stays encoded until :func:`dicom_pixels`."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
        raise DicomError(f"cannot read DICOM {name}: the file is corrupt or truncated") from None
    if "PixelData" not in dataset or "Rows" not in dataset or "Columns" not in dataset:
        raise DicomError(f"cannot read DICOM {name}: it holds no image (no pixel data, rows or columns)")
    try:
        header = DicomHeader(
            rows=int(dataset.Rows),
            columns=int(dataset.Columns),
            frames=max(int(dataset.get("NumberOfFrames", 1) or 1), 1),
            pixel_spacing_mm=_spacing(dataset),
            row_direction=_row_direction(dataset),
            patient_id=_text_element(dataset, "PatientID"),
            study_id=_text_element(dataset, "StudyID"),
        )
    except (TypeError, ValueError):
        raise DicomError(f"cannot read DICOM {name}: its size fields are not numbers") from None
    return dataset, header


def window_dicom(values: np.ndarray, center: float | None, width: float | None) -> np.ndarray:
    """Apply the DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to modality values, to [0, 1].

    Without a usable window the full range of the values (their minimum to their maximum) is used.
    """
    if center is None or width is None or width < 1:
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        return np.zeros_like(values) if high <= low else (values - low) / (high - low)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    scaled = ((values - (center - 0.5)) / (width - 1)) + 0.5 if width > 1 else (values > low).astype(float)
    return np.where(values <= low, 0.0, np.where(values > high, 1.0, np.clip(scaled, 0.0, 1.0)))


def _finite_value(dataset: Any, keyword: str, name: str) -> float | None:
    """The first value of element ``keyword`` (:func:`first_value`); a non-finite one (NaN, infinity) is treated as
    missing, with a warning."""
    value = first_value(dataset.get(keyword, None))
    if value is not None and not math.isfinite(value):
        input_notice(logger, "DICOM %s: %s is %s, not a finite number; it is treated as missing", name, keyword, value)
        return None
    return value


def _modality_values(pixels: np.ndarray, dataset: Any, name: str) -> np.ndarray:
    """Stored values through the modality rescale (``RescaleSlope``, ``RescaleIntercept``) as float64.

    A slope or intercept that is not a finite number, a slope of 0 (every pixel one value) and a rescale whose
    results are not all finite are treated as missing (the stored values are used), with a warning.
    """
    values = pixels.astype(np.float64)
    slope = _finite_value(dataset, "RescaleSlope", name)
    intercept = _finite_value(dataset, "RescaleIntercept", name)
    if slope == 0.0:
        input_notice(logger, "DICOM %s: RescaleSlope is 0 (every pixel one value); it is treated as missing", name)
        slope = None
    if slope is None and intercept is None:
        return values
    rescaled = values * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    if not np.isfinite(rescaled).all():
        input_notice(
            logger,
            "DICOM %s: RescaleSlope %s and RescaleIntercept %s give values that are not finite numbers; the stored "
            "values are used",
            name,
            slope,
            intercept,
        )
        return values
    return rescaled


def dicom_pixels(dataset: Any, header: DicomHeader, name: str = "<DICOM bytes>") -> np.ndarray:
    """The first frame as (H, W) or (H, W, 3) float64 in [0, 1]: grayscale windowed (MONOCHROME1
    inverted), colour scaled by its stored bit depth.

    Header values are validated: a window centre or width, rescale slope or intercept that is not a finite
    number is treated as missing (a warning is logged), and a window that maps an image of varying values to one
    value is not used (the full range of the values is, with a warning)."""
    try:
        pixels = np.asarray(dataset.pixel_array)
    except (NotImplementedError, RuntimeError):
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        raise DicomError(
            f"cannot read DICOM {name}: pixel data in '{getattr(syntax, 'name', syntax)}' encoding is not supported",
            unsupported=True,
        ) from None
    except (ValueError, OSError, EOFError, AttributeError, KeyError, TypeError, IndexError):
        raise DicomError(f"cannot read DICOM {name}: the pixel data is corrupt or truncated") from None
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if header.frames > 1 or pixels.ndim == (4 if samples > 1 else 3):
        pixels = pixels[0]
    if samples > 1 or pixels.ndim == 3:
        bits = int(dataset.get("BitsStored", 8 * pixels.dtype.itemsize) or 8 * pixels.dtype.itemsize)
        return np.clip(pixels[:, :, :3].astype(np.float64) / float(2 ** max(bits, 1) - 1), 0.0, 1.0)
    values = _modality_values(pixels, dataset, name)
    center = _finite_value(dataset, "WindowCenter", name)
    width = _finite_value(dataset, "WindowWidth", name)
    unit = window_dicom(values, center, width)
    if center is not None and width is not None and values.size and np.ptp(unit) == 0 and np.ptp(values) > 0:
        input_notice(
            logger,
            "DICOM %s: the window (centre %s, width %s) maps every pixel to %s; the full range of the values is used",
            name,
            center,
            width,
            float(unit.flat[0]),
        )
        unit = window_dicom(values, None, None)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def read_dicom(data: bytes, name: str = "<DICOM bytes>") -> np.ndarray:
    """A DICOM file's first frame in [0, 1], (H, W) or (H, W, 3) float64 (see :func:`dicom_pixels`)."""
    dataset, header = read_dicom_header(data, name)
    return dicom_pixels(dataset, header, name)
