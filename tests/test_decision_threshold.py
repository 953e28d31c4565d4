"""The decision threshold is a declared model fact: predict, evaluate, the Segmenter, export folders and the app
use the model's (the plug-in PooledTextNet declares 0.4) unless a threshold is given."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.cli.main import app
from lvseg.errors import CheckpointError, LvsegError
from lvseg.inference import Segmenter, load_model
from lvseg.models import create_model

PLUGIN = "pooled-text-net"  # tests/plugin_package: decision_threshold = 0.4
REPORT = "Lesion on the left."
PROBABILITY = 0.45  # between the plug-in's 0.4 and the usual 0.5
runner = CliRunner()


def _constant_model() -> torch.nn.Module:
    """The plug-in model with probability 0.45 at every pixel (its head's weights zero, its bias logit(0.45))."""
    torch.manual_seed(0)
    model = create_model(PLUGIN, img_size=32, width=4, text_encoder="learned", texts=[REPORT])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(math.log(PROBABILITY / (1 - PROBABILITY)))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_inference_checkpoint(tmp_path_factory.mktemp("plugin") / "plugin.ckpt", _constant_model())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)).save(path)
    return path


def test_the_segmenter_uses_the_declared_threshold_unless_given_one(checkpoint: Path, image: Path) -> None:
    segmenter = load_model(checkpoint, device="cpu")
    assert segmenter.decision_threshold == 0.4
    assert segmenter.predict(image, REPORT).mask.all()  # 0.45 > 0.4
    assert not segmenter.predict(image, REPORT, threshold=0.5).mask.any()
    assert not segmenter.predict_batch([image], [REPORT], threshold=0.5)[0].mask.any()
    assert Segmenter(_constant_model(), device="cpu", decision_threshold=0.5).decision_threshold == 0.5
    assert (
        load_model(
            save_inference_checkpoint(
                checkpoint.parent / "unet.ckpt", create_model("unet", img_size=32, base_channels=4)
            ),
            device="cpu",
        ).decision_threshold
        == 0.5
    )  # the base class's
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(LvsegError, match="threshold must be between 0 and 1, got"):
            segmenter.predict(image, REPORT, threshold=bad)


def _predict(checkpoint: Path, image: Path, out: Path, *extra: str) -> np.ndarray:
    result = runner.invoke(
        app,
        ["predict", "-c", str(checkpoint), "-i", str(image), "-t", REPORT, "-o", str(out), "--device", "cpu", *extra],
    )
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out))


def test_lvseg_predict_defaults_to_the_declared_threshold(checkpoint: Path, image: Path, tmp_path: Path) -> None:
    assert (_predict(checkpoint, image, tmp_path / "default.png") == 255).all()
    assert (_predict(checkpoint, image, tmp_path / "given.png", "--threshold", "0.5") == 0).all()  # given wins
    result = runner.invoke(
        app,
        [
            "predict",
            "-c",
            str(checkpoint),
            "-i",
            str(image),
            "-t",
            REPORT,
            "-o",
            str(tmp_path / "bad.png"),
            "--threshold",
            "0",
        ],
    )
    assert isinstance(result.exception, LvsegError)
    assert "--threshold must be between 0 and 1, got 0.0" in str(result.exception)


def _dataset(root: Path, image: Path) -> Path:
    """The LViT layout with one test image whose truth is lesion everywhere."""
    (root / "Test_Folder" / "img").mkdir(parents=True)
    (root / "Test_Folder" / "labelcol").mkdir()
    Image.open(image).save(root / "Test_Folder" / "img" / "x.png")
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(root / "Test_Folder" / "labelcol" / "x.png")
    (root / "Test_Folder" / "Test_text.csv").write_text(f"Image,Description\nx.png,{REPORT}\n")
    return root


