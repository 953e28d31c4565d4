"""Tests of lvseg.data.images: reading any image/mask kind, and resizing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_builders import truncate
from lvseg.data.images import read_image, read_mask, resize_image, resize_mask, to_channels
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
    for source in (gray, saved(tmp_path, palette, "mp.png"), saved(tmp_path, Image.fromarray(rgb), "mrgb.png"), sixteen):
        mask = read_mask(source)
        assert mask.dtype == np.uint8 and mask.shape == (2, 2)
        np.testing.assert_array_equal(mask, expected, err_msg=str(source))


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match=r"cannot read image '.*missing\.png': file not found"):
        read_image(tmp_path / "missing.png")
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello")
    with pytest.raises(LvsegError, match=r"cannot read image '.*notes\.png': not a PNG/JPEG/TIFF/BMP file"):
        read_image(text_file)
    with pytest.raises(LvsegError, match=r"cannot read mask '.*notes\.png'"):
        read_mask(text_file)
    broken = saved(tmp_path, Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "t.png")
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
