"""An independent stand-in for the official CRIS network (DerrickWang005/CRIS.pytorch ``model/``, as the medvlsm
study copied it), used only by the tests.

Written from the published facts about the official code (not from lvseg.models): its ``state_dict`` has the
official key names (``backbone.visual.*`` CLIP ModifiedResNet with CRIS's attention pool, ``backbone.*`` OpenAI
CLIP text transformer with ``logit_scale``, ``neck.*``, ``decoder.*``, ``proj.*``), and its forward follows them
literally: sequence-first tensors, ``F.multi_head_attention_forward`` with separate q/k/v weights in the attention
pool, OpenAI's text encoding (causal ``attn_mask`` built for the given length, ``ln_final``, the argmax-id state
``@ text_projection``), ``pad_mask = ids == 0``, positional encodings filled by slice assignment, a grouped
convolution (groups = batch) for the per-sample kernel, and the medvlsm study's bicubic upsampling to the input
size. :func:`save_layouts` writes a model in the three published checkpoint layouts, the Lightning one with the
pickled Python objects a real medvlsm ``.ckpt`` holds besides its tensors (:func:`save_lightning_checkpoint`).
"""

from __future__ import annotations

import functools
import math
import sys
import types
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------ CLIP (OpenAI layout)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * 4, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return torch.relu(out + identity)