def test_lvseg_evaluate_defaults_to_the_declared_threshold(checkpoint: Path, image: Path, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", image)
    found, shown = {}, {}
    for name, extra in (("default", []), ("given", ["--threshold", "0.5"])):
        out = tmp_path / name
        result = runner.invoke(
            app,
            [
                "evaluate",
                "-c",
                str(checkpoint),
                "-d",
                str(data),
                "-o",
                str(out),
                "--text-mode",
                "given",
                "--device",
                "cpu",
                "--backend",
                "eager",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        found[name], shown[name] = json.loads((out / "metrics.json").read_text()), " ".join(result.output.split())
    assert (found["default"]["threshold"], found["default"]["dice"]) == (0.4, 1.0)
    assert (found["given"]["threshold"], found["given"]["dice"]) == (0.5, 0.0)
    assert "threshold 0.4)" in shown["default"] and "threshold 0.5)" in shown["given"]  # the table's title
    bad = runner.invoke(
        app, ["evaluate", "-c", str(checkpoint), "-d", str(data), "-o", str(tmp_path / "bad"), "--threshold", "1.5"]
    )
    assert isinstance(bad.exception, LvsegError)
    assert "--threshold must be between 0 and 1, got 1.5" in str(bad.exception)


def test_evaluate_in_python_takes_the_threshold(checkpoint: Path, image: Path, tmp_path: Path) -> None:
    from lvseg.evaluation.evaluate import evaluate, evaluate_text_reliance

    data = _dataset(tmp_path / "data", image)
    assert evaluate(checkpoint, data, device="cpu").threshold == 0.4
    assert evaluate(checkpoint, data, device="cpu", threshold=0.5).dice == 0.0
    combined = evaluate_text_reliance(checkpoint, data, modes=("given", "shuffled"), device="cpu", out=tmp_path / "o")
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["threshold"] == 0.4
    assert {report.threshold for report in combined.reports.values()} == {0.4}


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime (the deploy extra) is missing")
def test_an_export_folder_carries_the_threshold(checkpoint: Path, image: Path, tmp_path: Path) -> None:
    from lvseg.inference.export import export_model

    folder = tmp_path / "exported"
    manifest_path = export_model(checkpoint, folder, "onnx")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["decision_threshold"] == 0.4 and "probability > 0.4" in manifest["output"]["postprocess"]
    exported = load_model(folder, backend="onnx")
    assert exported.decision_threshold == 0.4 and exported.predict(image, REPORT).mask.all()

    older = {key: value for key, value in manifest.items() if key != "decision_threshold"}
    manifest_path.write_text(json.dumps(older))  # a folder written before manifests recorded it: 0.5
    exported = load_model(folder, backend="onnx")
    assert exported.decision_threshold == 0.5 and not exported.predict(image, REPORT).mask.any()

    manifest_path.write_text(json.dumps({**manifest, "decision_threshold": 1.5}))
    with pytest.raises(CheckpointError, match="'decision_threshold' is 1.5; expected a number between 0 and 1"):
        load_model(folder)


def test_the_app_uses_the_declared_threshold_unless_given_one(checkpoint: Path, image: Path) -> None:
    from fastapi.testclient import TestClient

    from lvseg.serving.app import create_app

    segmenter = load_model(checkpoint, device="cpu")
    for given, expected, lesion in ((None, 0.4, True), (0.5, 0.5, False)):
        with TestClient(create_app(segmenter, threshold=given, allowed_hosts=["testserver"])) as client:
            assert client.get("/api/model").json()["threshold"] == expected
            answer = client.post(
                "/api/segment", files={"image": ("x.png", image.read_bytes(), "image/png")}, data={"text": REPORT}
            )
            assert answer.status_code == 200, answer.text
            assert (answer.json()["finding"] == "lesion found") is lesion
    with pytest.raises(LvsegError, match="threshold must be between 0 and 1, got 1.2"):
        create_app(segmenter, threshold=1.2)


def test_lvseg_serve_takes_a_threshold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lvseg.cli import serve as serve_cli
    from lvseg.serving.fake import FakeSegmenter

    monkeypatch.setattr(
        serve_cli, "_load_segmenter", lambda path, device, backend="auto": FakeSegmenter(decision_threshold=0.4)
    )
    (tmp_path / "m.ckpt").write_bytes(b"not read: the loader is faked")
    for given, expected in ((None, 0.4), (0.7, 0.7)):
        built = serve_cli.build_app(tmp_path / "m.ckpt", None, None, allowed_hosts=["testserver"], threshold=given)
        with TestClient(built) as client:
            assert client.get("/api/model").json()["threshold"] == expected
    with pytest.raises(LvsegError, match="--threshold must be between 0 and 1, got 2.0"):
        serve_cli.build_app(tmp_path / "m.ckpt", None, None, threshold=2.0)
