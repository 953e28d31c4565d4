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
    assert "export folder runs with openvino, openvino-bf16, openvino-int8, onnx or auto" in str(result.exception)

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


# ------------------------------------------------------------------------ tampered folders are refused


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "lvseg_export.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _refusal(folder: Path, backend: str = "onnx") -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(folder, backend=backend)
    return str(caught.value)


@pytest.fixture(scope="module")
def exported_lvit(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """An lvit (learned vocabulary) exported once for OpenVINO; the tests tamper with copies."""
    return _export(tmp_path_factory.mktemp("lvit-export"), "lvit", {"text_encoder": "learned"}, "openvino")


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_an_export_folder_records_its_files_hashes_and_inputs(exported_lvit, tmp_path: Path) -> None:
    import hashlib

    model, checkpoint, folder = exported_lvit
    manifest = json.loads((folder / "lvseg_export.json").read_text())
    assert set(manifest["files"]) == {
        "network.onnx",
        "text_front_end.safetensors",
        "text_encoder.onnx",
        "network.xml",
        "network.bin",
    }
    assert manifest["sha256"] == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in manifest["files"]
    }
    assert manifest["network"]["inputs"] == [
        {"name": "images", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32"},
        {"name": "text_0", "shape": ["batch", 32, 64], "dtype": "float32"},
    ]
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in folder.iterdir()}
    assert modes == dict.fromkeys([*manifest["files"], "lvseg_export.json"], "0o600")  # no staging folder left
    # the untouched folder loads and segments exactly as before the checks existed
    reference = load_model(checkpoint, device="cpu").probabilities(model.example_images, REPORTS).numpy()
    for backend in ("onnx", "openvino"):
        found = agreement(reference, load_model(folder, backend=backend).probabilities(model.example_images, REPORTS))
        assert found["min_dice"] == 1.0 and found["max_abs_diff"] < 1e-4, (backend, found)


def _set(path: str, value):
    def edit(manifest: dict) -> None:
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value

    return edit


@pytest.mark.parametrize(
    "edit,expected",
    [
        pytest.param(
            _set("model_config.img_size", 64),
            "model_config.img_size: manifest says 64 (lvseg would resize images to it), network.onnx takes 3x32x32",
            id="img_size",
        ),
        pytest.param(
            _set("image.size", 48), "image.size: manifest says 48, network.onnx takes 3x32x32", id="image.size"
        ),
        pytest.param(
            _set("model_config.in_channels", 1),
            "model_config.in_channels: manifest says 1 (lvseg would read images with that many channels), "
            "network.onnx takes 3x32x32",
            id="in_channels",
        ),
        pytest.param(
            _set("image.input.name", "pixels"),
            "image.input.name: manifest says 'pixels', network.onnx has no such input (its inputs: images, text_0)",
            id="image-input-name",
        ),
        pytest.param(
            lambda manifest: manifest["text"]["tensors"][0].update(name="words"),
            "network.inputs[1] is 'text_0', which is neither image.input nor one of text.tensors",
            id="text-input-name",
        ),
        pytest.param(
            lambda manifest: manifest["network"]["inputs"][1].update(name="words"),
            "network.onnx has no input 'words', which network.inputs lists (its inputs: images, text_0)",
            id="network-input-name",
        ),
        pytest.param(
            lambda manifest: manifest["network"]["inputs"][0].update(shape=["batch", 3, 64, 64]),
            "network.onnx: input 'images' is 3x32x32, network.inputs says 3x64x64",
            id="network-input-shape",
        ),
        pytest.param(
            _set("network.file", "text_encoder.onnx"),
            "network.file: manifest says 'text_encoder.onnx'; an export folder's network is 'network.onnx'",
            id="network-file",
        ),
        pytest.param(_set("format", "tflite"), "format: manifest says 'tflite'; expected one of onnx", id="format"),
        pytest.param(
            _set("output.name", "scores"),
            "network.onnx has no output 'scores', which output.name says (its outputs: logits)",
            id="output-name",
        ),
        pytest.param(
            _set("text.input.name", "ids"),
            "text.input.name: manifest says 'ids', text_encoder.onnx takes 'token_ids'",
            id="token-input-name",
        ),
        pytest.param(
            lambda manifest: manifest["text"]["tensors"][0].update(shape=["batch", 32, 48]),
            "text.tensors[0] ('text_0'): manifest says 32x48, network.onnx takes 32x64",
            id="text-shape",
        ),
        pytest.param(
            lambda manifest: manifest["text"]["vocab"].__setitem__(3, "zebra"),
            "text.vocab: manifest lists 19 words, the learned vocabulary of model_config (what lvseg reads reports "
            "with) 19; word 3 is 'zebra' in the manifest, 'lung' in model_config",
            id="vocabulary",
        ),
    ],
)
def test_an_edited_manifest_is_refused_naming_what_differs(exported_lvit, tmp_path: Path, edit, expected) -> None:
    _, _, folder = exported_lvit
    copy = _copy(folder, tmp_path)
    _edit_manifest(copy, edit)
    for backend in ("onnx", "openvino"):
        message = _refusal(copy, backend)
        assert expected in message, message
        assert "does not match its manifest" in message and "Export the checkpoint again" in message


def test_a_damaged_file_is_refused(exported_lvit, tmp_path: Path) -> None:
    _, _, folder = exported_lvit
    copy = _copy(folder, tmp_path)
    weights = bytearray((copy / "text_front_end.safetensors").read_bytes())
    weights[-3] ^= 0x01  # one bit of the last weight: the file still parses, the vocabulary's embedding differs
    (copy / "text_front_end.safetensors").write_bytes(bytes(weights))
    message = _refusal(copy)
    assert (
        "text_front_end.safetensors: SHA-256 differs from the manifest (file replaced or damaged): export again"
        in message
    )
    assert "network.onnx" not in message.split("):", 1)[1]  # the other files are fine


