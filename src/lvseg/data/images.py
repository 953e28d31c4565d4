"""Reading images and masks into arrays, writing PNGs, and resizing.

This module is the one image decoder of lvseg: training, evaluation, ``lvseg predict`` and the web
app (:mod:`lvseg.serving.uploads`, after its format and size checks) all turn pixels into model input
with :func:`read_image`, so the same file always gives the same array. Every reader returns
channel-first arrays: images are float32 ``(C, H, W)`` in ``[0, 1]`` and masks are uint8 ``(H, W)``
in ``{0, 1}``. Sources may be a file path, the file's bytes, a :class:`PIL.Image.Image` or a numpy
array; any problem with a user's file raises :class:`~lvseg.errors.LvsegError` naming the file.

It is also the one PNG writer (:func:`png_bytes`, :func:`write_png`). torch is imported only by the
resizing functions, so the web app can decode without importing it.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lvseg.errors import LvsegError
from lvseg.files import atomic_write
from lvseg.notices import input_notice

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

#: File extensions (lower case, with the dot) that the data layer treats as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"})

#: The formats lvseg decodes with Pillow (DICOM is read with pydicom): the one list for training, ``lvseg predict``
#: and the web app (:mod:`lvseg.serving.uploads` sniffs the same four from the magic bytes). Any other format
#: Pillow could open (a GIF, animated or not, a WebP) is refused.
PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP")
_EXPECTED_FORMATS = "not a PNG/JPEG/TIFF/BMP/DICOM file"
_EXIF_ORIENTATION = 0x0112
#: Pillow's names of JPEG files (a camera's multi-picture JPEG opens as "MPO").
_JPEG_FORMATS = ("JPEG", "MPO")
#: The sample value libjpeg gives every pixel of the blocks it has no data for (all DCT coefficients zero): what a
#: JPEG cut short, or one whose size header was enlarged, shows where its data ends.
JPEG_FILL_VALUE = 128
#: A JPEG whose last rows are all :data:`JPEG_FILL_VALUE` over at least this fraction of its height is refused.
JPEG_FILL_FRACTION = 1 / 16

# ITU-R BT.601 luma weights, the same ones PIL uses for mode "L".
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _describe(source: ImageSource) -> str:
    """A short human name for ``source`` to put in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    return f"<{type(source).__name__}>"


class CorruptImageError(LvsegError):
    """An image file whose pixels cannot be trusted (truncated, a size header that its data cannot fill, no finite
    value); ``reason`` says why, without the file's name."""

    def __init__(self, name: str, reason: str, kind: str = "image") -> None:
        super().__init__(f"cannot read {kind} {name}: {reason}")
        self.reason = reason


def check_header_size(image: Image.Image, file_bytes: int, name: str, kind: str = "image") -> None:
    """Refuse (:class:`CorruptImageError`) a file too small for the pixels its header declares, before decoding.

    A JPEG's entropy coding spends at least one bit on every 8x8 block of its first component (the DC value of a
    Huffman-coded block, sequential or progressive; only the rare arithmetic-coded variant can spend less), so a
    W x H JPEG holds at least ceil(W/8) * ceil(H/8) / 8 bytes: 8000x6000 needs 93,750. A smaller file has a size
    header enlarged by hand or lost most of its data; the decoder would fill the rest with uniform grey.
    Other formats: Pillow itself refuses pixel data that ends early (truncated-image detection left strict).
    """
    if image.format not in _JPEG_FORMATS:
        return
    width, height = image.size
    needed = math.ceil(width / 8) * math.ceil(height / 8) // 8
    if file_bytes < needed:
        raise CorruptImageError(
            name,
            f"its JPEG header says {width}x{height} pixels, which need at least {needed} bytes of image data, but "
            f"the file holds {file_bytes} bytes: the size in its header is wrong or the file is truncated",
            kind,
        )


