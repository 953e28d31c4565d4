"""Check an uploaded image safely, then decode it with the data layer's reader.

Accepts PNG, JPEG, TIFF and DICOM. The file name and the declared content type are never trusted:
the format comes from the file's magic bytes. Width and height are read from the header (PIL opens
lazily; DICOM ``Rows``/``Columns`` before ``pixel_array``) and checked before any pixel is decoded.
Everything happens in memory.

This module only sniffs, enforces limits and handles DICOM (windowing to [0, 1]). The pixels become
model input through :func:`lvseg.data.images.read_image`, the reader training and ``lvseg predict``
use, so an upload reaches the model exactly as the same file does through ``lvseg predict``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from lvseg.data.images import read_image, to_display_rgb8
from lvseg.errors import LvsegError
from lvseg.serving.errors import ApiError

logger = logging.getLogger(__name__)

ACCEPTED = "PNG, JPEG, TIFF or DICOM"
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
# PIL modes of more than 8 bits per sample (16-bit, 32-bit integer, float).
_DEEP_MODES = ("I", "F")


@dataclass(frozen=True)
class ImageLimits:
    """Largest accepted image: per side, and in total pixels (decompression-bomb guard)."""

    max_side: int = 8192
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image: what the model reads, what the page shows, and the format it was sniffed as.

    ``array``: float32 (C, H, W) in [0, 1], C = 1 (grayscale) or 3 (colour). For PNG, JPEG and TIFF it
    is exactly ``lvseg.data.images.read_image(file, channels=None)`` (JPEGs turned upright by their EXIF
    orientation first); for DICOM the windowed values.
    ``pixels``: uint8 RGB (H, W, 3) derived from ``array`` for display, overlays and the PDF report; an
    image of more than 8 bits per sample is shown stretched to its own maximum (display only).
    """

    array: np.ndarray
    pixels: np.ndarray
    format: str

    @property
    def height(self) -> int:
        return int(self.array.shape[1])

    @property
    def width(self) -> int:
        return int(self.array.shape[2])

    @property
    def model_input(self) -> np.ndarray:
        """``array`` as float (H, W, C), which ``Segmenter.predict`` reads back unchanged."""
        return np.transpose(self.array, (1, 2, 0))


def sniff_format(data: bytes) -> str | None:
    """The image format from the magic bytes: ``png``, ``jpeg``, ``tiff``, ``dicom`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def check_dimensions(width: int, height: int, limits: ImageLimits, frames: int = 1) -> None:
    """Raise a 413 :class:`ApiError` if an image of this size must not be decoded."""
    if width <= 0 or height <= 0:
        raise ApiError(422, f"the image has an invalid size {width}x{height}")
    if width > limits.max_side or height > limits.max_side:
        raise ApiError(
            413,
            f"the image is {width}x{height} pixels; at most {limits.max_side} pixels per side are accepted",
            {"width": width, "height": height, "max_side": limits.max_side},
        )
    if width * height * frames > limits.max_pixels:
        raise ApiError(
            413,
            f"the image would decode to {width * height * frames} pixels (a decompression bomb?); "
            f"at most {limits.max_pixels} are accepted",
            {"width": width, "height": height, "frames": frames, "max_pixels": limits.max_pixels},
        )


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Sniff, check and decode ``data``; raises :class:`ApiError` 415, 413 or 422 on bad input."""
    limits = limits or ImageLimits()
    if not data:
        raise ApiError(422, "the image file is empty", {"field": "image"})
    kind = sniff_format(data)
    if kind is None:
        raise ApiError(415, f"the upload is not a supported image; expected {ACCEPTED}", {"field": "image"})
    if kind == "dicom":
        array, deep = _decode_dicom(data, limits), False  # already windowed for display
    else:
        array, deep = _decode_pil(data, kind, limits)
    decoded = DecodedImage(array=array, pixels=_display_pixels(array, deep), format=kind)
    logger.debug("decoded a %s image of %dx%d", kind, decoded.width, decoded.height)
    return decoded


