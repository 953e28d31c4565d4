"""Checkpoints written by lvseg 0.1 (format 1) still load, predict, evaluate and serve, with identical outputs.

The fixtures in tests/fixtures/legacy_v1 were written by that release (see its README.md), together
with the probability maps it computed for image.png and REPORT.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lvseg.checkpoint import FORMAT_VERSION, read_checkpoint_dict, upgrade_checkpoint
from lvseg.inference import load_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy_v1"
REPORT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("legacy")
    paths = {}
    for name in ("lvit", "unet"):
        with gzip.open(FIXTURES / f"{name}.ckpt.gz") as source, open(folder / f"{name}.ckpt", "wb") as target:
            shutil.copyfileobj(source, target)
        paths[name] = folder / f"{name}.ckpt"
    return paths


@pytest.mark.parametrize("name", ["lvit", "unet"])
def test_format_1_checkpoint_predicts_as_the_release_did(legacy: dict[str, Path], name: str) -> None:
    raw = read_checkpoint_dict(legacy[name])
    assert raw["lvseg"]["format"] == 1 and any(key.startswith("net.") for key in raw["state_dict"])
    segmenter = load_model(legacy[name], device="cpu")
    assert segmenter.model_name == name and segmenter.metrics.get("val_dice") is not None
    expected = np.load(FIXTURES / "expected.npz")[name]
    probability = segmenter.predict(FIXTURES / "image.png", REPORT).probability
    # Equal to the last bit on the machine that wrote the fixture; oneDNN picks other convolution kernels on
    # other CPUs (seen: 6e-8 apart on one of this project's machines), so float32 rounding is allowed, no more.
    np.testing.assert_allclose(probability, expected, rtol=0, atol=1e-6)


def test_upgrade_maps_every_weight_and_drops_n_classes(legacy: dict[str, Path]) -> None:
    raw = read_checkpoint_dict(legacy["lvit"])
    upgraded = upgrade_checkpoint(raw)
    assert upgraded["lvseg"]["format"] == FORMAT_VERSION and upgraded["lvseg"]["upgraded_from"] == 1
    config = upgraded["hyper_parameters"]["model_config"]
    assert "n_classes" not in config and config["text_encoder"]["type"] == "learned"
    assert len(upgraded["state_dict"]) == len(raw["state_dict"])
    assert all(key.startswith("model.") for key in upgraded["state_dict"])
    assert torch.equal(
        upgraded["state_dict"]["model.text_encoder.word_embedding.weight"],
        raw["state_dict"]["text_encoder.word_embedding.weight"],
    )


def test_format_1_checkpoint_evaluates_and_serves(legacy: dict[str, Path], tmp_path: Path) -> None:
    from lvseg.data.synth import generate_synthetic_dataset
    from lvseg.evaluation.evaluate import evaluate_modes
    from lvseg.serving.app import create_app

    data = tmp_path / "data"
    generate_synthetic_dataset(data, n=12, size=32, seed=0)  # the set the fixtures were trained on
    reports = evaluate_modes(legacy["lvit"], data, "test", modes=("given", "shuffled"), device="cpu")
    assert 0.0 <= reports["given"].dice <= 1.0
    with TestClient(create_app(load_model(legacy["lvit"], device="cpu")), base_url="http://localhost") as client:
        assert client.get("/api/model").json()["model"] == "lvit"
        image = (FIXTURES / "image.png").read_bytes()
        response = client.post("/api/segment", files={"image": ("x.png", image, "image/png")}, data={"text": REPORT})
        assert response.status_code == 200, response.text
        expected = np.load(FIXTURES / "expected.npz")["lvit"]
        assert response.json()["area_px"] == int((expected > 0.5).sum())


def test_a_newer_format_is_refused_with_a_clear_message(legacy: dict[str, Path], tmp_path: Path) -> None:
    from lvseg.checkpoint import load_checkpoint
    from lvseg.errors import CheckpointError

    raw = read_checkpoint_dict(legacy["unet"])
    raw["lvseg"]["format"] = 99
    torch.save(raw, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="format 99.*upgrade lvseg"):
        load_checkpoint(tmp_path / "future.ckpt")