def check_decoded(image: Image.Image, name: str, kind: str = "image") -> None:
    """Refuse (:class:`CorruptImageError`) a decoded JPEG whose data ended before its last rows.

    Where a JPEG's data ends early (a file cut short with an end marker appended, or a size header enlarged by
    hand), the decoder does not fail: it fills every remaining block with :data:`JPEG_FILL_VALUE` in every
    channel. A JPEG whose last rows are exactly that value over at least :data:`JPEG_FILL_FRACTION` of its
    height is refused (one that really ends in a uniform mid-grey band can be sent losslessly, as PNG). Call it
    after ``image.load()`` and before any orientation change; it reads bands of rows from the bottom up to the
    last row with content.
    """
    if image.format not in _JPEG_FORMATS or image.mode not in ("L", "RGB"):
        return
    width, height = image.size
    limit = max(2, math.ceil(height * JPEG_FILL_FRACTION))
    filled, bottom = 0, height
    while bottom > 0:  # band by band from the bottom, up to the last row with content
        top = max(0, bottom - limit)
        band = np.asarray(image.crop((0, top, width, bottom))).reshape(bottom - top, -1)
        uniform = np.all(band == JPEG_FILL_VALUE, axis=1)
        content = np.flatnonzero(~uniform)
        filled += len(uniform) - 1 - int(content[-1]) if content.size else len(uniform)
        if content.size:
            break
        bottom = top
    if filled >= limit:
        where = "all its rows are" if filled >= height else f"its last {filled} of {height} rows are all"
        raise CorruptImageError(
            name,
            f"{where} the uniform grey ({JPEG_FILL_VALUE}) that a JPEG decoder fills in where the file's data ends: "
            "the file is truncated or corrupt (an image that really ends in a uniform grey band can be sent as PNG)",
            kind,
        )


def open_pil(source: ImageSource, kind: str = "image") -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as a fully decoded PIL image.

    Multi-frame files (e.g. TIFF stacks) give their first frame. Only :data:`PIL_FORMATS` are opened. Raises
    :class:`LvsegError` naming the file when it is missing, not an image of those formats, or truncated/corrupt
    (Pillow's truncated-image detection, :func:`check_header_size`, :func:`check_decoded`).
    """
    if isinstance(source, Image.Image):
        return source
    name = _describe(source)
    if isinstance(source, (bytes, bytearray)):
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
        file_bytes = len(source)
    elif isinstance(source, (str, os.PathLike)):
        stream = Path(source)
        if not stream.is_file():
            raise LvsegError(f"cannot read {kind} {name}: file not found")
        file_bytes = stream.stat().st_size
    else:
        raise LvsegError(f"cannot read {kind} {name}: expected a file path, bytes, a PIL image or a numpy array")
    try:
        image = Image.open(stream, formats=PIL_FORMATS)
        try:
            check_header_size(image, file_bytes, name, kind)
            image.load()
            check_decoded(image, name, kind)
        except BaseException:
            image.close()
            raise
    except UnidentifiedImageError:
        raise LvsegError(f"cannot read {kind} {name}: {_EXPECTED_FORMATS}") from None
    except Image.DecompressionBombError as error:
        raise LvsegError(f"cannot read {kind} {name}: it is too large to decode safely ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise LvsegError(f"cannot read {kind} {name}: file is truncated or corrupt ({error})") from None
    return image


#: EXIF orientations that swap width and height (quarter turns).
QUARTER_TURNS = (5, 6, 7, 8)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; 1 also when absent or unreadable)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):  # a broken EXIF block: the pixels are still usable
        return 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says it is viewed (any format that carries EXIF), else itself.

    The one orientation rule: training, ``lvseg predict`` and the web app all see images upright.
    """
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


def _dicom_bytes(source: ImageSource) -> bytes | None:
    """The file's bytes when ``source`` (a path or bytes) is a DICOM file, else None."""
    from lvseg.data.dicom import DICOM_MAGIC_OFFSET, is_dicom

    if isinstance(source, (bytes, bytearray)):
        return bytes(source) if is_dicom(bytes(source)) else None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        with open(source, "rb") as handle:
            start = handle.read(DICOM_MAGIC_OFFSET + 4)
            return start + handle.read() if is_dicom(start) else None
    return None


def pil_samples(image: Image.Image, name: str = "<PIL image>") -> np.ndarray:
    """The samples of a decoded PIL image as :func:`read_image` scales them: (H, W, C), C in {1, 3}, in the
    image's own dtype (uint8, uint16, int32, float32 or bool), turned upright by its EXIF orientation.

    ``read_image(pil_samples(image), channels)`` equals ``read_image(image, channels)`` exactly: a caller can keep
    the compact integer samples (1 or 2 bytes each, not 4) and make the float array only where it is needed.
    """
    return _to_hwc(_pil_to_array(upright(image)), name)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image to a numpy array of shape (H, W) or (H, W, C), keeping its bit depth.

    Palette and exotic colour modes become RGB(A); "LA" keeps only its luminance.
    """
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode == "LA":
        image = image.getchannel("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "1":
        return np.asarray(image, dtype=bool)
    return np.asarray(image)


def _scale_to_unit(array: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Scale an array of any numeric dtype to float32 in [0, 1].

    uint8 / uint16 are divided by their dtype maximum (255 / 65535); bool maps to
    {0, 1}. Other integer arrays (e.g. int32 from PIL mode "I", int64 from
    ``np.array``) are divided by 255 or 65535, whichever holds their range, and
    min-max normalised otherwise. Float arrays already in [0, 1] are kept;
    other float ranges (e.g. CT values in a float TIFF) are min-max normalised. Non-finite float values (NaN,
    infinity) read as 0, with a warning; an image with no finite value at all is refused
    (:class:`CorruptImageError`).
    """
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        values = array.astype(np.float32)
        values /= float(np.iinfo(array.dtype).max)  # in place: the same float32 division, one array
        return values
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low >= 0 and high <= 255:
            return array.astype(np.float32) / 255.0
        if low >= 0 and high <= 65535:
            return array.astype(np.float32) / 65535.0
        return _min_max(array.astype(np.float64))
    if np.issubdtype(array.dtype, np.floating):
        _check_finite(array, name)
        values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0):
            return values
        return _min_max(values)
    raise LvsegError(f"cannot read image <array {array.dtype}>: expected a numeric array")