def test_another_exports_network_is_refused_with_every_problem_at_once(tmp_path: Path) -> None:
    from lvseg.inference.export import export_model
    from lvseg.models import create_model

    _, _, folder = _export(tmp_path, "unet", {})
    torch.manual_seed(0)
    larger = create_model("unet", img_size=64, base_channels=8).eval()
    other = tmp_path / "unet-64"
    export_model(save_inference_checkpoint(tmp_path / "unet-64.ckpt", larger, metrics={}), other)
    (folder / "network.onnx").write_bytes((other / "network.onnx").read_bytes())
    _edit_manifest(folder, _set("model_config.in_channels", 1))
    message = _refusal(folder)
    for expected in (
        "network.onnx: SHA-256 differs from the manifest (file replaced or damaged): export again",
        "image.input: manifest says 3x32x32, network.onnx takes 3x64x64",
        "image.size: manifest says 32, network.onnx takes 3x64x64",
        "model_config.img_size: manifest says 32 (lvseg would resize images to it), network.onnx takes 3x64x64",
        "model_config.in_channels: manifest says 1",
    ):
        assert expected in message, message


def _rehash(folder: Path) -> None:
    """Record the folder's current files in its manifest, as someone mixing folders on purpose would."""
    from lvseg.inference.manifest import file_hashes

    _edit_manifest(folder, lambda manifest: manifest.update(sha256=file_hashes(folder, list(manifest["sha256"]))))


@pytest.mark.parametrize("graph", ["onnx", "openvino"])
def test_a_graph_of_another_model_is_refused_even_with_its_hashes_recorded(
    exported_lvit, tmp_path: Path, graph: str
) -> None:
    """Every graph a backend may run is checked against the manifest's inputs and output, not only network.onnx:
    an image-only network in a text model's folder (or the reverse) cannot run with a recorded hash."""
    _, _, lvit = exported_lvit
    _, _, unet = _export(tmp_path / "unet", "unet", {}, "openvino")
    files = ["network.xml", "network.bin"] if graph == "openvino" else ["network.onnx"]
    backend = "openvino" if graph == "openvino" else "onnx"
    first = files[0]
    for manifest_of, network_of, expected in (
        (lvit, unet, f"{first} has no input 'text_0', which network.inputs lists (its inputs: images)"),
        (unet, lvit, f"{first} takes the input 'text_0' (32x64, float32), which network.inputs does not list"),
    ):
        mixed = Path(tmp_path / f"{manifest_of.name}-with-{network_of.name}-{graph}")
        import shutil

        shutil.copytree(manifest_of, mixed)
        for name in files:
            (mixed / name).write_bytes((network_of / name).read_bytes())
        _rehash(mixed)
        message = _refusal(mixed, backend)
        assert expected in message, message


def test_a_folder_exported_before_hashes_loads_with_a_warning(
    exported_lvit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _, folder = exported_lvit
    copy = _copy(folder, tmp_path)
    _edit_manifest(copy, lambda manifest: [manifest.pop(key) for key in ("sha256", "network")])
    expected = load_model(folder, backend="onnx").probabilities(model.example_images, REPORTS)
    found = load_model(copy, backend="onnx").probabilities(model.example_images, REPORTS)
    assert torch.equal(found, expected)
    assert "records no SHA-256 of its files" in caplog.text and "cannot be verified" in caplog.text
    # the declarations are still checked against the graph
    _edit_manifest(copy, _set("image.input.name", "pixels"))
    assert "image.input.name: manifest says 'pixels'" in _refusal(copy)


def test_an_unknown_manifest_key_is_left_alone(exported_lvit, tmp_path: Path) -> None:
    model, _, folder = exported_lvit
    copy = _copy(folder, tmp_path)
    _edit_manifest(copy, _set("a_later_record", {"kept": True}))
    assert load_model(copy, backend="onnx").probabilities(model.example_images, REPORTS).shape[0] == 2


def test_openvino_load_errors_are_one_line_without_parser_noise(
    exported_lvit, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    _, _, folder = exported_lvit
    copy = _copy(folder, tmp_path)
    _edit_manifest(copy, lambda manifest: manifest.pop("sha256"))  # an unverifiable folder reaches OpenVINO
    (copy / "network.xml").write_text("<net><layers><layer id='0' type='Parameter'>")
    capfd.readouterr()
    with pytest.raises(LvsegError) as caught:
        load_model(copy, backend="openvino")
    message = str(caught.value)
    assert "\n" not in message  # the folder's check reads the graph first, and says so in one line
    assert "network.xml: not a readable OpenVINO model (Unable to read the model" in message
    assert "Exception from src/" not in message
    assert capfd.readouterr().err == ""


def test_exporting_again_in_another_format_leaves_no_stale_graph(exported_lvit, tmp_path: Path) -> None:
    from lvseg.inference.export import export_model

    _, checkpoint, folder = exported_lvit
    copy = _copy(folder, tmp_path)
    export_model(checkpoint, copy, "onnx")
    assert not (copy / "network.xml").exists() and not (copy / "network.bin").exists()
    segmenter = load_model(copy, backend="openvino")  # OpenVINO runs network.onnx now
    assert segmenter.backend == "openvino"
    assert json.loads((copy / "lvseg_export.json").read_text())["format"] == "onnx"
