"""Check an uploaded image safely, then decode it with the data layer's reader.

Accepts PNG, JPEG, TIFF and DICOM. The file name and the declared content type are never trusted:
the format comes from the file's magic bytes. Width and height are read from the header (PIL opens
lazily; DICOM ``Rows``/``Columns`` before ``pixel_array``) and checked before any pixel is decoded.
Everything happens in memory.

This module only sniffs, enforces limits and reduces very large images to the working size. The pixels
become model input through the data layer (:func:`lvseg.data.images.read_image`, its EXIF orientation
rule :func:`~lvseg.data.images.upright`, and :mod:`lvseg.data.dicom`), the readers training and
``lvseg predict`` use, so an upload reaches the model exactly as the same file does through ``lvseg
predict`` (the same formats, the same orientation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lvseg.data.dicom import is_dicom
from lvseg.data.images import (
    PIL_FORMATS,
    QUARTER_TURNS,
    CorruptImageError,
    check_decoded,
    check_header_size,
    exif_orientation,
    pil_samples,
    read_image,
    to_display_rgb8,
    upright,
)
from lvseg.errors import LvsegError
from lvseg.notices import collect_input_notices
from lvseg.serving.errors import ApiError

logger = logging.getLogger(__name__)

ACCEPTED = "PNG, JPEG, TIFF, BMP or DICOM"
#: The sniffed kind -> the Pillow format it is opened as: the data layer's one list (:data:`PIL_FORMATS`).
_PIL_FORMATS = {name.lower(): name for name in PIL_FORMATS}
# PIL modes of more than 8 bits per sample (16-bit, 32-bit integer, float).
_DEEP_MODES = ("I", "F")


@dataclass(frozen=True)
class ImageLimits:
    """Largest accepted image: per side, and in total pixels (decompression-bomb guard); and the largest
    side an image is analysed at (``max_working_side``: larger images are reduced while they are decoded,
    keeping their aspect ratio, so memory stays bounded; the model itself sees ``img_size``)."""

    max_side: int = 8192
    max_pixels: int = 50_000_000
    max_working_side: int = 2048


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image: what the model reads, what the page shows, and the format it was sniffed as.

    ``samples``: (H, W, C), C = 1 (grayscale) or 3 (colour), what the model is given (:attr:`model_input`):
    for PNG, JPEG and TIFF the file's own samples in their own dtype (uint8: 1 byte a sample, uint16: 2;
    :func:`lvseg.data.images.pil_samples`), for DICOM the windowed float32 values. The float array is made
    from them only where it is read (:attr:`array`, and the model's own reader), not kept per request.
    ``array`` (a property): float32 (C, H, W) in [0, 1]; for PNG, JPEG and TIFF exactly
    ``lvseg.data.images.read_image(file, channels=None)`` (JPEGs turned upright by their EXIF orientation
    first); for DICOM the windowed values.
    ``pixels``: uint8 RGB (H, W, 3) derived from ``array`` for display, overlays and the PDF report; an
    image of more than 8 bits per sample is shown stretched to its own maximum (display only).
    ``original_size``: (width, height) of the file; H, W are smaller when the image was reduced to
    ``ImageLimits.max_working_side``. ``original_spacing_mm``: the file's (row, column) pixel size in mm
    (DICOM), else None. ``patient_id``/``study_id``: the DICOM's own identifiers ("" otherwise).
    ``notices``: how the file was read where it could not be read as written (:mod:`lvseg.notices`: a DICOM
    window that is not a finite number, ...), one sentence each.
    """

    samples: np.ndarray
    pixels: np.ndarray
    format: str
    original_size: tuple[int, int] = (0, 0)
    original_spacing_mm: tuple[float, float] | None = None
    row_direction: str | None = None
    patient_id: str = ""
    study_id: str = ""
    notices: tuple[str, ...] = ()

    @property
    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) size of one *analysed* pixel in mm (DICOM ``PixelSpacing`` scaled by any reduction), or
        None when the file does not give it."""
        if self.original_spacing_mm is None:
            return None
        row, column = self.original_spacing_mm
        return row * self.original_height / self.height, column * self.original_width / self.width

    @property
    def original_width(self) -> int:
        return self.original_size[0] or self.width

    @property
    def original_height(self) -> int:
        return self.original_size[1] or self.height

    @property
    def reduced(self) -> bool:
        """Whether the image was analysed below its own resolution (see :class:`ImageLimits`)."""
        return (self.original_width, self.original_height) != (self.width, self.height)

    @property
    def height(self) -> int:
        return int(self.samples.shape[0])

    @property
    def width(self) -> int:
        return int(self.samples.shape[1])

    @property
    def array(self) -> np.ndarray:
        """float32 (C, H, W) in [0, 1]: ``read_image`` of :attr:`samples` (DICOM: the windowed values), made
        anew at each read."""
        if self.format == "dicom":
            return np.ascontiguousarray(np.transpose(self.samples, (2, 0, 1)), dtype=np.float32)
        return read_image(self.samples, channels=None)

    def without_model_input(self) -> DecodedImage:
        """This image without its samples (only the model reads them): what a result keeps after the
        prediction. The shape stays readable (a zero-cost broadcast placeholder)."""
        placeholder = np.broadcast_to(np.zeros((), dtype=self.samples.dtype), self.samples.shape)
        return dataclasses.replace(self, samples=placeholder)

    @property
    def model_input(self) -> np.ndarray:
        """:attr:`samples` (H, W, C): ``Segmenter.predict`` reads them with ``read_image`` into exactly
        :attr:`array` (for a 1- or 3-channel model: ``read_image(file, channels)``)."""
        return self.samples


class DecodeBudget:
    """Bytes of decoded pixels allowed in memory at once, shared by concurrent decodes.

    A decode reserves its image's full-resolution size (width x height x 4 bytes, Pillow's layout) for as
    long as the full-resolution pixels exist; larger images wait for each other while small ones go
    together. One decode larger than the whole budget runs alone.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = int(max_bytes)
        self._used = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = min(int(nbytes), self.max_bytes)
        with self._condition:
            self._condition.wait_for(lambda: self._used + nbytes <= self.max_bytes)
            self._used += nbytes
        try:
            yield
        finally:
            with self._condition:
                self._used -= nbytes
                self._condition.notify_all()


