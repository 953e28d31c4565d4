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
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lvseg.errors import LvsegError
from lvseg.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

#: File extensions (lower case, with the dot) that the data layer treats as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"})

_EXPECTED_FORMATS = "not a PNG/JPEG/TIFF/BMP/DICOM file"
_EXIF_ORIENTATION = 0x0112

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


def open_pil(source: ImageSource, kind: str = "image") -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as a fully decoded PIL image.

    Multi-frame files (e.g. TIFF stacks) give their first frame. Raises
    :class:`LvsegError` naming the file when it is missing, not an image, or
    truncated/corrupt.
    """
    if isinstance(source, Image.Image):
        return source
    name = _describe(source)
    if isinstance(source, (bytes, bytearray)):
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        stream = Path(source)
        if not stream.is_file():
            raise LvsegError(f"cannot read {kind} {name}: file not found")
    else:
        raise LvsegError(f"cannot read {kind} {name}: expected a file path, bytes, a PIL image or a numpy array")
    try:
        image = Image.open(stream)
        image.load()
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


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    """Scale an array of any numeric dtype to float32 in [0, 1].

    uint8 / uint16 are divided by their dtype maximum (255 / 65535); bool maps to
    {0, 1}. Other integer arrays (e.g. int32 from PIL mode "I", int64 from
    ``np.array``) are divided by 255 or 65535, whichever holds their range, and
    min-max normalised otherwise. Float arrays already in [0, 1] are kept;
    other float ranges (e.g. CT values in a float TIFF) are min-max normalised.
    """
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low >= 0 and high <= 255:
            return array.astype(np.float32) / 255.0
        if low >= 0 and high <= 65535:
            return array.astype(np.float32) / 65535.0
        return _min_max(array.astype(np.float64))
    if np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0):
            return values
        return _min_max(values)
    raise LvsegError(f"cannot read image <array {array.dtype}>: expected a numeric array")


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
    chw = np.ascontiguousarray(np.transpose(_scale_to_unit(hwc), (2, 0, 1)), dtype=np.float32)
    if channels is None:
        return chw
    return to_channels(chw, channels).astype(np.float32, copy=False)


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
