"""Building blocks shared by the segmentation networks (U-Net, LViT and later C2FVL, RecLMIS, CRIS).

Every block takes its sizes as constructor arguments; none assumes a 224x224 image or a fixed
number of text tokens. Shapes in docstrings use B = batch, C = channels, H x W = spatial size,
N = number of tokens, D = token feature size, L = length of a 1-D sequence.

The blocks follow the official LViT implementation's arithmetic (nearest-neighbour upsampling,
exact erf GELU, post-activation Conv-BN-ReLU), so that its trained weights can be loaded into
networks built from them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvBatchNorm",
    "ConvTransBN",
    "DownBlock",
    "GuardedBatchNorm1d",
    "GuardedBatchNorm2d",
    "PatchEmbedding",
    "PixLevelModule",
    "Reconstruct",
    "SelfAttention",
    "TransformerBlock",
    "TransformerMLP",
    "UpBlock",
    "UpBlockAttention",
    "tokens_to_channels_first",
]


def tokens_to_channels_first(tokens: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Apply a 1-D channel-first ``module`` along the token axis of ``tokens``.

    tokens (B, N, D) -> module sees (B, D, N) (features as channels) -> returns (B, N, D').
    """
    return module(tokens.transpose(1, 2)).transpose(1, 2)


class ConvBatchNorm(nn.Module):
    """Conv2d 3x3 (padding 1, with bias) -> BatchNorm2d -> ReLU.

    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class DownBlock(nn.Module):
    """MaxPool2d(2) -> ConvBatchNorm(in, out) -> ConvBatchNorm(out, out).

    (B, in_channels, H, W) -> (B, out_channels, H/2, W/2).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.convs = nn.Sequential(ConvBatchNorm(in_channels, out_channels), ConvBatchNorm(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.pool(x))


class PixLevelModule(nn.Module):
    """Pixel-level attention (PLAM): re-weights every pixel of a feature map by a learned scalar.

    a = mean over channels of ReLU(conv_avg(x)), m = max over channels of ReLU(conv_max(x)) (both 1x1
    convolutions without bias); the per-pixel vector [a, m, a + m] goes through
    Linear(3, 6) -> ReLU -> Linear(6, 1) to give a map w; returns w * x.

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, hidden: int = 6) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.conv_max = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu = nn.ReLU()
        self.bottleneck = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.relu(self.conv_avg(x)).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        peak = self.relu(self.conv_max(x)).amax(dim=1, keepdim=True)  # (B, 1, H, W)
        stacked = torch.cat([avg, peak, avg + peak], dim=1)  # (B, 3, H, W)
        weight = self.bottleneck(stacked.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 1, H, W)
        return weight * x


class UpBlock(nn.Module):
    """Nearest Upsample x2 of the deeper map, concatenate [skip, upsampled], two ConvBatchNorm.

    x (B, in_channels/2, h, w) and skip (B, in_channels/2, 2h, 2w) -> (B, out_channels, 2h, 2w).
    ``in_channels`` is the channel count after concatenation (skip and upsampled map have half each).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.convs = nn.Sequential(ConvBatchNorm(in_channels, out_channels), ConvBatchNorm(out_channels, out_channels))

    def gate_skip(self, skip: torch.Tensor) -> torch.Tensor:
        """Hook for subclasses that re-weight the skip connection; identity here."""
        return skip

    def merge(self, x: torch.Tensor, gated_skip: torch.Tensor) -> torch.Tensor:
        """The block's output from the deeper map x (B, in/2, h, w) and an already gated skip (B, in/2, 2h, 2w)."""
        return self.convs(torch.cat([gated_skip, self.upsample(x)], dim=1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.merge(x, self.gate_skip(skip))


class UpBlockAttention(UpBlock):
    """:class:`UpBlock` whose skip connection first goes through :class:`PixLevelModule` (in_channels/2).

    x (B, in_channels/2, h, w) and skip (B, in_channels/2, 2h, 2w) -> (B, out_channels, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.attention = PixLevelModule(in_channels // 2)

    def gate_skip(self, skip: torch.Tensor) -> torch.Tensor:
        return self.attention(skip)


class ConvTransBN(nn.Module):
    """Conv1d (kernel 3, padding 1) -> BatchNorm1d -> ReLU over a channel-first sequence.

    (B, in_channels, L) -> (B, out_channels, L). To run it along tokens with the features as
    channels, use :func:`tokens_to_channels_first` ((B, N, D) -> (B, N, D')).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm1d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class PatchEmbedding(nn.Module):
    """Non-overlapping conv patches + learned position embedding (zero-initialised) + dropout.

    (B, in_channels, H, W) -> (B, N, embed_dim) with N = (H / patch_size) * (W / patch_size), which must
    equal ``n_patches``.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, n_patches: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches, embed_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, embed_dim)
        return self.dropout(tokens + self.pos_embed)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The qkv output (B, N, 3 * dim) is read as (B, N, 3, heads, dim / heads): q, k, v are its first,
    second and third thirds and each head a consecutive slice. Scores are scaled by (dim/heads)^-0.5.
    (B, N, dim) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n_tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, dim/heads)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, N, N)
        out = scores.softmax(dim=-1) @ v  # (B, heads, N, dim/heads)
        return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))


class TransformerMLP(nn.Module):
    """Linear(dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim) -> GELU -> Dropout.

    The second GELU is part of the LViT design. Linear weights are xavier-uniform, biases N(0, 1e-6).
    (B, N, dim) -> (B, N, dim).
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation = nn.GELU()  # exact erf form
        self.dropout = nn.Dropout(dropout)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.activation(self.fc1(x)))
        return self.dropout(self.activation(self.fc2(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); LayerNorm eps 1e-5.

    (B, N, dim) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = TransformerMLP(dim, dim * mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Reconstruct(nn.Module):
    """Tokens back to a feature map: reshape to a square grid -> nearest Upsample x scale ->
    Conv2d 1x1 -> BatchNorm2d -> ReLU.

    (B, N, in_channels) with N = g * g -> (B, out_channels, g * scale, g * scale).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=scale, mode="nearest")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, channels = tokens.shape
        grid = math.isqrt(n_tokens)
        if grid * grid != n_tokens:
            raise ValueError(f"Reconstruct expects a square number of tokens, got {n_tokens}")
        x = tokens.transpose(1, 2).reshape(batch, channels, grid, grid)
        return self.activation(self.norm(self.conv(self.upsample(x))))


class _GuardedBatchNorm:
    """Mixin: in training mode, an input with one value per channel (a batch of one for BatchNorm1d, one 1x1
    image for BatchNorm2d), for which batch statistics do not exist and PyTorch raises, is normalised with the
    running statistics, which it leaves unchanged."""

    def _guarded(self, x: torch.Tensor) -> torch.Tensor | None:
        module = self  # the BatchNorm this mixes into
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        if module.training and x.numel() // max(x.shape[1], 1) <= 1:
            return F.batch_norm(
                x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, module.eps
            )
        return None


class GuardedBatchNorm1d(_GuardedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that takes a training batch of one (normalised with the running statistics).

    (B, C) or (B, C, L) -> same shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        guarded = self._guarded(x)
        return guarded if guarded is not None else super().forward(x)


class GuardedBatchNorm2d(_GuardedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that takes a training map of one value per channel (one image, 1x1).

    (B, C, H, W) -> same shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        guarded = self._guarded(x)
        return guarded if guarded is not None else super().forward(x)