_UNBOUNDED = DecodeBudget(max_bytes=1 << 62)


def sniff_format(data: bytes) -> str | None:
    """The image format from the magic bytes: ``png``, ``jpeg``, ``tiff``, ``bmp``, ``dicom`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if is_dicom(data):
        return "dicom"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
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


def decode_image(data: bytes, limits: ImageLimits | None = None, budget: DecodeBudget | None = None) -> DecodedImage:
    """Sniff, check and decode ``data``; raises :class:`ApiError` 415, 413 or 422 on bad input. ``budget``
    bounds the full-resolution pixels that concurrent decodes hold at once (default: unbounded)."""
    limits = limits or ImageLimits()
    budget = budget or _UNBOUNDED
    if not data:
        raise ApiError(422, "the image file is empty", {"field": "image"})
    kind = sniff_format(data)
    if kind is None:
        raise ApiError(415, f"the upload is not a supported image; expected {ACCEPTED}", {"field": "image"})
    header = None
    with collect_input_notices() as notices:
        if kind == "dicom":
            samples, original, header = _decode_dicom(data, limits, budget)  # already windowed, float
            pixels = _display_values(np.transpose(samples, (2, 0, 1)), deep=False)
        else:
            samples, pixels, original = _decode_pil(data, kind, limits, budget)
    decoded = DecodedImage(
        samples=samples,
        pixels=pixels,
        format=kind,
        original_size=original,
        original_spacing_mm=header.pixel_spacing_mm if header else None,
        row_direction=header.row_direction if header else None,
        patient_id=header.patient_id if header else "",
        study_id=header.study_id if header else "",
        notices=tuple(notices),
    )
    logger.debug("decoded a %s image of %dx%d", kind, decoded.width, decoded.height)
    return decoded


def _corrupt(kind: str) -> ApiError:
    message = f"the {kind.upper()} file is corrupt or truncated and could not be decoded"
    return ApiError(422, message, {"field": "image"})


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) reduced so the longer side is at most ``max_side``, aspect ratio kept."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode_pil(
    data: bytes, kind: str, limits: ImageLimits, budget: DecodeBudget
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(the samples read_image scales, (H, W, C) in the file's dtype (:func:`pil_samples`), their display pixels
    (:func:`_display_pixels`), the upright image's full (width, height)). Images over
    ``limits.max_working_side`` are reduced before their samples are taken (no float copy is made of an 8- or
    16-bit image): a JPEG while its DCT is decoded (``draft``), other formats right after decoding (box filter)."""
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as image:
            check_dimensions(image.width, image.height, limits)  # header only, nothing decoded yet
            check_header_size(image, len(data), "upload")  # as lvseg predict reads the file (open_pil)
            original = (image.width, image.height)
            target = working_size(image.width, image.height, limits.max_working_side)
            if kind == "jpeg" and target != original:
                image.draft(image.mode, target)  # decodes at 1/2, 1/4 or 1/8 scale, no smaller than target
            with budget.reserve(image.width * image.height * 4):  # decoded (after any draft) at 4 bytes/pixel
                image.load()
                check_decoded(image, "upload")  # before any turn, as open_pil checks it
                if exif_orientation(image) in QUARTER_TURNS:  # read after load: a PNG's EXIF loads the pixels
                    original = original[::-1]  # reported upright, as the image is shown
                turned = upright(image)  # the data layer's orientation rule, as `lvseg predict` reads the file
                if max(turned.size) > limits.max_working_side:
                    turned = turned.resize(working_size(*turned.size, limits.max_working_side), Image.Resampling.BOX)
                    image.close()  # the full-resolution pixels go now, before the budget is released
                deep = turned.mode.startswith(_DEEP_MODES)
                # read_image(turned) is read_image of these samples (it turns and converts alike); numpy's
                # copy of the pixels (Pillow's image is not kept), in the file's own dtype.
                samples = pil_samples(turned, "upload")
                if turned is not image:
                    turned.close()
        # Outside the budget (the full-resolution pixels are gone); inside the try: a float image's values
        # are checked here (read_image refuses one without a finite value).
        return samples, _display_pixels(samples, deep), original
    except Image.DecompressionBombError as error:
        raise ApiError(413, "the image is a decompression bomb (too many pixels)", {"field": "image"}) from error
    except ApiError:
        raise
    except CorruptImageError as error:  # data that cannot be what the header says, or no finite value
        message = f"the {kind.upper()} file is corrupt or truncated: {error.reason}"
        raise ApiError(422, message, {"field": "image"}) from error
    except LvsegError as error:  # pixels the reader does not take (an unusual mode or shape)
        raise ApiError(422, f"the {kind.upper()} image could not be decoded: {error}", {"field": "image"}) from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as error:
        raise _corrupt(kind) from error