class AttentionPool2d(nn.Module):
    """CRIS's modified pool: every position attends to every position; resized table; ``connect`` shortcut."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.spacial_dim = spacial_dim
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads
        self.connect = nn.Sequential(
            nn.Conv2d(embed_dim, output_dim, 1, stride=1, bias=False), nn.BatchNorm2d(output_dim)
        )

    def resize_pos_embed(self, pos_embed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        side = self.spacial_dim
        weight = pos_embed[:, -side * side :]
        weight = weight.reshape(1, side, side, pos_embed.shape[2]).permute(0, 3, 1, 2)
        weight = F.interpolate(weight, size=shape, align_corners=False, mode="bicubic")
        return torch.flatten(weight, 2)  # (1, C, HW)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.size()
        res = self.connect(x)
        x = x.reshape(batch, channels, -1)
        x = x + self.resize_pos_embed(self.positional_embedding.unsqueeze(0), (height, width))
        x = x.permute(2, 0, 1)  # (HW, B, C)
        x, _ = F.multi_head_attention_forward(
            query=x,
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        x = x.permute(1, 2, 0).reshape(batch, -1, height, width)
        return torch.relu(x + res)


class ModifiedResNet(nn.Module):
    def __init__(self, layers: list[int], output_dim: int, heads: int, spacial_dim: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(spacial_dim, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * 4
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = torch.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer1(x)
        x2 = self.layer2(x)
        x3 = self.layer3(x2)
        x4 = self.attnpool(self.layer4(x3))
        return x2, x3, x4


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class CLIP(nn.Module):
    """CLIP RN-style: ``visual`` + the text transformer's parameters at the top level (OpenAI's names)."""

    def __init__(
        self,
        embed_dim: int,
        layers: list[int],
        width: int,
        spacial_dim: int,
        context_length: int,
        vocab_size: int,
        text_width: int,
        text_heads: int,
        text_layers: int,
    ) -> None:
        super().__init__()
        self.visual = ModifiedResNet(layers, embed_dim, width * 32 // 64, spacial_dim, width)
        self.transformer = Transformer(text_width, text_layers, text_heads)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, text_width) * 0.01)
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) * text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = text.shape[1]
        mask = torch.empty(length, length).fill_(float("-inf")).triu_(1)  # built for this length (not word_len)
        x = self.token_embedding(text) + self.positional_embedding[:length]
        x = x.permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x.permute(1, 0, 2))
        state = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
        return x, state


# -------------------------------------------------------------------------------------------- CRIS head


def conv_layer(in_dim: int, out_dim: int, kernel_size: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, 1, padding, bias=False), nn.BatchNorm2d(out_dim), nn.ReLU(True)
    )


def linear_layer(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(True))


class CoordConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv_layer(in_channels + 2, out_channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.size()
        x_range = torch.linspace(-1, 1, w)
        y_range = torch.linspace(-1, 1, h)
        y, xx = torch.meshgrid(y_range, x_range, indexing="ij")
        coord = torch.cat([xx.expand([b, 1, -1, -1]), y.expand([b, 1, -1, -1])], 1)
        return self.conv1(torch.cat([x, coord], 1))


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: list[int], state_dim: int) -> None:
        super().__init__()
        self.txt_proj = linear_layer(state_dim, out_channels[2])
        self.f1_v_proj = conv_layer(in_channels[2], out_channels[2], 1, 0)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(out_channels[2]), nn.ReLU(True))
        self.f2_v_proj = conv_layer(in_channels[1], out_channels[1], 3, 1)
        self.f2_cat = conv_layer(out_channels[2] + out_channels[1], out_channels[1], 1, 0)
        self.f3_v_proj = conv_layer(in_channels[0], out_channels[0], 3, 1)
        self.f3_cat = conv_layer(out_channels[0] + out_channels[1], out_channels[1], 1, 0)
        self.f4_proj5 = conv_layer(out_channels[2], out_channels[1], 3, 1)
        self.f4_proj4 = conv_layer(out_channels[1], out_channels[1], 3, 1)
        self.f4_proj3 = conv_layer(out_channels[1], out_channels[1], 3, 1)
        self.aggr = conv_layer(3 * out_channels[1], out_channels[1], 1, 0)
        self.coordconv = nn.Sequential(
            CoordConv(out_channels[1], out_channels[1]), conv_layer(out_channels[1], out_channels[1], 3, 1)
        )

    def forward(self, imgs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        v3, v4, v5 = imgs
        state = self.txt_proj(state).unsqueeze(-1).unsqueeze(-1)
        f5 = self.norm_layer(self.f1_v_proj(v5) * state)
        f4 = self.f2_v_proj(v4)
        f5_ = F.interpolate(f5, scale_factor=2, mode="bilinear")
        f4 = self.f2_cat(torch.cat([f4, f5_], dim=1))
        f3 = F.avg_pool2d(self.f3_v_proj(v3), 2, 2)
        f3 = self.f3_cat(torch.cat([f3, f4], dim=1))
        fq5 = F.interpolate(self.f4_proj5(f5), scale_factor=2, mode="bilinear")
        fq = torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), fq5], dim=1)
        return self.coordconv(self.aggr(fq))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, kdim=d_model, vdim=d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, dim_feedforward),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.LayerNorm(dim_feedforward),
            nn.Linear(dim_feedforward, d_model),
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, vis: torch.Tensor, txt: torch.Tensor, vis_pos: torch.Tensor, txt_pos: torch.Tensor, pad_mask: torch.Tensor
    ) -> torch.Tensor:
        vis2 = self.norm1(vis)
        q = k = vis2 + vis_pos
        vis2 = self.self_attn(q, k, value=vis2)[0]
        vis = vis + self.dropout1(self.self_attn_norm(vis2))
        vis2 = self.norm2(vis)
        vis2 = self.multihead_attn(query=vis2 + vis_pos, key=txt + txt_pos, value=txt, key_padding_mask=pad_mask)[0]
        vis = vis + self.dropout2(self.cross_attn_norm(vis2))
        return vis + self.dropout3(self.ffn(self.norm3(vis)))


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerDecoderLayer(d_model, nhead, dim_ffn, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(d_model)

    @staticmethod
    def pos1d(d_model: int, length: int) -> torch.Tensor:
        pe = torch.zeros(length, d_model)
        position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        return pe.unsqueeze(1)  # (L, 1, d)

    @staticmethod
    def pos2d(d_model: int, height: int, width: int) -> torch.Tensor:
        pe = torch.zeros(d_model, height, width)
        half = d_model // 2
        div_term = torch.exp(torch.arange(0.0, half, 2) * -(math.log(10000.0) / half))
        pos_w = torch.arange(0.0, width).unsqueeze(1)
        pos_h = torch.arange(0.0, height).unsqueeze(1)
        pe[0:half:2] = torch.sin(pos_w * div_term).transpose(0, 1).unsqueeze(1).repeat(1, height, 1)
        pe[1:half:2] = torch.cos(pos_w * div_term).transpose(0, 1).unsqueeze(1).repeat(1, height, 1)
        pe[half::2] = torch.sin(pos_h * div_term).transpose(0, 1).unsqueeze(2).repeat(1, 1, width)
        pe[half + 1 :: 2] = torch.cos(pos_h * div_term).transpose(0, 1).unsqueeze(2).repeat(1, 1, width)
        return pe.reshape(-1, 1, height * width).permute(2, 1, 0)  # (HW, 1, d)

    def forward(self, vis: torch.Tensor, txt: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = vis.size()
        vis_pos = self.pos2d(c, h, w)
        txt_pos = self.pos1d(txt.shape[-1], txt.shape[1])
        vis = vis.reshape(b, c, -1).permute(2, 0, 1)
        txt = txt.permute(1, 0, 2)
        output = vis
        for layer in self.layers:
            output = layer(output, txt, vis_pos, txt_pos, pad_mask)
        return self.norm(output).permute(1, 2, 0)  # (B, d, HW)


class Projector(nn.Module):
    def __init__(self, word_dim: int, in_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_dim, self.kernel_size = in_dim, kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"),
            conv_layer(in_dim * 2, in_dim * 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            conv_layer(in_dim * 2, in_dim, 3, padding=1),
            nn.Conv2d(in_dim, in_dim, 1),
        )
        self.txt = nn.Linear(word_dim, in_dim * kernel_size * kernel_size + 1)

    def forward(self, x: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
        x = self.vis(x)
        b, c, h, w = x.size()
        x = x.reshape(1, b * c, h, w)
        word = self.txt(word)
        weight, bias = word[:, :-1], word[:, -1]
        weight = weight.reshape(b, c, self.kernel_size, self.kernel_size)
        out = F.conv2d(x, weight, padding=self.kernel_size // 2, groups=b, bias=bias)
        return out.transpose(0, 1)  # (B, 1, H, W)


class OfficialCRIS(nn.Module):
    """The official network; ``forward(img normalised (B, 3, S, S), ids (B, L))`` -> logits (B, 1, S, S) as the
    medvlsm study returns them (bicubic, align_corners=True, from stride 4)."""

    def __init__(
        self,
        width: int = 8,
        layers: tuple[int, ...] = (1, 2, 1, 1),
        embed_dim: int = 24,
        spacial_dim: int = 2,
        context_length: int = 24,
        vocab_size: int = 118,
        text_width: int = 16,
        text_heads: int = 2,
        text_layers: int = 2,
        fpn_out: tuple[int, int, int] = (8, 16, 24),
        num_layers: int = 2,
        num_head: int = 2,
        dim_ffn: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = CLIP(
            embed_dim, list(layers), width, spacial_dim, context_length, vocab_size, text_width, text_heads, text_layers
        )
        fpn_in = [width * 8, width * 16, embed_dim]
        self.neck = FPN(fpn_in, list(fpn_out), embed_dim)
        self.decoder = TransformerDecoder(num_layers, fpn_out[1], num_head, dim_ffn, 0.1)
        self.proj = Projector(embed_dim, fpn_out[1] // 2, 3)

    def forward(self, img: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
        pad_mask = torch.zeros_like(word).masked_fill_(word == 0, 1).bool()
        vis = self.backbone.visual(img)
        words, state = self.backbone.encode_text(word)
        fq = self.neck(vis, state)
        b, c, h, w = fq.size()
        fq = self.decoder(fq, words, pad_mask).reshape(b, c, h, w)
        pred = self.proj(fq, state)
        return F.interpolate(pred, size=img.shape[-2:], mode="bicubic", align_corners=True)


def randomise_statistics(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm and LayerNorm non-trivial affine parameters and running statistics (so a mapping
    error in them shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                size = module.weight.shape
                module.weight.copy_(1 + 0.2 * torch.randn(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(1 + 0.3 * torch.rand(size, generator=generator))
                module.num_batches_tracked.fill_(7)


def official_ids(tokenizer: object, texts: list[str], word_len: int, pad: str = "zero") -> torch.Tensor:
    """The official tokenisation: [SOT] + BPE + [EOT], cut to ``word_len`` with the last id set to EOT, padded
    with 0 (``pad="zero"``, official) or with EOT (``pad="end"``, the medvlsm study's processor)."""
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id  # type: ignore[attr-defined]
    result = torch.zeros(len(texts), word_len, dtype=torch.long)
    if pad == "end":
        result.fill_(eot)
    for row, text in enumerate(texts):
        tokens = [sot, *tokenizer(text, add_special_tokens=False)["input_ids"], eot]  # type: ignore[operator]
        if len(tokens) > word_len:
            tokens = tokens[:word_len]
            tokens[-1] = eot
        result[row, : len(tokens)] = torch.tensor(tokens)
    return result


def save_layouts(model: OfficialCRIS, folder: Path) -> dict[str, Path]:
    """The model's weights in the three published layouts: {"official": DDP .pth, "bare": cris.pt,
    "lightning": .ckpt}."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    paths = {
        "official": folder / "cris_best.pth",
        "bare": folder / "cris.pt",
        "lightning": folder / "epoch_010.ckpt",
    }
    torch.save(
        {
            "epoch": 50,
            "cur_iou": 0.6,
            "best_iou": 0.7,
            "prec": {"Pr@50": 0.8},
            "state_dict": {f"module.{key}": value for key, value in state.items()},
        },
        paths["official"],
    )
    torch.save(dict(state), paths["bare"])
    save_lightning_checkpoint({f"net.{key}": value for key, value in state.items()}, paths["lightning"])
    return paths


#: The module of the study's loss class when the checkpoint is written; it does not exist when it is read.
STUDY_MODULE = "medvlsm_losses_not_installed"


def save_lightning_checkpoint(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """A Lightning ``.ckpt`` as medvlsm's BaseModule writes one: besides ``state_dict``, ``hyper_parameters``
    (``save_hyperparameters(ignore=["net"])``) pickle its loss module, an object of a class of the study's code,
    and the optimiser and scheduler ``functools.partial`` objects, so ``torch.load(weights_only=True)`` refuses
    the file. The loss class lives in :data:`STUDY_MODULE`, a module registered only while the file is written."""
    module = types.ModuleType(STUDY_MODULE)

    class DiceCELoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lambda_dice, self.lambda_ce = 1.0, 0.2

    DiceCELoss.__module__, DiceCELoss.__qualname__ = STUDY_MODULE, "DiceCELoss"
    module.DiceCELoss = DiceCELoss  # type: ignore[attr-defined]
    checkpoint: dict[str, Any] = {
        "epoch": 10,
        "global_step": 100,
        "pytorch-lightning_version": "2.0.1",
        "state_dict": dict(state),
        "hyper_parameters": {
            "loss_fn": DiceCELoss(),
            "optimizer": functools.partial(torch.optim.AdamW, lr=2e-5, weight_decay=1e-3),
            "scheduler": functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=5),
        },
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-5, "params": [0]}]}],
    }
    sys.modules[STUDY_MODULE] = module
    try:
        torch.save(checkpoint, path)
    finally:
        del sys.modules[STUDY_MODULE]
    return path


def save_open_clip(model: OfficialCRIS, path: Path) -> Path:
    """The backbone as a CLIP state dict in the open_clip layout (no ``connect``: CLIP lacks it)."""
    state = {
        key: value
        for key, value in model.backbone.state_dict().items()
        if not key.startswith("visual.attnpool.connect.")
    }
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path
