"""An independent stand-in for the official LViT network, used only by the tests.

It is written from /work/shared/reference/LVIT_ARCHITECTURE.md alone (not from lvseg.models): its
state_dict has the official keys and shapes, including the modules the official forward never calls
(created here too, and never called), and its forward follows the notes literally, ending with a
sigmoid. A checkpoint of this network stands for an official checkpoint in the conversion tests.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBatchNorm(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


def _n_convs(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvBatchNorm(in_channels, out_channels), ConvBatchNorm(out_channels, out_channels))


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(2)
        self.nConvs = _n_convs(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nConvs(self.maxpool(x))


class PixLevelModule(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu_avg = nn.ReLU()
        self.conv_max = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu_max = nn.ReLU()
        self.bottleneck = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
        self.conv_sig = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1), nn.Sigmoid())  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.mean(self.relu_avg(self.conv_avg(x)), dim=1).unsqueeze(1)
        m = torch.max(self.relu_max(self.conv_max(x)), dim=1).values.unsqueeze(1)
        stacked = torch.cat((a, m, a + m), dim=1)  # (B, 3, H, W)
        w = self.bottleneck(stacked.transpose(1, 3)).transpose(1, 3)  # per pixel 3 -> 6 -> 1
        return w * x


class UpblockAttention(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)
        self.pixModule = PixLevelModule(in_channels // 2)
        self.nConvs = _n_convs(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.nConvs(torch.cat([self.pixModule(skip), self.up(x)], dim=1))


class ConvTransBN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm1d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class Embeddings(nn.Module):
    def __init__(self, channels: int, patch: int, n_tokens: int) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(channels, channels, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_tokens, channels))
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(x).flatten(2).transpose(-1, -2)
        return self.dropout(x + self.position_embeddings)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.heads
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, hd)
        outs = []
        for h in range(self.heads):  # deliberately naive, head by head
            q, k, v = qkv[:, :, 0, h], qkv[:, :, 1, h], qkv[:, :, 2, h]  # (B, N, hd)
            attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * hd**-0.5, dim=-1)
            outs.append(torch.bmm(attn, v))
        return self.proj(torch.cat(outs, dim=-1))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.fc2(self.drop(self.act(self.fc1(x))))))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, dim: int, patch: int, n_tokens: int, text_len: int) -> None:
        super().__init__()
        self.dim = dim
        self.base = None  # set by the owner: the base width at which text is added
        self.embeddings = Embeddings(dim, patch, n_tokens)
        self.norm = nn.LayerNorm(dim)  # never called
        self.Encoder_blocks = nn.ModuleList([Block(dim)])
        self.head = nn.Linear(dim, 1)  # never called
        self.CTBN = ConvTransBN(dim, dim // 2)
        self.CTBN2 = ConvTransBN(dim * 2, dim)
        self.CTBN3 = ConvTransBN(text_len, n_tokens)

    def forward(self, x, skip, text=None, reconstruct=False):
        if not reconstruct:
            t = self.embeddings(x)
            if self.dim == self.base:
                t = t + self.CTBN3(text)
            t = self.Encoder_blocks[0](t)
            if self.dim == self.base:
                return t
            t = self.CTBN(t.transpose(1, 2)).transpose(1, 2)
            return torch.cat([t, skip], dim=2)
        t = self.Encoder_blocks[0](x)
        if self.dim == 8 * self.base:
            return t
        return t + self.CTBN2(skip.transpose(1, 2)).transpose(1, 2)


class Reconstruct(nn.Module):
    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)
        self.activation = nn.ReLU()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        g = round(n**0.5)
        x = x.permute(0, 2, 1).contiguous().view(b, c, g, g)
        x = nn.Upsample(scale_factor=self.scale)(x)
        return self.activation(self.norm(self.conv(x)))


class OfficialLayoutLViT(nn.Module):
    """Official LViT layout; forward returns sigmoid probabilities (B, n_classes, S, S)."""

    def __init__(self, n_channels=3, n_classes=1, img_size=224, base=64, text_len=10, text_dim=768):
        super().__init__()
        c = base
        n = (img_size // 16) ** 2
        self.inc = ConvBatchNorm(n_channels, c)
        for name, dim, patch in (
            ("downVit", c, 16),
            ("downVit1", 2 * c, 8),
            ("downVit2", 4 * c, 4),
            ("downVit3", 8 * c, 2),
            ("upVit", c, 16),
            ("upVit1", 2 * c, 8),
            ("upVit2", 4 * c, 4),
            ("upVit3", 8 * c, 2),
        ):
            vit = VisionTransformer(dim, patch, n, text_len)
            vit.base = c
            setattr(self, name, vit)
        self.down1 = DownBlock(c, 2 * c)
        self.down2 = DownBlock(2 * c, 4 * c)
        self.down3 = DownBlock(4 * c, 8 * c)
        self.down4 = DownBlock(8 * c, 8 * c)
        self.up4 = UpblockAttention(16 * c, 4 * c)
        self.up3 = UpblockAttention(8 * c, 2 * c)
        self.up2 = UpblockAttention(4 * c, c)
        self.up1 = UpblockAttention(2 * c, c)
        self.outc = nn.Conv2d(c, n_classes, kernel_size=1)
        self.last_activation = nn.Sigmoid()
        self.multi_activation = nn.Softmax(dim=1)  # never called
        self.reconstruct1 = Reconstruct(c, 16)
        self.reconstruct2 = Reconstruct(2 * c, 8)
        self.reconstruct3 = Reconstruct(4 * c, 4)
        self.reconstruct4 = Reconstruct(8 * c, 2)
        self.pix_module1 = PixLevelModule(c)  # never called
        self.pix_module2 = PixLevelModule(2 * c)
        self.pix_module3 = PixLevelModule(4 * c)
        self.pix_module4 = PixLevelModule(8 * c)
        self.text_module4 = nn.Conv1d(text_dim, 8 * c, kernel_size=3, padding=1)
        self.text_module3 = nn.Conv1d(8 * c, 4 * c, kernel_size=3, padding=1)
        self.text_module2 = nn.Conv1d(4 * c, 2 * c, kernel_size=3, padding=1)
        self.text_module1 = nn.Conv1d(2 * c, c, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        text4 = self.text_module4(text.transpose(1, 2)).transpose(1, 2)
        text3 = self.text_module3(text4.transpose(1, 2)).transpose(1, 2)
        text2 = self.text_module2(text3.transpose(1, 2)).transpose(1, 2)
        text1 = self.text_module1(text2.transpose(1, 2)).transpose(1, 2)  # (B, L, c)
        x1 = self.inc(x)
        y1 = self.downVit(x1, x1, text1)
        x2 = self.down1(x1)
        y2 = self.downVit1(x2, y1)
        x3 = self.down2(x2)
        y3 = self.downVit2(x3, y2)
        x4 = self.down3(x3)
        y4 = self.downVit3(x4, y3)
        x5 = self.down4(x4)
        y4 = self.upVit3(y4, y4, reconstruct=True)
        y3 = self.upVit2(y3, y4, reconstruct=True)
        y2 = self.upVit1(y2, y3, reconstruct=True)
        y1 = self.upVit(y1, y2, reconstruct=True)
        x1 = self.reconstruct1(y1) + x1
        x2 = self.reconstruct2(y2) + x2
        x3 = self.reconstruct3(y3) + x3
        x4 = self.reconstruct4(y4) + x4
        x = self.up4(x5, x4)
        x = self.up3(x, x3)
        x = self.up2(x, x2)
        x = self.up1(x, x1)
        return self.last_activation(self.outc(x))


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and buffer (BN running statistics included) random, moderate values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean") or tensor.ndim == 1 or "position_embeddings" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
                if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
                    tensor.add_(1.0)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_((torch.rand(tensor.shape, generator=gen) * 2 - 1) * (3.0 / fan_in) ** 0.5)
    return net
