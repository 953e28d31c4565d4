"""An independent stand-in for the official RecLMIS network's inference path, used only by the tests.

Written from /work/shared/reference/RECLMIS.md and the manifest (not from lvseg.models): its state_dict
uses the official key names for the segmentation path and the OpenAI CLIP text tower (``clip.*``), and
its forward follows the notes literally: OpenAI CLIP text encoding (causal AND padded-key mask,
QuickGELU, ``ln_final`` then ``@ text_projection``) giving ``clip_hid`` at every position, ``text_module4``
Conv1d, the interactor (Conv1x1 patches + position embedding, two ``nn.MultiheadAttention`` in
sequence-first layout without key-padding masks), and LViT's PLAM decoder on the interactor output;
it ends with a sigmoid. Training-only and never-called modules are added as dummy tensors by
:func:`official_state_dict`, so a checkpoint of it has the official layout.
"""

from __future__ import annotations

import torch
from torch import nn

from official_lvit_layout import ConvBatchNorm, DownBlock, UpblockAttention


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class OfficialCLIPText(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int, projection: int) -> None:
        super().__init__()
        self.heads = heads
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, projection) * width**-0.5)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> clip_hid (B, L, projection)."""
        batch, length = ids.shape
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)  # True = blocked
        blocked = causal[None] | (ids == 0)[:, None, :]  # (B, L, L): causal AND padded keys
        mask = torch.zeros(batch, length, length).masked_fill(blocked, float("-inf"))
        mask = mask.repeat_interleave(self.heads, dim=0)  # (B * heads, L, L)
        x = x.permute(1, 0, 2)  # (L, B, width)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x.permute(1, 0, 2)) @ self.text_projection


class Embeddings(nn.Module):
    def __init__(self, width: int, n_patches: int) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(width, width, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, width))


class Interactor(nn.Module):
    def __init__(self, width: int, n_patches: int, heads: int = 4) -> None:
        super().__init__()
        self.embeddings = Embeddings(width, n_patches)
        self.attn_text = nn.MultiheadAttention(width, heads, dropout=0.1)
        self.attn_img = nn.MultiheadAttention(width, heads, dropout=0.1)

    def forward(self, x5: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        v = self.embeddings.patch_embeddings(x5).flatten(2).transpose(1, 2) + self.embeddings.position_embeddings
        v, t = v.transpose(0, 1), text.transpose(0, 1)  # sequence-first, as nn.MultiheadAttention defaults
        t2 = self.attn_text(t, v, v)[0]
        v2 = self.attn_img(v, t2, t2)[0]
        return v2.transpose(0, 1)  # (B, N, width)


class OfficialLayoutRecLMIS(nn.Module):
    """Official inference layout; ``forward(images, ids)`` returns sigmoid probabilities (B, 1, S, S)."""

    def __init__(self, img_size: int = 224, base: int = 64, clip: dict | None = None) -> None:
        super().__init__()
        b = base
        self.inc = ConvBatchNorm(3, b)
        self.down1, self.down2 = DownBlock(b, 2 * b), DownBlock(2 * b, 4 * b)
        self.down3, self.down4 = DownBlock(4 * b, 8 * b), DownBlock(8 * b, 8 * b)
        self.up4, self.up3 = UpblockAttention(16 * b, 4 * b), UpblockAttention(8 * b, 2 * b)
        self.up2, self.up1 = UpblockAttention(4 * b, b), UpblockAttention(2 * b, b)
        self.outc = nn.Conv2d(b, 1, kernel_size=1)
        clip = clip or {"vocab": 49408, "width": 512, "layers": 12, "heads": 8, "context": 77, "projection": 512}
        self.text_module4 = nn.Conv1d(clip["projection"], 8 * b, kernel_size=3, padding=1)
        self.interact = Interactor(8 * b, (img_size // 16) ** 2)
        self.clip = OfficialCLIPText(**clip)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        clip_hid = self.clip.encode(ids)
        text = self.text_module4(clip_hid.transpose(1, 2)).transpose(1, 2)
        x1 = self.inc(images)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        v = self.interact(x5, text)
        x = v.transpose(1, 2).reshape(x5.shape)
        x = self.up4(x, x4)
        x = self.up3(x, x3)
        x = self.up2(x, x2)
        x = self.up1(x, x1)
        return torch.sigmoid(self.outc(x))


def official_state_dict(net: OfficialLayoutRecLMIS, reconstructor_layers: int = 4) -> dict[str, torch.Tensor]:
    """``net``'s state_dict plus dummy tensors for the official training-only and never-called keys
    (names from the manifest), as a checkpoint of the official code holds them."""
    state = dict(net.state_dict())  # includes PLAM's never-called conv_sig
    width = net.text_module4.out_channels
    extra = {
        "clip.logit_scale": torch.tensor(4.6052),
        "clip.visual.conv1.weight": torch.zeros(8, 3, 4, 4),
        "clip.visual.class_embedding": torch.zeros(8),
        "mlp_woi.0.weight": torch.zeros(width, width),
        "mlp_visual.2.bias": torch.zeros(1),
        "interact.CTBN.conv.weight": torch.zeros(width, width, 3),
    }
    for name in ("rec_text_trans1", "rec_img_trans1"):
        for decoder in ("decoder1", "decoder2"):
            for layer in range(reconstructor_layers):
                base = f"{name}.{decoder}.decoder_layers.{layer}."
                extra[base + "self_attn.in_proj_weight"] = torch.zeros(3 * width, width)
                extra[base + "encoder_attn.in_proj_weight"] = torch.zeros(3 * width, width)
                extra[base + "fc1.weight"] = torch.zeros(2 * width, width)
    return {**state, **extra}
