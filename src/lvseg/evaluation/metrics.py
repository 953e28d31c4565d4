"""Per-image segmentation metrics as the LViT paper reports them (MONAI implementations).

Conventions: a prediction is binarized at 0.5; Dice and IoU are computed per image and then averaged;
an image whose truth and prediction are both empty scores 1 (a correct "no lesion"). HD95 is in pixels and
undefined (NaN) when either mask is empty; means over HD95 skip undefined images and count them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "dice_original", "iou_original", "hd95")


def binarize(probability: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, 1, H, W) probabilities -> (B, 1, H, W) float {0, 1}."""
    return (probability > threshold).float()


def dice_iou_per_image(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of binary (B, 1, H, W) masks, one value per image: two (B,) tensors.

    An image whose truth and prediction are both empty scores 1 (a correct "no lesion").
    """
    dice = compute_dice(prediction, target, include_background=True, ignore_empty=False)
    iou = compute_iou(prediction, target, include_background=True, ignore_empty=False)
    return dice.view(-1), iou.view(-1)


def hd95_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """95th-percentile Hausdorff distance in pixels per image, (B,); NaN where either mask is empty."""
    with warnings.catch_warnings():
        # MONAI warns for every empty mask and about its own deprecated arguments; empty -> NaN is expected.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(prediction, target, include_background=True, percentile=95).view(-1)
    empty = (prediction.flatten(1).sum(1) == 0) | (target.flatten(1).sum(1) == 0)
    distance = distance.float().clone()
    distance[empty | ~torch.isfinite(distance)] = float("nan")
    return distance


def mask_metrics(prediction: np.ndarray, truth: np.ndarray, hd95: bool = True) -> dict[str, float]:
    """Dice, IoU (and HD95) of one binary prediction (H, W) against its truth (H, W) -> floats.

    Both arrays are binary (non-zero = foreground) and of the same shape.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    pred = torch.from_numpy(np.ascontiguousarray(prediction > 0)).float()[None, None]
    true = torch.from_numpy(np.ascontiguousarray(truth > 0)).float()[None, None]
    dice, iou = dice_iou_per_image(pred, true)
    values = {"dice": float(dice[0]), "iou": float(iou[0])}
    if hd95:
        values["hd95"] = float(hd95_per_image(pred, true)[0])
    return values


def summarize(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean and (population) standard deviation over the defined values, and the count of undefined (NaN) ones.

    Mean and std are NaN when no value is defined.
    """
    array = np.asarray(list(values), dtype=np.float64)
    defined = array[np.isfinite(array)]
    undefined = int(array.size - defined.size)
    if defined.size == 0:
        return math.nan, math.nan, undefined
    return float(defined.mean()), float(defined.std()), undefined
