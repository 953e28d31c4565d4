"""``lvseg info`` and ``lvseg import-lvit`` through the typer app."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.errors import LvsegError
from lvseg.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_lvit_layout import OfficialLayoutLViT

runner = CliRunner()


def test_info_json_small_lvit() -> None:
    result = runner.invoke(
        app,
        [
            "info",
            "--model",
            "lvit",
            "--img-size",
            "64",
            "--base-channels",
            "8",
            "--text-len",
            "5",
            "--text-dim",
            "16",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    net = create_model("lvit", img_size=64, base_channels=8, text_len=5, text_dim=16)
    assert report["parameters"] == sum(p.numel() for p in net.parameters())
    assert report["trainable_parameters"] == report["parameters"]
    assert report["image_shape"] == [1, 3, 64, 64] and report["text_shape"] == [1, 5, 16]
    assert report["requires_text"] is True and report["options"]["text_dim"] == 16
    assert 0 < report["gflops"] < 1


def test_info_json_lvit_official_size() -> None:
    result = runner.invoke(app, ["info", "--model", "lvit", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["parameters"] == 29_908_033
    assert report["text_shape"] == [1, 10, 768] and report["image_shape"] == [1, 3, 224, 224]
    # The official model is 27.2 GMACs (fvcore); FlopCounterMode counts a multiply-add as 2 FLOPs.
    assert 50 < report["gflops"] < 58


def test_info_table_and_unet() -> None:
    result = runner.invoke(app, ["info", "--model", "unet", "--img-size", "64"])
    assert result.exit_code == 0, result.output
    assert "13,358,273" in result.stdout and "1x3x64x64" in result.stdout


def test_info_user_errors() -> None:
    result = runner.invoke(app, ["info", "--model", "nope", "--json"])
    assert isinstance(result.exception, LvsegError) and "nope" in str(result.exception)
    result = runner.invoke(app, ["info", "--model", "unet", "--text-len", "5"])
    assert isinstance(result.exception, LvsegError) and "text_len" in str(result.exception)
    result = runner.invoke(app, ["info", "--model", "lvit", "--img-size", "100"])
    assert isinstance(result.exception, LvsegError) and "100" in str(result.exception)


def test_import_lvit_prints_dropped_keys_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "official.pth"
    torch.save({"state_dict": OfficialLayoutLViT(img_size=64, base=8, text_len=5, text_dim=16).state_dict()}, source)
    result = runner.invoke(app, ["import-lvit", str(source), "--out", str(tmp_path / "m.ckpt")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.ckpt").is_file()  # the BERT it names is recorded, not loaded
    assert "dropped 203 unused official keys" in result.stdout
    assert "pix_module4.conv_sig.0.bias" in result.stdout and "upVit3.CTBN2.conv.weight" in result.stdout
    assert '"base_channels": 8' in result.stdout and '"text_len": 5' in result.stdout

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    result = runner.invoke(app, ["import-lvit", str(bad), "--out", str(tmp_path / "x.ckpt")])
    assert isinstance(result.exception, LvsegError) and "bad.pth" in str(result.exception)
