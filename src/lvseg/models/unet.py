"""The image-only U-Net baseline of the LViT paper."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.base import ModelOutput, PretrainedFolders, SegmentationModel, check_img_size, check_positive
from lvseg.models.blocks import UpBlock
from lvseg.models.cnn_encoder import build_cnn_decoder, build_cnn_encoder, decode_cnn, encode_cnn
from lvseg.models.registry import register_model


@register_model("unet")
class UNet(SegmentationModel):
    """U-Net with four down and four up levels (widths b, 2b, 4b, 8b, 8b for base b).

    Encoder: ConvBatchNorm(in -> b), then DownBlocks b -> 2b -> 4b -> 8b -> 8b. Decoder: nearest
    upsample + concatenation with the skip + two ConvBatchNorm per level (16b -> 4b -> 2b -> b -> b),
    then a 1x1 convolution to ``n_classes`` logit channels (default 1).

    ``forward(images (B, in_channels, H, W), text_input=None) -> logits (B, n_classes, H, W)`` (a
    :class:`ModelOutput` without auxiliary outputs in training mode); H and W must be divisible by 16
    (the input size convention is ``img_size``, divisible by 32). Image-only: no text encoder.

    ``multi_channel_classes``: the image-only baseline's fair counterpart of a text model on a multi-class set
    (which is asked for one class per prompt) is one output channel per class: trained on such a set it is
    built with ``n_classes`` = the number of classes, channel k the k-th class of the set's class table.
    """

    requires_text = False
    multi_channel_classes = True

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"base_channels": 8}

    def __init__(
        self, *, in_channels: int = 3, img_size: int = 224, base_channels: int = 64, n_classes: int = 1
    ) -> None:
        super().__init__()
        check_img_size("unet", img_size)
        check_positive("unet", in_channels=in_channels, base_channels=base_channels, n_classes=n_classes)
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.inc, self.down = build_cnn_encoder(in_channels, base_channels)
        self.up, self.head = build_cnn_decoder(base_channels, UpBlock)
        if n_classes != 1:  # the shared decoder ends in one logit; K classes need K (same key: head.*)
            self.head = nn.Conv2d(base_channels, n_classes, kernel_size=1)

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        """images (B, in_channels, H, W) -> logits (B, n_classes, H, W); ``text_input`` is ignored."""
        expected_channels = self.in_channels
        if images.ndim != 4 or images.shape[1] != expected_channels:
            raise LvsegError(f"unet expects images of shape (B, {expected_channels}, H, W), got {tuple(images.shape)}")
        if images.shape[-2] % 16 or images.shape[-1] % 16:
            raise LvsegError(f"unet expects H and W divisible by 16, got {tuple(images.shape[-2:])}")
        skips, bottom = encode_cnn(self.inc, self.down, images)
        x = decode_cnn(self.up, bottom, skips)
        logits = self.head(x)
        return ModelOutput(logits, {}) if self.training else logits
