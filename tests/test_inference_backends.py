"""Inference backends against the fp32 eager reference (the accuracy guard), on small trained models."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lvseg.errors import LvsegError
from lvseg.inference import Segmenter
from lvseg.inference.backends import agreement, cpu_has_bf16, resolve_backend
from lvseg.models import create_model

SIZE = 32
REPORTS = [
    "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
    "Unilateral pulmonary infection, one infected area, lower left lung.",
]


def _fitted(name: str, **options: object) -> torch.nn.Module:
    """A tiny model fitted for 60 steps to two images and masks, so its masks are decisive (the guard
    compares masks; an untrained model sits at probability 0.5 everywhere)."""
    torch.manual_seed(0)
    model = create_model(name, img_size=SIZE, base_channels=8, texts=REPORTS, **options)
    images = torch.rand(2, 3, SIZE, SIZE)
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[0, :, 4:14, 4:14] = 1
    masks[1, :, 16:28, 10:30] = 1
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        terms = model.compute_losses(model(images, model.encode_text(REPORTS)), masks)
        torch.stack(list(terms.values())).sum().backward()
        optimizer.step()
    model.eval()
    model.example_images = images
    return model


AVAILABLE = ["bf16"] + [
    name
    for name, module in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("openvino-bf16", "openvino"))
    if importlib.util.find_spec(module) is not None
]


@pytest.mark.parametrize(
    "model_name,options",
    [("unet", {}), ("lvit", {"text_encoder": "learned"}), ("c2fvl", {}), ("reclmis", {"text_encoder": "learned"})],
)
@pytest.mark.parametrize("backend", AVAILABLE)
def test_every_backend_passes_the_accuracy_guard(model_name: str, options: dict, backend: str) -> None:
    model = _fitted(model_name, **options)
    images = model.example_images
    reference = Segmenter(model, device="cpu", backend="eager").probabilities(images, REPORTS).numpy()
    fast = Segmenter(model, device="cpu", backend=backend)
    assert fast.backend == backend
    found = agreement(reference, fast.probabilities(images, REPORTS).numpy())
    assert found["min_dice"] >= 0.99, found
    exact = backend in ("onnx", "openvino") or (backend in ("bf16", "openvino-bf16") and not cpu_has_bf16())
    assert found["max_abs_diff"] < (1e-4 if exact else 0.05), found
    # batches of another size run through the same exported graph (dynamic batch axis)
    single = fast.probabilities(images[:1], REPORTS[:1]).numpy()
    assert agreement(reference[:1], single)["min_dice"] >= 0.99


def test_the_guard_sees_a_different_mask() -> None:
    first = np.zeros((1, 1, 8, 8), np.float32)
    first[..., :4, :] = 0.9
    second = first.copy()
    second[..., 3, :] = 0.1
    found = agreement(first, second)
    assert found["min_dice"] == pytest.approx(2 * 24 / (32 + 24)) and found["max_abs_diff"] == pytest.approx(0.8)
    assert agreement(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))["min_dice"] == 1.0


def test_backend_names_are_checked_and_auto_resolves() -> None:
    with pytest.raises(LvsegError, match="unknown backend 'fast'"):
        resolve_backend("fast", torch.device("cpu"))
    expected = (
        "openvino"
        if importlib.util.find_spec("openvino")
        else "onnx"
        if importlib.util.find_spec("onnxruntime")
        else "eager"
    )
    assert resolve_backend("auto", torch.device("cpu")) == expected  # the fastest that passes the guard
    assert resolve_backend("eager", torch.device("cpu")) == "eager"


def test_lvseg_predict_takes_a_backend(tmp_path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.cli.main import app

    model = _fitted("lvit", text_encoder="learned")
    save_inference_checkpoint(tmp_path / "m.ckpt", model)
    image = (model.example_images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    masks = {}
    for backend in ("eager", "bf16"):
        result = CliRunner().invoke(
            app,
            [
                "predict",
                "-c",
                str(tmp_path / "m.ckpt"),
                "-i",
                str(tmp_path / "x.png"),
                "-t",
                REPORTS[0],
                "-o",
                str(tmp_path / f"{backend}.png"),
                "--backend",
                backend,
            ],
        )
        assert result.exit_code == 0, result.output
        masks[backend] = np.asarray(Image.open(tmp_path / f"{backend}.png")) > 0
    assert (
        agreement(masks["eager"][None].astype(np.float32), masks["bf16"][None].astype(np.float32))["min_dice"] >= 0.99
    )


def _run_exported_with_plain_onnxruntime(folder, image_path, report: str) -> np.ndarray:
    """What a deployment without lvseg does, following lvseg_export.json: probabilities (S, S)."""
    import json
    import re

    import onnxruntime
    from PIL import Image

    manifest = json.loads((folder / "lvseg_export.json").read_text())
    size = manifest["image"]["size"]
    pixels = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.nn.functional.interpolate(
        torch.from_numpy(pixels).permute(2, 0, 1)[None],
        size=(size, size),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    ).clamp(0, 1)
    feed = {"images": tensor.numpy()}
    text = manifest["text"]
    tokenize = text["tokenize"]
    vocab = {word: index for index, word in enumerate(text["vocab"])}
    ids = [vocab.get(token, tokenize["unknown_id"]) for token in re.findall(tokenize["regex"], report.lower())]
    ids = ids[: tokenize["max_length"]] or [tokenize["unknown_id"]]
    ids = np.array([ids + [tokenize["pad_id"]] * (tokenize["max_length"] - len(ids))], dtype=np.int64)
    encoder = onnxruntime.InferenceSession(str(folder / text["exported"]))
    feed["text_0"] = encoder.run(None, {"token_ids": ids})[0]
    network = onnxruntime.InferenceSession(str(folder / "network.onnx"))
    wanted = {item.name for item in network.get_inputs()}
    logits = network.run(None, {name: value for name, value in feed.items() if name in wanted})[0]
    return 1.0 / (1.0 + np.exp(-logits[0, 0]))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime (the deploy extra) is missing")
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_lvseg_export_round_trip(tmp_path, fmt: str) -> None:
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from lvseg.checkpoint import save_inference_checkpoint
    from lvseg.cli.main import app
    from lvseg.data.images import read_image, resize_image
    from lvseg.inference import load_model

    if fmt == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino (the deploy extra) is missing")
    model = _fitted("lvit", text_encoder="learned")
    save_inference_checkpoint(tmp_path / "m.ckpt", model)
    image = (model.example_images[1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    result = CliRunner().invoke(
        app, ["export", "-c", str(tmp_path / "m.ckpt"), "--format", fmt, "-o", str(tmp_path / "exported")]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "exported" / "lvseg_export.json").read_text())
    assert manifest["model"] == "lvit" and manifest["image"]["size"] == SIZE
    assert manifest["text"]["tensors"][0]["name"] == "text_0" and manifest["text"]["type"] == "learned"

    eager = load_model(tmp_path / "m.ckpt", device="cpu")
    images = resize_image(read_image(tmp_path / "x.png"), SIZE)[None]
    reference = eager.probabilities(images, [REPORTS[1]]).numpy()[0, 0]
    exported = _run_exported_with_plain_onnxruntime(tmp_path / "exported", tmp_path / "x.png", REPORTS[1])
    found = agreement(reference[None], exported[None])
    assert found["min_dice"] >= 0.99 and found["max_abs_diff"] < 1e-4, found
    if fmt == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(
            str(tmp_path / "exported" / "network.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        assert {name for port in compiled.inputs for name in port.get_names()} >= {"images"}


def test_export_names_its_problems(tmp_path) -> None:
    from lvseg.inference.export import export_model

    with pytest.raises(LvsegError, match="--format 'tflite' is not one of onnx, openvino"):
        export_model(tmp_path / "missing.ckpt", tmp_path / "out", "tflite")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LvsegError, match="is a file"):
        export_model(tmp_path / "missing.ckpt", tmp_path / "file", "onnx")