def _display_pixels(samples: np.ndarray, deep: bool) -> np.ndarray:
    """uint8 RGB (H, W, 3) of ``read_image(samples)`` for display; a deep image is stretched to its maximum first.

    A 12-bit radiograph in a 16-bit file reads as values up to 4095 / 65535: shown as they are it
    would be nearly black. The model still gets the samples themselves.

    uint8 and uint16 samples go through a table of what :func:`_display_values` gives each possible value
    (the same numbers, element by element, without a float copy of the image); other dtypes (a float
    DICOM or TIFF, 32-bit integers, which ``read_image`` scales by their own range) take the float path.
    """
    if samples.dtype not in (np.uint8, np.uint16) or not samples.size:
        return _display_values(read_image(samples, channels=None), deep)
    values = np.arange(np.iinfo(samples.dtype).max + 1, dtype=samples.dtype)
    unit = read_image(values[None, :, None], channels=None)  # (1, 1, N): what each sample value reads as
    if deep:  # read_image is monotonic: the image's largest value is that of its largest sample
        unit = _stretched(unit, float(unit[0, 0, int(samples.max())]))
    table = to_display_rgb8(unit)[0, :, 0]  # (N,) uint8
    if samples.dtype == np.uint8 and np.array_equal(table, values):  # 8-bit: shown as stored
        shown = samples
    else:
        shown = table[samples]
    if shown.shape[2] == 1:
        return np.repeat(shown, 3, axis=2)
    return np.ascontiguousarray(shown)


def _display_values(array: np.ndarray, deep: bool) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a float (C, H, W) array in [0, 1]; ``deep``: stretched to its maximum first."""
    if deep:
        array = _stretched(array, float(array.max()) if array.size else 0.0)
    return to_display_rgb8(array)


def _stretched(array: np.ndarray, high: float) -> np.ndarray:
    return array / high if high > 0 else np.zeros_like(array)


def _decode_dicom(data: bytes, limits: ImageLimits, budget: DecodeBudget) -> tuple[np.ndarray, tuple[int, int], Any]:
    """(the first frame as float32 (H, W, C) in [0, 1] (:mod:`lvseg.data.dicom`, as ``lvseg predict`` reads it),
    reduced to ``limits.max_working_side``; the frame's full (width, height); its :class:`DicomHeader`)."""
    from lvseg.data.dicom import DicomError, dicom_pixels, read_dicom_header

    try:
        dataset, header = read_dicom_header(data, "upload")
        check_dimensions(header.columns, header.rows, limits, frames=header.frames)
        with budget.reserve(header.columns * header.rows * header.frames * 8):  # pixels, then float64 values
            unit = dicom_pixels(dataset, header, "upload")
            chw = _shrink(read_image(unit, channels=None), limits)
            return np.transpose(chw, (1, 2, 0)), (header.columns, header.rows), header
    except DicomError as error:
        raise ApiError(
            415 if error.unsupported else 422,
            str(error).replace("cannot read DICOM upload: ", "the DICOM file could not be read: "),
            {"field": "image"},
        ) from error


def _shrink(array: np.ndarray, limits: ImageLimits) -> np.ndarray:
    """A float (C, H, W) array reduced to ``limits.max_working_side`` (box filter per channel), else itself."""
    height, width = array.shape[1:]
    size = working_size(width, height, limits.max_working_side)
    if size == (width, height):
        return array
    channels = [
        np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
        for channel in array
    ]
    return np.stack(channels).astype(np.float32)
