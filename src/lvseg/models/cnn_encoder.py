"""The U-Net CNN that LViT, C2FVL and RecLMIS share (the official LViT code's ``inc``, ``down1..4``, ``up1..4``,
``outc``; C2FVL and RecLMIS reuse it from there).

Encoder: ``inc`` = ConvBatchNorm(in_channels -> b), then ``down`` = four DownBlocks of widths
b -> 2b -> 4b -> 8b -> 8b. Decoder: ``up`` = four up blocks (16b -> 4b, 8b -> 2b, 4b -> b, 2b -> b, the skip gated
by whatever the model's up-block class does) and ``head`` = Conv2d 1x1 (b -> 1 logit).

The builders return the modules; a model assigns them to its own attributes ``inc``, ``down``, ``up``, ``head`` so
that its state-dict keys stay ``inc.*``, ``down.{i}.*``, ``up.{i}.*``, ``head.*`` (what the importers and saved
checkpoints name). Level i (0..3) has width w_i = b * 2**i at a resolution S / 2**i; the bottleneck has 8b channels
at S / 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from lvseg.models.blocks import ConvBatchNorm, DownBlock, UpBlock

__all__ = [
    "DOWNSAMPLING",
    "N_LEVELS",
    "CNNDecoder",
    "CNNEncoder",
    "build_cnn_decoder",
    "build_cnn_encoder",
    "decode_cnn",
    "encode_cnn",
    "level_widths",
]

#: Number of skip levels of the U-Net; level i has width base * 2**i.
N_LEVELS = 4
#: Stride of the bottleneck: a map of S x S pixels is S / 16 x S / 16 there.
DOWNSAMPLING = 2**N_LEVELS


class CNNEncoder(NamedTuple):
    """``inc`` (B, in_channels, S, S) -> (B, b, S, S) and ``down`` (four DownBlocks, level i -> i + 1)."""

    inc: ConvBatchNorm
    down: nn.ModuleList


class CNNDecoder(NamedTuple):
    """``up`` (up.i merges the level-i skip with the deeper map) and ``head`` (Conv2d 1x1, b -> 1)."""

    up: nn.ModuleList
    head: nn.Conv2d


def level_widths(base: int) -> list[int]:
    """Channel widths of the skip levels: [b, 2b, 4b, 8b] for base b."""
    return [base * 2**i for i in range(N_LEVELS)]


def build_cnn_encoder(in_channels: int, base: int) -> CNNEncoder:
    """inc = ConvBatchNorm(in_channels -> b); down = DownBlock b -> 2b, 2b -> 4b, 4b -> 8b, 8b -> 8b.

    Modules are created in that order (so a seeded build gives the same weights as the official layout).
    """
    widths = level_widths(base)
    inc = ConvBatchNorm(in_channels, base)
    down = nn.ModuleList([DownBlock(w, 2 * w) for w in widths[:-1]] + [DownBlock(widths[-1], widths[-1])])
    return CNNEncoder(inc, down)


def build_cnn_decoder(base: int, up_block: Callable[[int, int], UpBlock]) -> CNNDecoder:
    """up.i = ``up_block(2 w_i, max(w_i / 2, b))`` (2b -> b, 4b -> b, 8b -> 2b, 16b -> 4b); head = Conv2d(b, 1, 1).

    ``up_block(in_channels, out_channels)`` is :class:`~lvseg.models.blocks.UpBlock` or a subclass that gates the
    skip (LViT's and RecLMIS's PLAM, C2FVL's VLAB); ``in_channels`` counts skip and upsampled map together.
    """
    up = nn.ModuleList([up_block(2 * w, max(w // 2, base)) for w in level_widths(base)])
    head = nn.Conv2d(base, 1, kernel_size=1)
    return CNNDecoder(up, head)


def encode_cnn(inc: nn.Module, down: nn.ModuleList, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """images (B, C, S, S) -> (skips, bottom).

    skips[i] (B, w_i, S / 2**i, S / 2**i) for i = 0..3 (inc's output, then down.0..2's); bottom (B, 8b, S/16, S/16)
    is down.3's output.
    """
    skips = [inc(images)]
    for block in down[:-1]:
        skips.append(block(skips[-1]))
    return skips, down[-1](skips[-1])


def decode_cnn(up: nn.ModuleList, bottom: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
    """bottom (B, 8b, S/16, S/16) and skips[i] (B, w_i, S / 2**i, S / 2**i) -> features (B, b, S, S).

    Runs up.3 (bottom with skips[3]) first, then up.2 .. up.0, each on the previous output and its skip.
    """
    x = bottom
    for i in range(len(up) - 1, -1, -1):
        x = up[i](x, skips[i])
    return x
