"""LViT and U-Net: shapes, gradients, sizes, parameter counts, input errors."""

from __future__ import annotations

import pytest
import torch

from lvseg.errors import LvsegError
from lvseg.models import LViT, UNet, create_model, list_models

SMALL = {"img_size": 64, "base_channels": 8, "text_len": 5, "text_dim": 16}


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_registry_lists_both_models() -> None:
    assert {"lvit", "unet"} <= set(list_models())
    assert isinstance(create_model("lvit", **SMALL), LViT)
    assert isinstance(create_model("unet", img_size=64, base_channels=8), UNet)
    assert LViT.requires_text is True and UNet.requires_text is False


@pytest.mark.parametrize("img_size", [64, 96])
@pytest.mark.parametrize("text_len", [5, 7])
def test_lvit_output_shapes(img_size: int, text_len: int) -> None:
    net = create_model("lvit", img_size=img_size, base_channels=8, text_len=text_len, text_dim=12).eval()
    assert net.n_tokens == (img_size // 16) ** 2
    assert net.embed[0].pos_embed.shape == (1, (img_size // 16) ** 2, 8)
    with torch.no_grad():
        out = net(torch.rand(2, 3, img_size, img_size), torch.randn(2, text_len, 12))
    assert out.shape == (2, 1, img_size, img_size)  # binary segmentation: one logit channel
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("img_size", [64, 96])
def test_unet_output_shapes_and_ignores_text(img_size: int) -> None:
    net = create_model("unet", img_size=img_size, base_channels=8, in_channels=1).eval()
    x = torch.rand(2, 1, img_size, img_size)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 1, img_size, img_size)
        torch.testing.assert_close(net(x, torch.randn(2, 4, 5)), out)


def _assert_all_params_get_gradient(net: torch.nn.Module, *inputs: torch.Tensor) -> None:
    net.train()
    torch.manual_seed(1)
    out = net(*inputs).logits  # training mode: a ModelOutput
    (out * torch.randn_like(out)).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_every_lvit_parameter_gets_gradient() -> None:
    torch.manual_seed(0)
    net = create_model("lvit", **SMALL)
    _assert_all_params_get_gradient(net, torch.rand(2, 3, 64, 64), torch.randn(2, 5, 16))


def test_every_unet_parameter_gets_gradient() -> None:
    torch.manual_seed(0)
    net = create_model("unet", img_size=64, base_channels=8)
    _assert_all_params_get_gradient(net, torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("bad", [100, 48, 0, -32])
def test_lvit_size_not_divisible_by_32(bad: int) -> None:
    with pytest.raises(LvsegError, match=str(bad)):
        create_model("lvit", img_size=bad)
    with pytest.raises(LvsegError, match=str(bad)):
        create_model("unet", img_size=bad)


def test_lvit_parameter_count_at_224() -> None:
    with torch.device("meta"):
        net = create_model("lvit", img_size=224, base_channels=64, text_len=10, text_dim=768)
    n = _n_params(net)
    assert 29.5e6 <= n <= 30.5e6, n
    # The official 30,096,193 "used" parameters minus the up stages' position embeddings, which the
    # official forward never reads (4 stages x 196 tokens x (64+128+256+512)).
    assert n == 30_096_193 - 196 * (64 + 128 + 256 + 512)


def test_lvit_sizes_follow_options() -> None:
    with torch.device("meta"):
        net = create_model("lvit", img_size=128, base_channels=16, text_len=7, text_dim=32)
    assert net.text_proj[3].weight.shape == (128, 32, 3)
    assert [p.weight.shape[0] for p in net.text_proj] == [16, 32, 64, 128]
    assert net.text_to_tokens.conv.weight.shape == (64, 7, 3)
    assert [e.proj.kernel_size for e in net.embed] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [e.pos_embed.shape[-1] for e in net.embed] == [16, 32, 64, 128]


def test_lvit_config_rebuilds_same_model() -> None:
    net = create_model("lvit", **SMALL, dropout=0.2)
    assert net.config == {**SMALL, "dropout": 0.2, "in_channels": 3, "text_encoder": None}
    twin = create_model("lvit", **net.config)
    twin.load_state_dict(net.state_dict())  # strict: same keys and shapes
    assert create_model("unet", **create_model("unet", img_size=64, base_channels=8).config).config["img_size"] == 64


def test_lvit_input_errors_name_expected_and_got() -> None:
    net = create_model("lvit", **SMALL).eval()
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(LvsegError, match="got None"):
        net(images, None)
    with pytest.raises(LvsegError, match=r"text_len=5.*\(1, 6, 16\)"):
        net(images, torch.randn(1, 6, 16))
    with pytest.raises(LvsegError, match=r"text_dim=16.*\(1, 5, 8\)"):
        net(images, torch.randn(1, 5, 8))
    with pytest.raises(LvsegError, match=r"\(B, 3, 64, 64\).*\(1, 3, 96, 96\)"):
        net(torch.rand(1, 3, 96, 96), torch.randn(1, 5, 16))
    with pytest.raises(LvsegError, match=r"\(1, 1, 64, 64\)"):
        net(torch.rand(1, 1, 64, 64), torch.randn(1, 5, 16))


def test_lvit_eval_is_deterministic_and_uses_text() -> None:
    torch.manual_seed(0)
    net = create_model("lvit", **SMALL).eval()
    images, text = torch.rand(1, 3, 64, 64), torch.randn(1, 5, 16)
    with torch.no_grad():
        a, b = net(images, text), net(images, text)
        c = net(images, torch.randn(1, 5, 16))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
