"""The text-encoder interface shared by every model that reads reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class TextFeatures:
    """Encoded reports.

    tokens: (B, L, D) per-token features, padded or truncated to the encoder's ``max_length`` L.
    mask:   (B, L) bool, True where a real token is.
    pooled: (B, D) one vector per report (masked mean of the tokens, or the encoder's own pooling).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str) -> "TextFeatures":
        return TextFeatures(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


class TextEncoder(nn.Module):
    """Maps a list of report strings to :class:`TextFeatures`.

    Subclasses set ``feature_dim`` (D), ``max_length`` (L) and ``trainable``, and implement
    ``forward(texts)`` and ``config()``, a JSON-able dict that :func:`lvseg.text.text_encoder_from_config`
    turns back into an equal encoder (trainable weights travel in the state_dict).
    """

    feature_dim: int
    max_length: int
    trainable: bool

    def forward(self, texts: list[str]) -> TextFeatures:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError
