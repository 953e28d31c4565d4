"""The LViT-family U-Net CNN builder (lvseg.models.cnn_encoder), shared by lvit, c2fvl and reclmis."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lvseg.models import create_model
from lvseg.models.blocks import UpBlock, UpBlockAttention
from lvseg.models.cnn_encoder import (
    build_cnn_decoder,
    build_cnn_encoder,
    decode_cnn,
    encode_cnn,
    level_widths,
)


def test_encoder_and_decoder_shapes_follow_the_lvit_widths() -> None:
    torch.manual_seed(0)
    inc, down = build_cnn_encoder(3, 8)
    up, head = build_cnn_decoder(8, UpBlockAttention)
    assert level_widths(8) == [8, 16, 32, 64]
    skips, bottom = encode_cnn(inc, down, torch.randn(2, 3, 32, 32))
    assert [tuple(s.shape) for s in skips] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    assert tuple(bottom.shape) == (2, 64, 2, 2)
    assert tuple(head(decode_cnn(up, bottom, skips)).shape) == (2, 1, 32, 32)


def test_the_builders_keep_the_official_module_layout() -> None:
    holder = nn.Module()
    holder.inc, holder.down = build_cnn_encoder(3, 8)
    holder.up, holder.head = build_cnn_decoder(8, UpBlock)
    shapes = {key: tuple(value.shape) for key, value in holder.state_dict().items()}
    assert shapes["inc.conv.weight"] == (8, 3, 3, 3)
    assert shapes["down.3.convs.1.conv.weight"] == (64, 64, 3, 3)  # 8b -> 8b at the bottleneck
    assert shapes["up.3.convs.0.conv.weight"] == (32, 128, 3, 3)  # 16b -> 4b
    assert shapes["up.0.convs.0.conv.weight"] == (8, 16, 3, 3)  # 2b -> b
    assert shapes["head.weight"] == (1, 8, 1, 1)


@pytest.mark.parametrize("name", ["lvit", "c2fvl", "reclmis"])
def test_the_three_families_build_the_same_cnn(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, img_size=32, base_channels=8)
    torch.manual_seed(0)
    inc, down = build_cnn_encoder(3, 8)
    for prefix, module in (("inc", inc), ("down", down)):
        expected = {f"{prefix}.{key}": tuple(value.shape) for key, value in module.state_dict().items()}
        actual = {key: tuple(value.shape) for key, value in model.state_dict().items() if key.split(".")[0] == prefix}
        assert actual == expected
    images = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected_skips, expected_bottom = encode_cnn(model.inc, model.down, images)
        skip = model.inc(images)
        for block in model.down[:-1]:
            skip = block(skip)
        assert torch.equal(skip, expected_skips[-1])
        assert torch.equal(model.down[-1](skip), expected_bottom)
