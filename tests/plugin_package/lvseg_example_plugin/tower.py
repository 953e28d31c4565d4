"""The family's own image tower: two strided convolutions, (B, C, S, S) -> (B, 2w, S/4, S/4)."""

from __future__ import annotations

import torch
from torch import nn


class TinyTower(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.stage = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stage(torch.relu(self.stem(images))))
