"""Tests of lvseg.data.images: reading any image/mask kind, and resizing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_builders import truncate
from lvseg.data.images import (
    PIL_FORMATS,
    CorruptImageError,
    mask_to_uint8,
    png_bytes,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
    to_channels,
    to_display_rgb8,
    write_png,
)
from lvseg.errors import LvsegError

RGB = np.array([[[255, 0, 0], [0, 128, 0]], [[0, 0, 64], [10, 20, 30]]], dtype=np.uint8)  # (2, 2, 3)


def saved(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_grayscale_is_replicated_or_kept(tmp_path: Path) -> None:
    gray = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(gray), "g.png")
    three = read_image(path)
    assert three.shape == (3, 2, 2) and three.dtype == np.float32
    np.testing.assert_allclose(three[0], gray / 255.0, atol=1e-6)
    np.testing.assert_array_equal(three[0], three[2])
    one = read_image(path, channels=1)
    assert one.shape == (1, 2, 2)
    np.testing.assert_allclose(one[0], gray / 255.0, atol=1e-6)
    assert read_image(path, channels=None).shape == (1, 2, 2)


def test_rgb_and_luminance(tmp_path: Path) -> None:
    path = saved(tmp_path, Image.fromarray(RGB), "c.png")
    image = read_image(path)
    np.testing.assert_allclose(image, RGB.transpose(2, 0, 1) / 255.0, atol=1e-6)
    luminance = read_image(path, channels=1)[0]
    pil_luminance = np.asarray(Image.fromarray(RGB).convert("L")) / 255.0
    np.testing.assert_allclose(luminance, pil_luminance, atol=1.5 / 255)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([RGB, np.full((2, 2, 1), 7, dtype=np.uint8)], axis=2)
    path = saved(tmp_path, Image.fromarray(rgba, mode="RGBA"), "a.png")
    np.testing.assert_allclose(read_image(path), RGB.transpose(2, 0, 1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(rgba), RGB.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_palette_image_uses_palette_colours(tmp_path: Path) -> None:
    palette_image = Image.fromarray(np.array([[0, 1], [1, 2]], dtype=np.uint8), mode="P")
    palette_image.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 30] + [0] * (256 * 3 - 9))
    image = read_image(saved(tmp_path, palette_image, "p.png"))
    np.testing.assert_allclose(image[:, 0, 1], np.array([200, 100, 50]) / 255.0, atol=1e-6)
    np.testing.assert_allclose(image[:, 1, 1], np.array([10, 20, 30]) / 255.0, atol=1e-6)


def test_sixteen_bit_scaled_by_65535(tmp_path: Path) -> None:
    deep = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = saved(tmp_path, Image.fromarray(deep), "d.png")
    assert Image.open(path).mode.startswith("I")
    image = read_image(path, channels=1)
    np.testing.assert_allclose(image[0], deep / 65535.0, atol=1e-6)
    np.testing.assert_allclose(read_image(deep, channels=1)[0], deep / 65535.0, atol=1e-6)


def test_float_tiff_kept_in_unit_range_or_min_max_scaled(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    image = read_image(saved(tmp_path, Image.fromarray(unit), "u.tif"), channels=1)
    np.testing.assert_allclose(image[0], unit, atol=1e-6)
    hounsfield = np.array([[-1000.0, 0.0], [500.0, 1000.0]], dtype=np.float32)
    image = read_image(saved(tmp_path, Image.fromarray(hounsfield), "h.tif"), channels=1)
    np.testing.assert_allclose(image[0], (hounsfield + 1000) / 2000, atol=1e-6)


def test_bytes_pil_and_array_sources_agree(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="BMP")
    from_bytes = read_image(buffer.getvalue())
    from_pil = read_image(Image.fromarray(RGB))
    from_array = read_image(RGB)
    np.testing.assert_array_equal(from_bytes, from_pil)
    np.testing.assert_array_equal(from_pil, from_array)
    assert read_image(np.array([[0, 255]])).shape == (3, 1, 2)  # int64 array in 0..255


def test_masks_of_every_kind(tmp_path: Path) -> None:
    expected = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    gray = saved(tmp_path, Image.fromarray(expected * 255), "m.png")
    palette = Image.fromarray(expected * 3, mode="P")
    palette.putpalette([0, 0, 0] + [255, 255, 255] * 255)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 1, 2] = 9  # only blue is non-zero
    rgb[1, 0, 0] = 255
    sixteen = saved(tmp_path, Image.fromarray(expected.astype(np.uint16) * 40000), "m16.png")
    for source in (
        gray,
        saved(tmp_path, palette, "mp.png"),
        saved(tmp_path, Image.fromarray(rgb), "mrgb.png"),
        sixteen,
    ):
        mask = read_mask(source)
        assert mask.dtype == np.uint8 and mask.shape == (2, 2)
        np.testing.assert_array_equal(mask, expected, err_msg=str(source))


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match=r"cannot read image '.*missing\.png': file not found"):
        read_image(tmp_path / "missing.png")
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello")
    with pytest.raises(LvsegError, match=r"cannot read image '.*notes\.png': not a PNG/JPEG/TIFF/BMP/DICOM file"):
        read_image(text_file)
    with pytest.raises(LvsegError, match=r"cannot read mask '.*notes\.png'"):
        read_mask(text_file)
    broken = saved(
        tmp_path, Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "t.png"
    )
    truncate(broken)
    with pytest.raises(LvsegError, match=r"'.*t\.png': file is truncated or corrupt"):
        read_image(broken)
    with pytest.raises(LvsegError, match="expected shape"):
        read_image(np.zeros((2, 2, 5)))
    with pytest.raises(LvsegError, match="channel"):
        read_image(RGB, channels=2)


def test_to_channels() -> None:
    gray = np.full((1, 2, 2), 0.5, dtype=np.float32)
    assert to_channels(gray, 3).shape == (3, 2, 2)
    colour = np.stack([np.full((2, 2), value, dtype=np.float32) for value in (1.0, 0.0, 0.0)])
    np.testing.assert_allclose(to_channels(colour, 1), np.full((1, 2, 2), 0.299), atol=1e-6)


def test_resize_image_bicubic_clamped_and_not_square() -> None:
    checker = (np.indices((40, 30)).sum(axis=0) % 2).astype(np.float32)[None].repeat(3, axis=0)
    resized = resize_image(checker, 16)
    assert isinstance(resized, torch.Tensor) and resized.shape == (3, 16, 16) and resized.dtype == torch.float32
    assert resized.min() >= 0.0 and resized.max() <= 1.0
    upsampled = resize_image(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 8)
    assert upsampled.shape == (1, 8, 8) and upsampled.min() >= 0.0 and upsampled.max() <= 1.0
    assert 0.0 < float(upsampled[0, 0, 3]) < 1.0  # interpolated, not nearest
    np.testing.assert_allclose(resize_image(np.full((3, 5, 7), 255, dtype=np.uint8), 4).numpy(), 1.0, atol=1e-6)


def test_resize_mask_nearest_keeps_binary() -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 0:20] = 1
    resized = resize_mask(mask, 12)
    assert resized.shape == (1, 12, 12) and resized.dtype == torch.uint8
    assert set(resized.unique().tolist()) == {0, 1}
    assert resized[0, 6, 2] == 1 and resized[0, 6, 9] == 0 and resized[0, 1, 2] == 0


# --- writing PNGs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_png_bytes_keep_every_pixel_value(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8)
    decoded = Image.open(io.BytesIO(png_bytes(array)))
    assert decoded.format == "PNG" and decoded.mode == {1: "L", 3: "RGB", 4: "RGBA"}[(shape + (1,))[2]]
    assert np.array_equal(np.asarray(decoded), array)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(array, compress_level=1)))), array)


def test_png_bytes_refuse_what_is_not_uint8_pixels() -> None:
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        png_bytes(np.zeros((4, 4, 2), dtype=np.uint8))


def test_write_png_is_atomic_and_masks_are_0_255(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [3, 0]], dtype=np.uint8)
    path = write_png(tmp_path / "sub" / "mask.png", mask_to_uint8(mask))
    assert path == tmp_path / "sub" / "mask.png"
    assert np.asarray(Image.open(path)).tolist() == [[0, 255], [255, 0]]
    assert not list(path.parent.glob(".*.tmp"))
    assert np.array_equal(read_mask(path), (mask > 0).astype(np.uint8))


def test_display_rgb8_inverts_read_image_for_8_bit_images(tmp_path: Path) -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(to_display_rgb8(read_image(gray, channels=None)), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(to_display_rgb8(read_image(RGB)), RGB)
    with pytest.raises(ValueError, match="shape"):
        to_display_rgb8(np.zeros((2, 5, 5), dtype=np.float32))


def test_sixteen_bit_is_scaled_by_the_dtype_maximum(tmp_path: Path) -> None:
    values = np.array([[0, 4095], [32768, 65535]], dtype=np.uint16)
    path = saved(tmp_path, Image.fromarray(values), "deep.png")
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_image(path, channels=None)[0], values / np.float32(65535))


# --- corrupt input is refused, not decoded to a confident-looking image (issue 22) ---------------------


def test_a_jpeg_cut_short_with_an_end_marker_is_refused(tmp_path: Path) -> None:
    from serving_support import jpeg_cut_in_half

    data = jpeg_cut_in_half()  # decodes without error: its second half is the decoder's uniform grey
    path = tmp_path / "half.jpg"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(CorruptImageError, match=r"last \d+ of 256 rows are all the uniform grey \(128\)"):
            read_image(source)
    with pytest.raises(LvsegError, match="half.jpg"):
        read_image(path)


@pytest.mark.parametrize("width, height", [(8000, 6000), (2000, 2000)])
def test_a_jpeg_whose_size_header_claims_more_than_its_data_is_refused(width: int, height: int) -> None:
    from serving_support import jpeg_with_size_header, textured_image

    # 8000x6000 in 2 KB: too few bytes for that many blocks (refused from the header, before decoding);
    # 2000x2000 from a 256x256 JPEG: enough bytes, but all rows past the real ones are the decoder's grey.
    data = jpeg_with_size_header(width, height, textured_image(64, 64) if width == 8000 else textured_image())
    with pytest.raises(CorruptImageError) as caught:
        read_image(data)
    if width == 8000:
        assert "says 8000x6000 pixels, which need at least 93750 bytes" in caught.value.reason
        assert f"holds {len(data)} bytes" in caught.value.reason
    else:
        assert "rows are all the uniform grey" in caught.value.reason


def test_complete_jpegs_are_read_even_with_a_thin_grey_band_at_the_bottom(tmp_path: Path) -> None:
    from serving_support import encode, textured_image

    assert read_image(encode(textured_image(), "JPEG", quality=90)).shape == (3, 256, 256)
    banded = textured_image()
    banded[-8:] = 128  # 8 of 256 rows: less than JPEG_FILL_FRACTION of the height
    assert read_image(encode(banded, "JPEG", quality=95)).shape == (3, 256, 256)
    assert read_image(encode(np.full((64, 64), 128, np.uint8), "PNG")).shape == (3, 64, 64)  # PNG: lossless


def test_an_animated_gif_is_refused_as_the_web_app_refuses_it(tmp_path: Path) -> None:
    from lvseg.serving.uploads import sniff_format
    from serving_support import animated_gif

    data = animated_gif()
    path = tmp_path / "cine.gif"
    path.write_bytes(data)
    assert sniff_format(data) is None  # the app: 415
    with pytest.raises(LvsegError, match="cine.gif.*not a PNG/JPEG/TIFF/BMP/DICOM file"):
        read_image(path)
    with pytest.raises(LvsegError, match="not a PNG/JPEG/TIFF/BMP/DICOM file"):
        read_mask(data)
    assert PIL_FORMATS == ("PNG", "JPEG", "TIFF", "BMP")


def test_a_float_tiff_without_a_finite_value_is_refused_and_some_non_finite_values_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from serving_support import float_tiff

    with pytest.raises(CorruptImageError, match="none of its 64 pixel values is a finite number"):
        read_image(float_tiff(np.full((8, 8), np.inf)))
    with pytest.raises(CorruptImageError, match="finite"):
        read_image(np.full((4, 4), np.nan, dtype=np.float32))
    values = np.linspace(-100.0, 400.0, 64).reshape(8, 8)
    values[0, 0] = np.nan
    with caplog.at_level("WARNING", logger="lvseg.data.images"):
        image = read_image(float_tiff(values), channels=None)
    assert np.isfinite(image).all() and image.max() == 1.0
    assert "1 of its 64 pixel values are not finite" in caplog.text


def test_pillow_truncated_image_detection_stays_strict() -> None:
    import importlib

    from PIL import ImageFile

    for module in ("lvseg.cli.main", "lvseg.serving.app"):  # everything the CLI and the app import
        importlib.import_module(module)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _dicom(**header: float) -> bytes:
    from serving_support import dicom_bytes

    return dicom_bytes(np.arange(64, dtype=np.uint16).reshape(8, 8) * 10, **header)


@pytest.mark.parametrize(
    "header, element",
    [
        ({"center": float("nan"), "width": float("nan")}, "WindowCenter is nan"),
        ({"center": 300.0, "width": float("inf")}, "WindowWidth is inf"),
        ({"slope": float("inf"), "intercept": 0.0}, "RescaleSlope is inf"),
        ({"slope": 1.0, "intercept": float("-inf")}, "RescaleIntercept is -inf"),
        ({"slope": 0.0, "intercept": 5.0}, "RescaleSlope is 0"),
        ({"center": 1e9, "width": 10.0}, "maps every pixel to 0.0"),
    ],
)
def test_dicom_header_values_that_are_not_finite_are_treated_as_missing_with_a_warning(
    header: dict[str, float], element: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="lvseg.data.dicom"):
        image = read_image(_dicom(**header), channels=None)
    # As without the element: the full range of the stored values, not an all-zero image.
    np.testing.assert_allclose(image, read_image(_dicom(), channels=None), atol=1e-6)
    assert image.min() == 0.0 and image.max() == 1.0
    assert element in caplog.text


@pytest.mark.parametrize(
    "text", ["", " ", "\u00a0", "\x00\x00", "...", "\u200b\u200b", "\ufeff", " .\u200b\ufeff,;- _", "\t\n"]
)
def test_a_report_without_letters_or_digits_is_blank(text: str) -> None:
    from lvseg.data.report_text import is_blank_report

    assert is_blank_report(text)


@pytest.mark.parametrize("text", ["a", "0", "lesion.", "\ufeffLesion", "右肺下叶感染", "\u200bx", "Ölfleck"])
def test_a_report_with_a_letter_or_digit_is_not_blank(text: str) -> None:
    from lvseg.data.report_text import is_blank_report

    assert not is_blank_report(text)


@pytest.mark.parametrize(
    "mode,values,dtype",
    [("L", 256, np.uint8), ("RGB", 256, np.uint8), ("I;16", 65536, np.uint16), ("F", 1, np.float32)],
)
def test_read_samples_keeps_8_bit_files_compact_and_reads_as_read_image(
    tmp_path: Path, mode: str, values: int, dtype: type
) -> None:
    from lvseg.data.images import read_samples

    rng = np.random.default_rng(0)
    shape = (9, 13, 3) if mode == "RGB" else (9, 13)
    pixels = (rng.random(shape) * values).astype(dtype) if dtype is not np.float32 else rng.random(shape) * 900.0
    path = tmp_path / ("x.tif" if mode == "F" else "x.png")
    Image.fromarray(pixels.astype(np.float32) if mode == "F" else pixels).save(path)
    samples = read_samples(path)
    assert samples.ndim == 3 and samples.shape[:2] == (9, 13)
    assert samples.dtype == (np.uint8 if dtype is np.uint8 else np.float32)  # other depths: float in [0, 1]
    for channels in (1, 3, None):
        assert np.array_equal(read_image(samples, channels=channels), read_image(path, channels=channels))
