"""The image-only U-Net baseline of the LViT paper."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.blocks import ConvBatchNorm, DownBlock, UpBlock
from lvseg.models.registry import register_model


@register_model("unet")
class UNet(nn.Module):
    """U-Net with four down and four up levels (widths b, 2b, 4b, 8b, 8b for base b).

    Encoder: ConvBatchNorm(in -> b), then DownBlocks b -> 2b -> 4b -> 8b -> 8b. Decoder: nearest
    upsample + concatenation with the skip + two ConvBatchNorm per level (16b -> 4b -> 2b -> b -> b),
    then a 1x1 convolution to ``n_classes`` logits.

    ``forward(images (B, in_channels, H, W), text_features=None) -> logits (B, n_classes, H, W)``;
    H and W must be divisible by 16 (the input size convention is ``img_size``, divisible by 32).
    Text is ignored: ``requires_text`` is False.
    """

    requires_text = False

    def __init__(
        self, *, in_channels: int = 3, n_classes: int = 1, img_size: int = 224, base_channels: int = 64
    ) -> None:
        super().__init__()
        if img_size <= 0 or img_size % 32:
            raise LvsegError(f"unet: img_size must be a positive multiple of 32, got {img_size}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "img_size": img_size,
            "base_channels": base_channels,
        }
        b = base_channels
        self.inc = ConvBatchNorm(in_channels, b)
        self.down = nn.ModuleList(
            [DownBlock(b, 2 * b), DownBlock(2 * b, 4 * b), DownBlock(4 * b, 8 * b), DownBlock(8 * b, 8 * b)]
        )
        # up[i] merges the level-i skip with the deeper map: 2b -> b, 4b -> b, 8b -> 2b, 16b -> 4b.
        self.up = nn.ModuleList(
            [UpBlock(2 * b, b), UpBlock(4 * b, b), UpBlock(8 * b, 2 * b), UpBlock(16 * b, 4 * b)]
        )
        self.head = nn.Conv2d(b, n_classes, kernel_size=1)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, in_channels, H, W) -> logits (B, n_classes, H, W); ``text_features`` is ignored."""
        expected_channels = self.config["in_channels"]
        if images.ndim != 4 or images.shape[1] != expected_channels:
            raise LvsegError(
                f"unet expects images of shape (B, {expected_channels}, H, W), got {tuple(images.shape)}"
            )
        if images.shape[-2] % 16 or images.shape[-1] % 16:
            raise LvsegError(f"unet expects H and W divisible by 16, got {tuple(images.shape[-2:])}")
        skips = [self.inc(images)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()
        for block in reversed(self.up):
            x = block(x, skips.pop())
        return self.head(x)
