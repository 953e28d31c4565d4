"""Export folders run by lvseg itself (load_model, predict, evaluate, serve), the CLI's auto default, the
fallback of auto for a model that cannot be exported, and batched folder prediction on the fast backends."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.errors import CheckpointError, LvsegError
from lvseg.inference import Segmenter, load_model
from lvseg.inference.backends import agreement
from test_inference_backends import REPORTS, SIZE, _fitted

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("openvino") is None,
    reason="ONNX Runtime and OpenVINO (the deploy extra) are missing",
)

MODELS = [("unet", {}), ("lvit", {"text_encoder": "learned"}), ("c2fvl", {}), ("reclmis", {"text_encoder": "learned"})]


def _export(tmp_path: Path, name: str, options: dict, fmt: str = "onnx") -> tuple[torch.nn.Module, Path, Path]:
    from lvseg.inference.export import export_model

    model = _fitted(name, **options)
    checkpoint = save_inference_checkpoint(tmp_path / f"{name}.ckpt", model, metrics={"val_dice": 0.75})
    folder = tmp_path / f"{name}-{fmt}"
    export_model(checkpoint, folder, fmt)
    return model, checkpoint, folder


def _image_file(model: torch.nn.Module, path: Path, index: int = 1) -> Path:
    pixels = (model.example_images[index].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("name,options", MODELS)
def test_an_export_folder_segments_like_its_checkpoint(tmp_path: Path, name: str, options: dict, fmt: str) -> None:
    model, checkpoint, folder = _export(tmp_path, name, options, fmt)
    images = model.example_images
    reference = load_model(checkpoint, device="cpu").probabilities(images, REPORTS).numpy()
    for backend, expected in (("auto", "openvino"), ("onnx", "onnx"), ("openvino", "openvino")):
        exported = load_model(folder, backend=backend)
        assert exported.backend == expected and exported.model_name == name
        assert exported.metrics == {"val_dice": 0.75}
        found = agreement(reference, exported.probabilities(images, REPORTS).numpy())
        assert found["min_dice"] == 1.0 and found["max_abs_diff"] < 1e-4, (backend, found)
    # the rebuilt model only reads reports: its network weights are NaN, so they are provably not what segments
    network = [p for key, p in exported.model.named_parameters() if not key.startswith("text_encoder.")]
    assert network and all(torch.isnan(p).all() for p in network)
    if name == "lvit":  # a learned vocabulary keeps its trained weights, and still reports unknown words
        trained = dict(model.text_encoder.named_parameters())
        for key, value in exported.model.text_encoder.named_parameters():
            assert torch.equal(value, trained[key]), key
        assert exported.model.read_report("zebra crossing").unknown_words == ("zebra", "crossing")


def test_lvseg_predict_and_evaluate_run_an_export_folder(tmp_path: Path) -> None:
    from lvseg.cli.main import app

    model, checkpoint, folder = _export(tmp_path, "lvit", {"text_encoder": "learned"}, "openvino")
    image = _image_file(model, tmp_path / "x.png")
    masks = {}
    for source in (checkpoint, folder):
        out = tmp_path / f"{source.name}.png"
        result = CliRunner().invoke(
            app, ["predict", "-c", str(source), "-i", str(image), "-t", REPORTS[1], "-o", str(out), "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        masks[source.name] = np.asarray(Image.open(out))
    assert masks[checkpoint.name].any() and np.array_equal(masks[checkpoint.name], masks[folder.name])

    result = CliRunner().invoke(
        app,
        [
            "predict",
            "-c",
            str(folder),
            "-i",
            str(image),
            "-t",
            REPORTS[1],
            "-o",
            str(tmp_path / "e.png"),
            "--backend",
            "eager",
        ],
    )
    assert isinstance(result.exception, LvsegError)
    assert "export folder runs with openvino, openvino-bf16, onnx or auto" in str(result.exception)

    data = tmp_path / "data"  # the LViT layout with one test image, its mask and its report
    (data / "Test_Folder" / "img").mkdir(parents=True)
    (data / "Test_Folder" / "labelcol").mkdir()
    Image.open(image).save(data / "Test_Folder" / "img" / "x.png")
    Image.fromarray(masks[checkpoint.name]).save(data / "Test_Folder" / "labelcol" / "x.png")
    (data / "Test_Folder" / "Test_text.csv").write_text(f'Image,Description\nx.png,"{REPORTS[1]}"\n')
    dices, backends = {}, {}
    for source in (checkpoint, folder):
        out = tmp_path / f"eval-{source.name}"
        result = CliRunner().invoke(
            app,
            ["evaluate", "-c", str(source), "-d", str(data), "-o", str(out), "--text-mode", "given", "--device", "cpu"],
        )
        assert result.exit_code == 0, result.output
        (metrics,) = out.rglob("metrics.json")
        written = json.loads(metrics.read_text())
        dices[source.name], backends[source.name] = written["dice"], written["backend"]
    assert backends[folder.name] == "openvino" and backends[checkpoint.name] in {"openvino", "onnx", "eager"}
    assert dices[checkpoint.name] > 0.5 and dices[folder.name] == pytest.approx(dices[checkpoint.name], abs=1e-6)


def test_lvseg_serve_serves_an_export_folder(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lvseg.cli.serve import build_app

    model, checkpoint, folder = _export(tmp_path, "lvit", {"text_encoder": "learned"}, "openvino")
    image = _image_file(model, tmp_path / "x.png")
    expected = load_model(checkpoint, device="cpu").predict(str(image), REPORTS[1]).mask
    with TestClient(build_app(folder, None, None), base_url="http://localhost") as client:
        info = client.get("/api/model").json()
        assert info["model"] == "lvit" and info["validation_dice"] == 0.75 and info["input_size"] == SIZE
        answer = client.post(
            "/api/segment", files={"image": ("x.png", image.read_bytes(), "image/png")}, data={"text": REPORTS[1]}
        )
        assert answer.status_code == 200, answer.text
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["mask"])))) > 0
    assert served.any() and np.array_equal(served, expected.astype(bool))


def test_export_folder_problems_are_named(tmp_path: Path) -> None:
    _, _, folder = _export(tmp_path, "unet", {})
    manifest_path = folder / "lvseg_export.json"
    manifest = json.loads(manifest_path.read_text())

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="folder without lvseg_export.json"):
        load_model(empty)
    manifest_path.write_text(json.dumps({**manifest, "lvseg_export": 1}))
    with pytest.raises(CheckpointError, match="export the checkpoint again"):
        load_model(folder)
    manifest_path.write_text(json.dumps({key: value for key, value in manifest.items() if key != "model_config"}))
    (folder / "network.onnx").unlink()
    with pytest.raises(CheckpointError, match="'model_config' is missing; the file 'network.onnx' is missing"):
        load_model(folder)
    with pytest.raises(LvsegError, match="runs on the CPU"):
        load_model(folder, device="cuda")


def test_auto_runs_eager_when_a_model_cannot_be_exported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import lvseg.inference.backends as backends

    def refuse(model, *args, **kwargs):
        raise LvsegError("model 'unet' cannot be exported to ONNX: an operation without an ONNX form")

    monkeypatch.setattr(backends, "export_onnx", refuse)
    model = _fitted("unet")
    segmenter = Segmenter(model, device="cpu", backend="auto")
    assert segmenter.backend == "eager" and "running the model with eager instead" in caplog.text
    probabilities = segmenter.probabilities(model.example_images, ["", ""])
    assert torch.isfinite(probabilities).all()
    with pytest.raises(LvsegError, match="cannot be exported"):  # a backend asked for by name is not replaced
        Segmenter(model, device="cpu", backend="onnx")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_folder_prediction_batches_through_the_fast_backends(tmp_path: Path, backend: str) -> None:
    import csv

    from lvseg.inference.folder import predict_folder

    model = _fitted("lvit", text_encoder="learned")
    folder = tmp_path / "Test_Folder"
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(5):  # batches of 2, 2 and 1 through one exported graph
        pixels = model.example_images[index % 2].permute(1, 2, 0).numpy()
        noisy = np.clip(pixels + rng.normal(0, 0.02, pixels.shape), 0, 1)
        Image.fromarray((noisy * 255).astype(np.uint8)).save(folder / "img" / f"case{index}.png")
        rows.append(f'case{index}.png,"{REPORTS[index % 2]}"')
    (folder / "Test_text.csv").write_text("Image,Description\n" + "\n".join(rows) + "\n")
    outputs = {}
    for name in ("eager", backend):
        out = tmp_path / name
        predict_folder(Segmenter(model, device="cpu", backend=name), folder, out, batch_size=2)
        with open(out / "predictions.csv") as handle:
            assert len(list(csv.DictReader(handle))) == 5
        outputs[name] = np.stack([np.asarray(Image.open(out / "masks" / f"case{i}.png")) > 0 for i in range(5)])
    assert outputs["eager"].any(axis=(1, 2)).all()
    assert np.array_equal(outputs["eager"], outputs[backend])


@pytest.mark.parametrize("command", ["predict", "evaluate", "serve"])
def test_the_cli_runs_the_fastest_backend_that_passes_the_guard_by_default(command: str) -> None:
    import typer.main

    from lvseg.cli.main import app

    click_command = typer.main.get_command(app).commands[command]
    backend = next(option for option in click_command.params if option.name == "backend")
    assert backend.default == "auto"
