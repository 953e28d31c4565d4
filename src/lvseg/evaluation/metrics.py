"""Per-image segmentation metrics as the LViT paper reports them (MONAI implementations)."""

from __future__ import annotations

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou


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
    return compute_hausdorff_distance(prediction, target, include_background=True, percentile=95).view(-1)