def _check_finite(array: np.ndarray, name: str) -> None:
    """Refuse a float image without one finite value; warn about one with some NaN or infinite values."""
    finite = int(np.count_nonzero(np.isfinite(array)))
    if finite == array.size:
        return
    if finite == 0:
        raise CorruptImageError(
            name, f"none of its {array.size} pixel values is a finite number (all are NaN or infinite)"
        )
    input_notice(
        logger,
        "image %s: %d of its %d pixel values are not finite numbers (NaN or infinite); they read as 0",
        name,
        array.size - finite,
        array.size,
    )


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _to_hwc(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as (H, W, C) with C in {1, 3}; alpha channels are dropped."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 1 or channels == 3:
            return array
        if channels == 2:  # grayscale + alpha
            return array[:, :, :1]
        if channels == 4:  # RGBA
            return array[:, :, :3]
    raise LvsegError(f"cannot read image {name}: expected shape (H, W) or (H, W, C) with C in 1..4, got {array.shape}")


def to_channels(chw: np.ndarray, channels: int) -> np.ndarray:
    """Convert a (1 or 3, H, W) array to ``channels`` (1 or 3): (channels, H, W).

    Grayscale is replicated to 3 channels (dtype kept); colour becomes BT.601
    luminance for 1 channel (float32, so pass values in [0, 1]).
    """
    have = chw.shape[0]
    if channels == have:
        return chw
    if channels == 3 and have == 1:
        return np.repeat(chw, 3, axis=0)
    if channels == 1 and have == 3:
        luminance = np.tensordot(_LUMA_WEIGHTS, chw.astype(np.float32), axes=(0, 0))
        return np.clip(luminance, 0.0, 1.0)[None].astype(np.float32)
    raise LvsegError(f"cannot convert an image with {have} channel(s) to {channels}; expected 1 or 3 channels")


def read_image(source: ImageSource, channels: int | None = 3) -> np.ndarray:
    """Read an image as float32 ``(C, H, W)`` in ``[0, 1]``.

    Args:
        source: a file path, the file's bytes, a PIL image, or a numpy array of
            shape (H, W) or (H, W, C) with C in 1..4.
        channels: 3 (grayscale replicated), 1 (luminance), or None to keep the
            source's own count (1 for grayscale, 3 for colour).

    Handles grayscale, RGB, RGBA (alpha dropped), palette, 16-bit (scaled by
    65535, the dtype's maximum, whatever the values' own maximum: a 12-bit image
    stays in [0, 0.0625]), float TIFF and DICOM images (:mod:`lvseg.data.dicom`:
    first frame, windowed). Files (paths, bytes) are turned upright by their EXIF
    orientation (:func:`upright`). Raises :class:`LvsegError` naming the file.
    """
    if channels not in (1, 3, None):
        raise LvsegError(f"unsupported channel count {channels!r}; expected 1 or 3")
    name = _describe(source)
    dicom = None if isinstance(source, (np.ndarray, Image.Image)) else _dicom_bytes(source)
    if isinstance(source, np.ndarray):
        array = source
    elif dicom is not None:
        from lvseg.data.dicom import read_dicom

        array = read_dicom(dicom, name)
    else:
        array = _pil_to_array(upright(open_pil(source, kind="image")))
    hwc = _to_hwc(array, name)
    if hwc.dtype in (np.uint8, np.uint16):  # straight into channel-first float32, divided in place: one array
        chw = np.transpose(hwc, (2, 0, 1)).astype(np.float32, order="C")
        chw /= float(np.iinfo(hwc.dtype).max)  # the values of _scale_to_unit, exactly
    else:
        chw = np.ascontiguousarray(np.transpose(_scale_to_unit(hwc, name), (2, 0, 1)), dtype=np.float32)
    if channels is None:
        return chw
    return to_channels(chw, channels).astype(np.float32, copy=False)


def read_samples(source: ImageSource) -> np.ndarray:
    """An image as :func:`read_image` reads it, channel-last and, for files with 8-bit samples, still in uint8:
    (H, W, C), C in {1, 3}; any other file (16-bit, float, DICOM) comes back as float32 in [0, 1].

    ``read_image(read_samples(x), channels)`` equals ``read_image(x, channels)``, and the display pixels of
    the uint8 samples are the samples themselves, so a caller that needs both (folder prediction: the model
    input and the overlay) decodes once and converts only what each use needs.
    """
    name = _describe(source)
    dicom = None if isinstance(source, (np.ndarray, Image.Image)) else _dicom_bytes(source)
    if dicom is None and not isinstance(source, np.ndarray):
        hwc = _to_hwc(_pil_to_array(upright(open_pil(source, kind="image"))), name)
        if hwc.dtype == np.uint8:
            return hwc
        return np.ascontiguousarray(np.transpose(read_image(hwc, channels=None), (1, 2, 0)))
    return np.ascontiguousarray(np.transpose(read_image(source, channels=None), (1, 2, 0)))


def read_mask(source: ImageSource) -> np.ndarray:
    """Read a segmentation mask as uint8 ``(H, W)``: 1 where the mask is non-zero, else 0.

    Palette PNGs: a non-zero palette index is foreground. RGB(A) masks: a pixel
    is foreground when any colour channel is non-zero (alpha is ignored).
    Accepts the same sources as :func:`read_image`.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        array = source
    else:
        image = open_pil(source, kind="mask")
        if image.mode in ("P", "PA"):
            array = np.asarray(image.convert("P") if image.mode == "PA" else image)
        elif image.mode == "LA":
            array = np.asarray(image.getchannel("L"))
        elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            array = np.asarray(image.convert("RGB"))
        else:
            array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        foreground = np.any(colour != 0, axis=2)
    elif array.ndim == 2:
        foreground = array != 0
    else:
        raise LvsegError(f"cannot read mask {name}: expected a 2-D mask, got shape {array.shape}")
    return foreground.astype(np.uint8)


def to_display_rgb8(chw: np.ndarray) -> np.ndarray:
    """The 8-bit view of a :func:`read_image` array: (1 or 3, H, W) in [0, 1] -> uint8 (H, W, 3).

    ``round(value * 255)``, grayscale replicated; uint8 sources come back unchanged.
    """
    array = np.asarray(chw)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (1 or 3, H, W), got {array.shape}")
    hwc = np.transpose(array, (1, 2, 0))
    if hwc.shape[2] == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    return np.ascontiguousarray(np.clip(np.rint(hwc * 255.0), 0, 255).astype(np.uint8))


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """A mask as lvseg stores and shows it: uint8 (H, W), 255 where ``mask`` is non-zero, else 0."""
    return np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)


def _png_image(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"a PNG is written from uint8 (H, W), (H, W, 3) or (H, W, 4) pixels, got {array.dtype} {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG file bytes of uint8 pixels (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, values kept exactly.

    ``compress_level``: zlib level 0-9 (6, PIL's default; the web app uses 1 for latency).
    """
    buffer = io.BytesIO()
    _png_image(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def write_png(path: str | os.PathLike[str], array: np.ndarray, compress_level: int = 6) -> Path:
    """Write :func:`png_bytes` of ``array`` to ``path`` atomically (parents created); returns the path."""
    data = png_bytes(array, compress_level)
    return atomic_write(path, lambda handle: handle.write(data))


def _as_chw_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    tensor = torch.as_tensor(array)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"expected an array of shape (C, H, W) or (H, W), got {tuple(tensor.shape)}")
    return tensor


def _target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def resize_image(chw: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize an image (C, H, W) (or (H, W)) in [0, 1] to float32 (C, size, size), bicubic.

    Downsampling is antialiased; the result is clamped to [0, 1]. Integer inputs
    (e.g. uint8) are scaled by 255 first.
    """
    import torch
    import torch.nn.functional as F

    tensor = _as_chw_tensor(chw)
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    tensor = tensor.float()
    target = _target_size(size)
    if tuple(tensor.shape[-2:]) == target:
        return tensor.clone()
    resized = F.interpolate(tensor[None], size=target, mode="bicubic", align_corners=False, antialias=True)[0]
    return resized.clamp_(0.0, 1.0)


def resize_mask(mask: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a mask (H, W) or (1, H, W) to uint8 (1, size, size) with nearest-neighbour sampling."""
    import torch
    import torch.nn.functional as F

    tensor = _as_chw_tensor(mask)
    target = _target_size(size)
    if tuple(tensor.shape[-2:]) == target:
        return tensor.to(torch.uint8).clone()
    resized = F.interpolate(tensor[None].float(), size=target, mode="nearest-exact")[0]
    return resized.to(torch.uint8)
