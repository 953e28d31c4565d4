"""Official LViT checkpoint import: layout, mapping completeness, numerical equivalence, errors."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict
from lvseg.errors import CheckpointError, LvsegError
from lvseg.importers.lvit import (
    convert_official_lvit_state_dict,
    import_official_checkpoint,
    load_official_state_dict,
    map_official_key,
)
from lvseg.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_bert
from official_lvit_layout import OfficialLayoutLViT, randomize_

SMALL = {"img_size": 64, "base": 8, "text_len": 5, "text_dim": 16}


def _manifest(reference_root: Path) -> dict[str, Any]:
    return json.loads((reference_root / "lvit_official_state_dict.json").read_text())


def _is_unused(key: str, unused_modules: list[str]) -> bool:
    return any(key.startswith(module + ".") for module in unused_modules)


@pytest.fixture(scope="module")
def bert16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT whose 16-wide token features fit SMALL's text_dim."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert16"), hidden=SMALL["text_dim"])


def test_reference_layout_equals_manifest(reference_root: Path) -> None:
    manifest = _manifest(reference_root)
    net = OfficialLayoutLViT()  # 224, base 64, text 10 x 768: construction only
    got = [(key, list(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in net.state_dict().items()]
    want = [(e["key"], e["shape"], e["dtype"]) for e in manifest["state_dict"]]
    assert got == want
    assert sum(p.numel() for p in net.parameters()) == manifest["total_parameters"]
    module_names = dict(net.named_modules())
    assert all(name in module_names for name in manifest["unused_in_forward_modules"])


def test_mapping_is_complete_against_manifest(reference_root: Path) -> None:
    manifest = _manifest(reference_root)
    unused = manifest["unused_in_forward_modules"]
    official = {
        e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]), device="meta")
        for e in manifest["state_dict"]
    }
    ours, dropped, options = convert_official_lvit_state_dict(official)
    assert options == {"in_channels": 3, "img_size": 224, "base_channels": 64, "text_dim": 768, "text_len": 10}

    # Every kept official key maps to exactly one of our keys, with an equal shape, and fills all of ours.
    kept = [key for key in official if map_official_key(key) is not None]
    targets = [map_official_key(key) for key in kept]
    assert len(set(targets)) == len(targets)
    with torch.device("meta"):
        reference = create_model("lvit", **options).state_dict()
    assert set(targets) == set(reference) == set(ours)
    for key in kept:
        assert tuple(official[key].shape) == tuple(reference[map_official_key(key)].shape), key

    # Dropped: exactly the manifest's unused modules plus the up stages' position embeddings
    # (a parameter of upVit*.embeddings, whose forward the up path never calls).
    up_pos = {f"upVit{s}.embeddings.position_embeddings" for s in ("", "1", "2", "3")}
    assert set(dropped) == {k for k in official if _is_unused(k, unused)} | up_pos
    assert set(dropped).isdisjoint(kept) and len(dropped) + len(kept) == len(official)
    n_kept = sum(math.prod(official[k].shape) for k in kept if "running" not in k and "num_batches" not in k)
    assert n_kept == manifest["parameters_used_in_forward"] - 196 * (64 + 128 + 256 + 512)


def _compare(cfg: dict[str, Any], img_size: int, seed: int = 0) -> tuple[float, torch.nn.Module, tuple]:
    torch.manual_seed(seed)
    official = randomize_(OfficialLayoutLViT(**cfg), seed=seed).eval()
    ours_sd, _, options = convert_official_lvit_state_dict(official.state_dict())
    net = create_model("lvit", **options).eval()
    net.load_state_dict(ours_sd, strict=True)
    images = torch.rand(2, 3, img_size, img_size)
    text = torch.randn(2, options["text_len"], options["text_dim"])
    with torch.no_grad():
        expected = official(images, text)
        got = torch.sigmoid(net(images, text))
    assert expected.std() > 1e-3, "degenerate reference output: the comparison would prove nothing"
    return float((expected - got).abs().max()), net, (images, text, expected)


def test_converted_model_matches_official_layout_small() -> None:
    diff, net, (images, text, expected) = _compare(SMALL, 64)
    assert diff < 1e-5
    # Negative control: one changed weight on the text path must show up in the comparison.
    with torch.no_grad():
        net.text_proj[3].bias.add_(0.5)
        assert (torch.sigmoid(net(images, text)) - expected).abs().max() > 1e-5


def test_converted_model_matches_official_layout_224_geometry() -> None:
    diff, _, _ = _compare({"img_size": 224, "base": 8, "text_len": 10, "text_dim": 768}, 224, seed=1)
    assert diff < 1e-5


@pytest.mark.skipif(not os.environ.get("LVSEG_SLOW_TESTS"), reason="set LVSEG_SLOW_TESTS=1 (about 20 s on 2 cores)")
def test_converted_model_matches_official_layout_full_config() -> None:
    diff, _, _ = _compare({}, 224, seed=2)
    assert diff < 1e-5


def test_import_checkpoint_file_roundtrip(tmp_path: Path, bert16: Path) -> None:
    official = randomize_(OfficialLayoutLViT(**SMALL), seed=3).eval()
    source = tmp_path / "best_model.pth"
    torch.save(
        {"epoch": 7, "state_dict": {"module." + k: v for k, v in official.state_dict().items()}, "val_loss": 0.3},
        source,
    )
    result = import_official_checkpoint(source, tmp_path / "lvit.ckpt", text_encoder=f"hf:{bert16}")
    text_config = {"type": "hf", "name_or_path": str(bert16), "max_length": 5}
    assert result.model_options == {
        "in_channels": 3,
        "img_size": 64,
        "base_channels": 8,
        "text_encoder": text_config,
        "text_dim": 16,
        "text_len": 5,
        "dropout": 0.1,
    }
    assert len(result.dropped_keys) == 203 and "downVit.head.weight" in result.dropped_keys
    saved = read_checkpoint_dict(tmp_path / "lvit.ckpt")
    assert saved["hyper_parameters"]["model_name"] == "lvit"
    assert saved["lvseg"]["format"] == 2
    assert saved["lvseg"]["pretrained"] == {"model.text_encoder": str(bert16)}  # reloaded, not stored
    assert not any("hf_model" in key for key in saved["state_dict"])
    net = create_model("lvit", **{**saved["hyper_parameters"]["model_config"], "text_encoder": None}).eval()
    net.load_weights({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
    images, text = torch.rand(1, 3, 64, 64), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert (torch.sigmoid(net(images, text)) - official(images, text)).abs().max() < 1e-5

    # The converted checkpoint is a complete lvseg model: it loads with its (tiny local) BERT and predicts.
    loaded = load_checkpoint(tmp_path / "lvit.ckpt", expected_model="lvit")
    reports = ["Unilateral pulmonary infection, one infected area, lower left lung."]
    tokens = loaded.model.text_encoder(reports).tokens
    with torch.no_grad():
        assert (loaded.model.predict_proba(images, reports) - official(images, tokens)).abs().max() < 1e-5


def test_bare_state_dict_is_accepted(tmp_path: Path) -> None:
    official = OfficialLayoutLViT(**SMALL)
    path = tmp_path / "bare.pth"
    torch.save(official.state_dict(), path)
    state = load_official_state_dict(path)
    assert set(state) == set(official.state_dict())


def _save(tmp_path: Path, obj: Any, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_import_errors_name_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.ckpt"
    with pytest.raises(CheckpointError, match="missing.pth.*no such file"):
        import_official_checkpoint(tmp_path / "missing.pth", out)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pth.*not a readable PyTorch checkpoint"):
        import_official_checkpoint(garbage, out)

    good = _save(tmp_path, {"state_dict": OfficialLayoutLViT(**SMALL).state_dict()}, "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        import_official_checkpoint(truncated, out)

    with pytest.raises(CheckpointError, match="list.pth.*expected a dict"):
        import_official_checkpoint(_save(tmp_path, [1, 2], "list.pth"), out)
    assert not out.exists()


def test_conversion_errors(tmp_path: Path) -> None:
    state = OfficialLayoutLViT(**SMALL).state_dict()

    missing = dict(state)
    del missing["text_module1.weight"]
    with pytest.raises(CheckpointError, match=r"missing_key.pth.*text_proj\.0\.weight"):
        import_official_checkpoint(_save(tmp_path, {"state_dict": missing}, "missing_key.pth"), tmp_path / "o")

    unet = create_model("unet", img_size=64, base_channels=8).state_dict()
    with pytest.raises(CheckpointError, match=r"unet.pth.*not an official LViT state_dict.*outc.weight"):
        import_official_checkpoint(_save(tmp_path, {"state_dict": unet}, "unet.pth"), tmp_path / "o")

    ours = create_model("lvit", img_size=64, base_channels=8, text_len=5, text_dim=16).state_dict()
    lightning_like = {"state_dict": {"model." + k: v for k, v in ours.items()}, "hparams": {"model_name": "lvit"}}
    with pytest.raises(CheckpointError, match="lvseg_ckpt.pth.*not an official LViT"):
        import_official_checkpoint(_save(tmp_path, lightning_like, "lvseg_ckpt.pth"), tmp_path / "o")

    extra = dict(state, **{"decoder.extra.weight": torch.zeros(3)})
    with pytest.raises(LvsegError, match=r"decoder\.extra\.weight"):
        convert_official_lvit_state_dict(extra)

    reshaped = dict(state, **{"upVit1.CTBN2.conv.weight": torch.zeros(16, 30, 3)})
    with pytest.raises(LvsegError, match=r"upVit1\.CTBN2\.conv\.weight: shape \(16, 30, 3\).*token_up\.1"):
        convert_official_lvit_state_dict(reshaped)

    with pytest.raises(KeyError):
        map_official_key("upVit0.CTBN2.conv.weight")


def test_import_refuses_a_checkpoint_that_could_not_read_reports(tmp_path: Path) -> None:
    source = _save(tmp_path, {"state_dict": OfficialLayoutLViT(**SMALL).state_dict()}, "o.pth")
    with pytest.raises(LvsegError, match="not a frozen encoder"):
        import_official_checkpoint(source, tmp_path / "lvit.ckpt", text_encoder="none")
    assert not (tmp_path / "lvit.ckpt").exists()
