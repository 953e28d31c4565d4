"""An independent re-implementation of BiomedCLIP in open_clip's layout, written from VLSM.md's facts.

Module names reproduce the keys of ``open_clip_pytorch_model.bin`` (``visual.trunk.blocks.N.attn.qkv``,
``text.transformer.encoder.layer.N.attention.self.query``, ``text.proj.0``, ...), and the forward passes are
plain PyTorch (timm's pre-norm ViT block with fused qkv; BERT's post-norm layer), so lvseg's conversion onto
``transformers`` modules is checked against code that shares nothing with it. Tiny sizes for tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WORDS = (
    "bilateral unilateral pulmonary infection infected area areas one two three left right lung middle "
    "upper lower all polyp small large , ."
).split()


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    b, n, width = q.shape
    split = lambda t: t.view(b, -1, heads, width // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, width)


class TimmBlock(nn.Module):
    def __init__(self, width: int, mlp: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, mlp)
        self.mlp.fc2 = nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.attn.proj(_attention(q, k, v, self.heads))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    def __init__(self, width: int, layers: int, mlp: int, patch: int, image_size: int) -> None:
        super().__init__()
        grid = image_size // patch
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, width) * 0.5)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch, stride=patch)
        self.blocks = nn.ModuleList(TimmBlock(width, mlp, width // 64) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def block_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class BertLayer(nn.Module):
    def __init__(self, width: int, mlp: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(width, width))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(width, width)
        self.attention.output.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(width, mlp)
        self.output = nn.Module()
        self.output.dense = nn.Linear(mlp, width)
        self.output.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = self.attention.self
        attended = _attention(s.query(x), s.key(x), s.value(x), self.heads, mask)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(attended))
        return self.output.LayerNorm(x + self.output.dense(F.gelu(self.intermediate.dense(x))))


class Bert(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, mlp: int, positions: int) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, width)
        self.embeddings.position_embeddings = nn.Embedding(positions, width)
        self.embeddings.token_type_embeddings = nn.Embedding(2, width)
        self.embeddings.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(width, mlp, width // 64) for _ in range(layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        positions = torch.arange(ids.shape[1])
        x = e.LayerNorm(
            e.word_embeddings(ids)
            + e.position_embeddings(positions)[None]
            + e.token_type_embeddings(torch.zeros_like(ids))
        )
        mask = ids != 0
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


class OpenClipBiomedCLIP(nn.Module):
    """``visual.trunk`` + ``visual.head.proj``, ``text.transformer`` + ``text.proj`` (Linear, GELU, Linear)."""

    def __init__(
        self,
        width: int = 128,
        layers: int = 3,
        patch: int = 8,
        image_size: int = 32,
        text_width: int = 128,
        text_layers: int = 2,
        text_hidden: int = 48,
        projection: int = 16,
        positions: int = 64,
    ) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.trunk = TimmViT(width, layers, 2 * width, patch, image_size)
        self.visual.head = nn.Module()
        self.visual.head.proj = nn.Linear(width, projection, bias=False)
        self.text = nn.Module()
        self.text.transformer = Bert(5 + len(WORDS), text_width, text_layers, 2 * text_width, positions)
        self.text.proj = nn.Sequential(
            nn.Linear(text_width, text_hidden, bias=False), nn.GELU(), nn.Linear(text_hidden, projection, bias=False)
        )
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        last = self.visual.trunk.block_outputs(images)[-1]
        return self.visual.head.proj(self.visual.trunk.norm(last)[:, 0])

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.proj(self.text.transformer(ids)[:, 0])


def save_tiny_biomedclip(folder: Path, seed: int = 0, **sizes: int) -> tuple[Path, OpenClipBiomedCLIP]:
    """Write ``open_clip_pytorch_model.bin`` (a random tiny BiomedCLIP, open_clip keys) and a BiomedBERT-style
    ``vocab.txt`` into ``folder``; return the folder and the reference model."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = OpenClipBiomedCLIP(**sizes).eval()
    with torch.no_grad():  # LayerNorms away from identity, so a swapped norm is visible
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return folder, model