def _corrupt(kind: str) -> ApiError:
    message = f"the {kind.upper()} file is corrupt or truncated and could not be decoded"
    return ApiError(422, message, {"field": "image"})


def _decode_pil(data: bytes, kind: str, limits: ImageLimits) -> tuple[np.ndarray, bool]:
    """(read_image's float (C, H, W) array, whether the image has more than 8 bits per sample)."""
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as image:
            check_dimensions(image.width, image.height, limits)  # header only, nothing decoded yet
            image.load()
            oriented = ImageOps.exif_transpose(image) if kind == "jpeg" else image
            return read_image(oriented, channels=None), oriented.mode.startswith(_DEEP_MODES)
    except Image.DecompressionBombError as error:
        raise ApiError(413, "the image is a decompression bomb (too many pixels)", {"field": "image"}) from error
    except ApiError:
        raise
    except LvsegError as error:  # pixels the reader does not take (an unusual mode or shape)
        raise ApiError(422, f"the {kind.upper()} image could not be decoded: {error}", {"field": "image"}) from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as error:
        raise _corrupt(kind) from error


def _display_pixels(array: np.ndarray, deep: bool) -> np.ndarray:
    """uint8 RGB (H, W, 3) of ``array`` for display; a deep image is stretched to its maximum first.

    A 12-bit radiograph in a 16-bit file reads as values up to 4095 / 65535: shown as they are it
    would be nearly black. The model still gets ``array`` itself.
    """
    if deep:
        high = float(array.max()) if array.size else 0.0
        array = array / high if high > 0 else np.zeros_like(array)
    return to_display_rgb8(array)


def _first_value(value: Any) -> float | None:
    """The first number of a possibly multi-valued DICOM element, or None."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError, IndexError):
        return None


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


def _colour_to_unit(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """Colour DICOM pixels (H, W, 3), already RGB after pydicom's conversion, in [0, 1] of their stored range."""
    rgb = pixels[:, :, :3].astype(np.float64)
    return np.clip(rgb / float(2 ** max(bits_stored, 1) - 1), 0.0, 1.0)


def _decode_dicom(data: bytes, limits: ImageLimits) -> np.ndarray:
    """The first frame as float32 (C, H, W) in [0, 1]: grayscale windowed, colour by its stored bit depth."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))  # pixel data stays encoded bytes until pixel_array
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise _corrupt("dicom") from error
    if "PixelData" not in dataset or "Rows" not in dataset or "Columns" not in dataset:
        raise ApiError(422, "the DICOM file holds no image (no pixel data, rows or columns)", {"field": "image"})
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as error:
        raise _corrupt("dicom") from error
    check_dimensions(columns, rows, limits, frames=max(frames, 1))
    try:
        pixels = np.asarray(dataset.pixel_array)
    except (NotImplementedError, RuntimeError) as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ApiError(415, f"DICOM pixel data in '{name}' encoding is not supported", {"field": "image"}) from error
    except (ValueError, OSError, EOFError, AttributeError, KeyError, TypeError, IndexError) as error:
        raise _corrupt("dicom") from error

    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1 or pixels.ndim == (4 if samples > 1 else 3):
        pixels = pixels[0]  # the first frame of a multi-frame object
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples > 1 or pixels.ndim == 3:
        bits = int(dataset.get("BitsStored", 8 * pixels.dtype.itemsize) or 8 * pixels.dtype.itemsize)
        return read_image(_colour_to_unit(pixels, bits), channels=None)

    slope = _first_value(dataset.get("RescaleSlope", None))
    intercept = _first_value(dataset.get("RescaleIntercept", None))
    values = pixels.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    unit = window_dicom(
        values,
        _first_value(dataset.get("WindowCenter", None)),
        _first_value(dataset.get("WindowWidth", None)),
    )
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return read_image(unit, channels=None)
