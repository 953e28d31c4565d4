"""Metrics on hand-made masks, and the overlay pictures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lvseg.evaluation.metrics import binarize, dice_iou_per_image, hd95_per_image, mask_metrics, summarize
from lvseg.rendering import (
    colorize_lesions,
    label_lesions,
    lesion_colors,
    overlay_grid,
    overlay_lesions,
    overlay_mask,
    to_rgb_uint8,
)


def _square(top: int, left: int, size: int = 4, shape: tuple[int, int] = (16, 16)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top : top + size, left : left + size] = 1
    return mask


def test_perfect_prediction_scores_one() -> None:
    truth = _square(3, 3)
    values = mask_metrics(truth, truth)
    assert values["dice"] == pytest.approx(1.0)
    assert values["iou"] == pytest.approx(1.0)
    assert values["hd95"] == pytest.approx(0.0)


def test_disjoint_prediction_scores_zero() -> None:
    values = mask_metrics(_square(0, 0), _square(10, 10))
    assert values["dice"] == pytest.approx(0.0)
    assert values["iou"] == pytest.approx(0.0)
    assert values["hd95"] > 5


def test_half_overlap_has_known_dice_and_iou() -> None:
    # 4x4 squares shifted by 2 columns: 8 shared pixels of 16 + 16.
    values = mask_metrics(_square(4, 4), _square(4, 6))
    assert values["dice"] == pytest.approx(2 * 8 / 32)
    assert values["iou"] == pytest.approx(8 / 24)


def test_both_empty_scores_one_and_hd95_is_undefined() -> None:
    empty = np.zeros((8, 8), dtype=np.uint8)
    values = mask_metrics(empty, empty)
    assert values["dice"] == 1.0 and values["iou"] == 1.0
    assert math.isnan(values["hd95"])


def test_empty_prediction_on_a_lesion_scores_zero_and_hd95_undefined() -> None:
    values = mask_metrics(np.zeros((8, 8), np.uint8), _square(2, 2, shape=(8, 8)))
    assert values["dice"] == 0.0
    assert math.isnan(values["hd95"])


def test_hd95_of_shifted_pixel_is_the_shift() -> None:
    prediction = np.zeros((12, 12), np.uint8)
    truth = np.zeros((12, 12), np.uint8)
    prediction[5, 5] = 1
    truth[5, 8] = 1
    assert mask_metrics(prediction, truth)["hd95"] == pytest.approx(3.0)


def test_batched_metrics_are_per_image() -> None:
    a, b = torch.from_numpy(_square(4, 4)).float(), torch.from_numpy(_square(4, 6)).float()
    prediction = torch.stack([a, a, torch.zeros_like(a)])[:, None]
    target = torch.stack([a, b, torch.zeros_like(a)])[:, None]
    dice, iou = dice_iou_per_image(prediction, target)
    assert dice.tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 1.0])
    hd = hd95_per_image(prediction, target)
    assert hd[0] == 0 and hd[1] > 0 and torch.isnan(hd[2])


def test_binarize_is_strictly_above_threshold() -> None:
    probability = torch.tensor([0.2, 0.5, 0.51]).view(1, 1, 1, 3)
    assert binarize(probability).view(-1).tolist() == [0.0, 0.0, 1.0]


def test_summarize_skips_undefined_values() -> None:
    mean, std, undefined = summarize([1.0, float("nan"), 3.0])
    assert (mean, std, undefined) == (2.0, 1.0, 1)
    mean, _, undefined = summarize([float("nan")])
    assert math.isnan(mean) and undefined == 1


def test_mask_metrics_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        mask_metrics(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------------------------- overlays


def test_overlay_mask_blends_inside_keeps_outside_and_draws_outline() -> None:
    image = np.full((10, 12), 0.5, dtype=np.float32)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:8, 3:9] = 1
    out = overlay_mask(image, mask, color=(255, 0, 0), alpha=0.5)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 128, 128]  # outside: the gray image
    assert out[2, 3].tolist() == [255, 0, 0]  # outline: full colour
    assert out[4, 5].tolist() == [192, 64, 64]  # interior: half-way blend of 128 and red
    assert np.array_equal(overlay_mask(image, np.zeros_like(mask)), to_rgb_uint8(image))


def test_overlay_mask_accepts_rgb_uint8_and_channel_first() -> None:
    rgb = np.zeros((6, 7, 3), np.uint8)
    chw = np.zeros((3, 6, 7), np.float32)
    mask = np.ones((6, 7), np.uint8)
    assert np.array_equal(overlay_mask(rgb, mask), overlay_mask(chw, mask))
    with pytest.raises(ValueError, match="does not match"):
        overlay_mask(rgb, np.ones((5, 7)))


def test_colorize_lesions_gives_each_lesion_its_own_colour() -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[1:3, 1:3] = 1  # lesion 1
    mask[3, 3] = 1  # touches lesion 1 diagonally: same lesion
    mask[8:11, 8:11] = 1  # lesion 2
    colored = colorize_lesions(mask)
    assert colored.shape == (12, 12, 3) and colored.dtype == np.uint8
    assert colored[0, 0].tolist() == [0, 0, 0]
    first, second = colored[1, 1], colored[9, 9]
    assert first.any() and second.any() and not np.array_equal(first, second)
    assert np.array_equal(colored[3, 3], first)
    assert len({tuple(c) for c in colored.reshape(-1, 3)}) == 3  # background + 2 lesions


def test_overlay_lesions_colours_each_lesion_over_any_image() -> None:
    image = np.full((12, 12), 0.2, dtype=np.float32)  # gray float image, like evaluate's
    mask = np.zeros((12, 12), np.uint8)
    mask[1:3, 1:3] = 1
    mask[3, 3] = 1  # diagonal neighbour: the same lesion (8-connectivity)
    mask[7:11, 7:11] = 1
    labels, count = label_lesions(mask)
    assert count == 2
    out = overlay_lesions(image, labels, count, alpha=0.5)
    colors = lesion_colors(count)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    assert out[0, 11].tolist() == [51, 51, 51]  # background: the image
    # lesions are numbered by size: the 4x4 one is lesion 1, the 5-pixel one lesion 2
    assert out[7, 7].tolist() == colors[0].tolist() and out[3, 3].tolist() == colors[1].tolist()
    assert np.array_equal(colorize_lesions(mask)[8, 8], colors[0])  # the same colours as colorize_lesions
    assert np.array_equal(overlay_lesions(image, labels, 0), to_rgb_uint8(image))
    rgb = to_rgb_uint8(image)
    before = rgb.copy()
    overlay_lesions(rgb, labels, count)
    assert np.array_equal(rgb, before)  # the input is not painted over
    with pytest.raises(ValueError, match="do not match"):
        overlay_lesions(image, labels[:5], count)


def test_overlay_grid_lays_out_cells_and_titles() -> None:
    cell = np.zeros((20, 30, 3), np.uint8)  # black cells on a white canvas
    grid = overlay_grid([[cell, cell], [cell, cell]], ["image", "truth"], cell_size=30, padding=2)
    array = np.asarray(grid)
    assert grid.mode == "RGB"
    assert grid.width == 2 * 30 + 3 * 2
    assert grid.height > 2 * 20
    header = array[: grid.height - 2 * (20 + 2)]
    assert (header < 128).any(), "the titles must be drawn in the header"
    with pytest.raises(ValueError, match="titles"):
        overlay_grid([[cell]], ["a", "b"])
