"""Segmentation losses used by the LViT paper's code, built on MONAI where MONAI has the piece."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


def class_balanced_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy whose positive and negative pixels each count for half.

    logits, target: (B, 1, H, W); target in [0, 1] (soft targets such as pseudo-labels are allowed:
    a pixel counts as positive where target >= 0.5). ``weight``: optional (B,) per-image weights.
    Returns a scalar: 0.5 * mean loss over positive pixels + 0.5 * mean loss over negative pixels,
    so a small lesion is not drowned by the background. A batch without positive (or negative)
    pixels uses the other half alone.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pixel_weight = torch.ones_like(per_pixel)
    if weight is not None:
        pixel_weight = pixel_weight * weight.view(-1, *([1] * (per_pixel.dim() - 1)))
    positive = target >= 0.5
    halves = []
    for selected in (positive, ~positive):
        selected_weight = pixel_weight * selected
        total = selected_weight.sum()
        if total > 0:
            halves.append((per_pixel * selected_weight).sum() / total)
    if not halves:  # every image weighted 0
        return per_pixel.sum() * 0.0
    return torch.stack(halves).mean()


class DiceBCELoss(nn.Module):
    """0.5 x soft Dice + 0.5 x class-balanced BCE on sigmoid outputs (the LViT paper's loss).

    The Dice term is computed per image as 1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)
    (MONAI ``DiceLoss`` with squared predictions) and averaged over the batch.

    forward(logits (B, 1, H, W), target (B, 1, H, W), weight (B,) | None) -> scalar.
    """

    def __init__(self, dice_weight: float = 0.5, bce_weight: float = 0.5) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        dice_per_image = self.dice(logits, target).flatten(1).mean(1)
        if weight is None:
            dice = dice_per_image.mean()
        else:
            dice = (dice_per_image * weight).sum() / weight.sum().clamp_min(1e-8)
        bce = class_balanced_bce_with_logits(logits, target, weight)
        return self.dice_weight * dice + self.bce_weight * bce
