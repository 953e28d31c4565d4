"""Segmentation losses used by the LViT paper's code, built on MONAI where MONAI has the piece."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, MaskedDiceLoss
from torch import nn


def split_weight(weight: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A loss ``weight`` as ``(per-image (B,) or None, per-pixel (B, 1, H, W) or None)``.

    Losses take either per-image weights (B,) or per-pixel weights (B, 1, H, W) in [0, 1] (e.g. the
    confidence mask of pseudo-labels: 0 where a pixel is ignored). A per-pixel weight also gives each image
    the weight 1 when it keeps any pixel and 0 when it keeps none.
    """
    if weight is None or weight.dim() == 1:
        return weight, None
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"a loss weight must be (B,) or (B, 1, H, W), got shape {tuple(weight.shape)}")
    return (weight.flatten(1).amax(1) > 0).to(weight.dtype), weight


def image_weight(weight: torch.Tensor | None) -> torch.Tensor | None:
    """The per-image part (B,) of a loss weight (:func:`split_weight`), for terms computed per image."""
    return split_weight(weight)[0]


def class_balanced_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy whose positive and negative pixels each count for half.

    logits, target: (B, 1, H, W); target in [0, 1] (soft targets such as pseudo-labels are allowed:
    a pixel counts as positive where target >= 0.5). ``weight``: optional (B,) per-image or (B, 1, H, W)
    per-pixel weights (:func:`split_weight`).
    Returns a scalar: 0.5 * mean loss over positive pixels + 0.5 * mean loss over negative pixels,
    so a small lesion is not drowned by the background. A batch without positive (or negative)
    pixels uses the other half alone.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pixel_weight = torch.ones_like(per_pixel)
    if weight is not None:
        pixel_weight = pixel_weight * (
            weight if weight.dim() == per_pixel.dim() else weight.view(-1, *([1] * (per_pixel.dim() - 1)))
        )
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


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, squared: bool = True
) -> torch.Tensor:
    """Soft Dice loss on sigmoid outputs, per image, averaged over the batch (optionally weighted).

    Per image 1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps) (MONAI ``DiceLoss`` with squared
    predictions, the LViT code's); ``squared=False``: sum(p) + sum(t) in the denominator (MONAI's default,
    the medvlsm study's). logits, target: (B, 1, H, W); ``weight``: optional (B,) per-image weights, or
    (B, 1, H, W) per-pixel ones: then the sums run over the weighted pixels (MONAI ``MaskedDiceLoss``) and
    images without any weighted pixel do not count. -> scalar.
    """
    per_image_weight, pixel_weight = split_weight(weight)
    if pixel_weight is None:
        dice = (_DICE if squared else _PLAIN_DICE)(logits, target)
    else:
        dice = (_MASKED_DICE if squared else _MASKED_PLAIN_DICE)(logits, target, pixel_weight)
    return _weighted_mean(dice.flatten(1).mean(1), per_image_weight)


def bce_with_logits(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits, mean over the pixels of each image, then over the batch (optionally
    weighted by ``weight`` (B,), or per pixel by (B, 1, H, W): a weighted mean over each image's pixels).
    logits, target: (B, 1, H, W), target in [0, 1]. -> scalar."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_image_weight, pixel_weight = split_weight(weight)
    if pixel_weight is None:
        return _weighted_mean(per_pixel.flatten(1).mean(1), per_image_weight)
    per_image = (per_pixel * pixel_weight).flatten(1).sum(1) / pixel_weight.flatten(1).sum(1).clamp_min(1e-8)
    return _weighted_mean(per_image, per_image_weight)


def per_channel_mean(
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``loss`` (a binary loss on (B, 1, H, W)) of each of the K channels of ``logits`` and ``target``
    (B, K, H, W), averaged over the channels -> scalar; ``weight`` (B,) or (B, 1, H, W) applies to every channel.
    One channel: ``loss`` itself."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if logits.shape[1] == 1:
        return loss(logits, target, weight)
    terms = [loss(logits[:, k : k + 1], target[:, k : k + 1], weight) for k in range(logits.shape[1])]
    return torch.stack(terms).mean()


def _weighted_mean(per_image: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_image.mean()
    return (per_image * weight).sum() / weight.sum().clamp_min(1e-8)


_DICE = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")
_PLAIN_DICE = DiceLoss(sigmoid=True, reduction="none")
_MASKED_DICE = MaskedDiceLoss(sigmoid=True, squared_pred=True, reduction="none")
_MASKED_PLAIN_DICE = MaskedDiceLoss(sigmoid=True, reduction="none")


class DiceBCELoss(nn.Module):
    """0.5 x soft Dice + 0.5 x class-balanced BCE on sigmoid outputs (the LViT paper's loss).

    forward(logits (B, 1, H, W), target (B, 1, H, W), weight (B,) | None) -> scalar. Models declare the
    same two terms by name (:meth:`lvseg.models.base.SegmentationModel.compute_losses`).
    """

    def __init__(self, dice_weight: float = 0.5, bce_weight: float = 0.5) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.dice_weight * soft_dice_loss(
            logits, target, weight
        ) + self.bce_weight * class_balanced_bce_with_logits(logits, target, weight)
