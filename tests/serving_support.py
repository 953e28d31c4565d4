"""Helpers shared by the serving tests: synthetic images in every accepted format, a live server."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

#: The Host that Starlette's TestClient sends ("testserver"), which an app accepts only when told to: by default
#: ``create_app`` accepts the loopback names only.
TESTCLIENT_HOSTS = ["testserver"]
REPORT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def lesion_image(height: int = 64, width: int = 96) -> np.ndarray:
    """A dark image with two bright rectangles (two lesions for the brightness fake)."""
    image = np.full((height, width), 30, dtype=np.uint8)
    image[8:20, 10:30] = 220
    image[40:56, 60:90] = 200
    return image


def encode(array: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(array: np.ndarray | None = None) -> bytes:
    return encode(lesion_image() if array is None else array, "PNG")


def png_with_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose pixel data is garbage.

    Decoding it fails (422), so a 413 proves the size was checked from the header first.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data") + chunk(b"IEND", b"")


def dicom_bytes(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    center: Any = None,
    width: Any = None,
    pixel_spacing: tuple[float, float] | None = None,
) -> bytes:
    """A minimal, valid 16-bit DICOM secondary-capture file holding ``pixels`` (PixelSpacing in mm if given)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.preamble = b"\0" * 128
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    if slope is not None:
        dataset.RescaleSlope = slope
        dataset.RescaleIntercept = intercept or 0
    if center is not None:
        dataset.WindowCenter = center
        dataset.WindowWidth = width
    if pixel_spacing is not None:
        dataset.PixelSpacing = list(pixel_spacing)
    dataset.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: Any, **options: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread on a free loopback port; yields its base URL. ``options``:
    more ``uvicorn.Config`` settings (e.g. ``http``, the protocol class ``lvseg serve`` uses)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lvseg-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def textured_image(height: int = 256, width: int = 256) -> np.ndarray:
    """uint8 (H, W) with detail everywhere (no uniform band): a JPEG of it holds data for every block."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).normal(0.0, 10.0, (height, width))
    return np.clip((np.sin(x / 9.0) + np.cos(y / 7.0)) * 60.0 + 128.0 + noise, 0, 255).astype(np.uint8)


def jpeg_cut_in_half(array: np.ndarray | None = None) -> bytes:
    """A JPEG of ``array`` cut after half its bytes, with an end-of-image marker appended (decodes without error:
    the decoder fills the missing blocks with uniform grey)."""
    data = encode(textured_image() if array is None else array, "JPEG", quality=90)
    return data[: len(data) // 2] + b"\xff\xd9"


def jpeg_with_size_header(width: int, height: int, array: np.ndarray | None = None) -> bytes:
    """A valid JPEG of ``array`` whose start-of-frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(textured_image(64, 64) if array is None else array, "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def float_tiff(array: np.ndarray) -> bytes:
    """A 32-bit float TIFF (PIL mode "F") of ``array``."""
    return encode(array.astype(np.float32), "TIFF")


def animated_gif() -> bytes:
    """A two-frame animated GIF."""
    frames = [Image.fromarray(lesion_image()), Image.fromarray(255 - lesion_image())]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()
