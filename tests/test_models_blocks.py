"""Unit tests of the shared building blocks in lvseg.models.blocks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lvseg.models.blocks import (
    ConvBatchNorm,
    ConvTransBN,
    DownBlock,
    PatchEmbedding,
    PixLevelModule,
    Reconstruct,
    SelfAttention,
    TransformerBlock,
    TransformerMLP,
    UpBlock,
    UpBlockAttention,
    tokens_to_channels_first,
)


def test_conv_and_down_blocks_shapes() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert ConvBatchNorm(3, 5)(x).shape == (2, 5, 16, 16)
    assert DownBlock(3, 6)(x).shape == (2, 6, 8, 8)
    assert (ConvBatchNorm(3, 5)(x) >= 0).all()  # ends with ReLU


def test_up_blocks_concatenate_skip_then_upsampled() -> None:
    x, skip = torch.rand(2, 4, 4, 4), torch.rand(2, 4, 8, 8)
    assert UpBlock(8, 3)(x, skip).shape == (2, 3, 8, 8)
    block = UpBlockAttention(8, 3).eval()
    assert block(x, skip).shape == (2, 3, 8, 8)
    expected = block.convs(torch.cat([block.attention(skip), F.interpolate(x, scale_factor=2.0, mode="nearest")], 1))
    torch.testing.assert_close(block(x, skip), expected)


def test_pix_level_module_matches_definition() -> None:
    torch.manual_seed(0)
    plam = PixLevelModule(4)
    x = torch.randn(2, 4, 5, 6)
    a = F.relu(F.conv2d(x, plam.conv_avg.weight)).mean(1)
    m = F.relu(F.conv2d(x, plam.conv_max.weight)).max(1).values
    feats = torch.stack([a, m, a + m], dim=-1)  # (B, H, W, 3)
    lin1, lin2 = plam.bottleneck[0], plam.bottleneck[2]
    w = F.linear(F.relu(F.linear(feats, lin1.weight, lin1.bias)), lin2.weight, lin2.bias)  # (B, H, W, 1)
    torch.testing.assert_close(plam(x), w.permute(0, 3, 1, 2) * x)
    assert plam.conv_avg.bias is None and plam.conv_max.bias is None


def test_self_attention_qkv_layout() -> None:
    torch.manual_seed(0)
    dim, heads = 16, 8
    attn = SelfAttention(dim, heads)
    x = torch.randn(2, 7, dim)
    qkv = attn.qkv(x)
    hd = dim // heads
    outs = []
    for h in range(heads):
        q = qkv[..., h * hd : (h + 1) * hd]
        k = qkv[..., dim + h * hd : dim + (h + 1) * hd]
        v = qkv[..., 2 * dim + h * hd : 2 * dim + (h + 1) * hd]
        outs.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1) @ v)
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(outs, -1)))
    with pytest.raises(ValueError):
        SelfAttention(12, 8)


def test_mlp_has_second_exact_gelu_and_init() -> None:
    torch.manual_seed(0)
    mlp = TransformerMLP(8, 32, dropout=0.1).eval()
    x = torch.randn(3, 5, 8) * 4
    expected = F.gelu(mlp.fc2(F.gelu(mlp.fc1(x), approximate="none")), approximate="none")
    torch.testing.assert_close(mlp(x), expected)
    for layer in (mlp.fc1, mlp.fc2):
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound
        assert layer.bias.abs().max() < 1e-4
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))  # dropout active in training


def test_transformer_block_is_pre_norm() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, dropout=0.0).eval()
    x = torch.randn(2, 9, 16)
    h = x + block.attn(F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias, 1e-5))
    expected = h + block.mlp(F.layer_norm(h, (16,), block.norm2.weight, block.norm2.bias, 1e-5))
    torch.testing.assert_close(block(x), expected)


def test_patch_embedding_zero_position_and_tokens() -> None:
    emb = PatchEmbedding(4, 4, patch_size=4, n_patches=9, dropout=0.1).eval()
    assert torch.count_nonzero(emb.pos_embed) == 0 and emb.pos_embed.shape == (1, 9, 4)
    x = torch.rand(2, 4, 12, 12)
    out = emb(x)
    assert out.shape == (2, 9, 4)
    torch.testing.assert_close(out, emb.proj(x).flatten(2).transpose(1, 2))


def test_conv_trans_bn_along_tokens() -> None:
    block = ConvTransBN(6, 3)
    tokens = torch.randn(2, 10, 6)  # (B, N, D)
    assert tokens_to_channels_first(tokens, block).shape == (2, 10, 3)
    assert block(torch.randn(2, 6, 11)).shape == (2, 3, 11)


def test_reconstruct_nearest_upsampling() -> None:
    rec = Reconstruct(4, 4, scale=3).eval()
    out = rec(torch.randn(2, 16, 4))
    assert out.shape == (2, 4, 12, 12)
    # 1x1 conv after nearest upsampling: every 3x3 block holds one value.
    torch.testing.assert_close(out, out[:, :, ::3, ::3].repeat_interleave(3, 2).repeat_interleave(3, 3))
    with pytest.raises(ValueError):
        rec(torch.randn(1, 15, 4))
