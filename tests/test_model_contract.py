"""The model contract, checked for every registered model (``list_models()``) on tiny sizes.

A model that registers itself is tested here with no new test code: forward in training and eval
mode, gradients from its declared losses, config round trip, a short ``lvseg train`` run, the
checkpoint through ``lvseg.load_model``, ``evaluate`` with given/shuffled/empty text, ``lvseg predict``,
`lvseg serve` of the checkpoint and of its export folder, a semi-supervised step and ``lvseg info``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.data.layout import load_split
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.models import (
    ModelOutput,
    SegmentationModel,
    create_model,
    list_models,
    model_class,
    register_model,
    unregister_model,
)
from lvseg.models.base import as_output

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_clip, save_tiny_clipseg
from official_biomedclip_layout import save_tiny_biomedclip
from serving_support import REPORT, png_bytes

IMG_SIZE = 32
REPORTS = [REPORT, "Unilateral pulmonary infection, one infected area, lower left lung.", "No pulmonary infection."]


@functools.cache
def tiny_pretrained(layout: str) -> Path:
    """Tiny random pretrained models in their published file layouts (nothing is downloaded), what a model's
    ``tiny_options`` asks for: "clip-text" (a CLIP text tower), "clipseg" (image width 128, as the tiny
    BiomedCLIP's, so its decoder fits -d) and "biomedclip" (open_clip's layout)."""
    folder = Path(tempfile.mkdtemp(prefix=f"lvseg-{layout}-"))
    if layout == "clip-text":
        return save_tiny_clip(folder)
    if layout == "clipseg":
        return save_tiny_clipseg(folder, vision_width=128)
    if layout == "biomedclip":
        return save_tiny_biomedclip(folder)[0]
    raise ValueError(f"no tiny pretrained model in the layout {layout!r}")


def tiny_options(name: str) -> dict[str, Any]:
    """Small options for ``name``: its default text encoder (text models) and what the model declares in
    ``tiny_options``."""
    cls = model_class(name)
    options: dict[str, Any] = {"img_size": IMG_SIZE}
    if cls.requires_text and cls.default_text_encoder:
        options["text_encoder"] = cls.default_text_encoder
    return options | cls.tiny_options(tiny_pretrained)


def cli_options(options: dict[str, Any]) -> list[str]:
    """``lvseg train`` flags for model options: the shared flags where there is one, else --model-option."""
    flags = []
    for key, value in options.items():
        if key == "img_size":
            continue
        if key in ("base_channels", "text_encoder"):
            flags.append(f"--{key.replace('_', '-')}={value}")
        else:
            flags += ["--model-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return flags


def build(name: str) -> SegmentationModel:
    torch.manual_seed(0)
    return create_model(name, texts=REPORTS, **tiny_options(name))


MODELS = list_models()


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="ONNX Runtime (the deploy extra) is missing"
)
@pytest.mark.parametrize("name", MODELS)
def test_the_exported_network_takes_any_batch_and_report_length(name: str) -> None:
    """The exporting backends run every registered model: one graph for batches of 1 and 2 and for reports
    of different lengths (CLIP-style tokenizers pad to the longest report), as eager computes them."""
    from lvseg.inference import Segmenter

    model = build(name).eval()
    images = torch.rand(2, 3, IMG_SIZE, IMG_SIZE)
    eager, exported = Segmenter(model, device="cpu"), Segmenter(model, device="cpu", backend="onnx")
    assert exported.backend == "onnx"
    for texts in (REPORTS[:1], REPORTS[1:2], REPORTS[:2]):
        batch = images[: len(texts)]
        difference = (eager.probabilities(batch, texts) - exported.probabilities(batch, texts)).abs().max()
        assert float(difference) < 1e-4, (texts, float(difference))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contract") / "data"
    generate_synthetic_dataset(root, n=12, size=IMG_SIZE, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``lvseg train`` for one epoch per registered model: {name: best.ckpt}."""
    runs = tmp_path_factory.mktemp("runs")
    checkpoints = {}
    for name in MODELS:
        out = runs / name
        extra = cli_options(tiny_options(name))
        result = CliRunner().invoke(
            app,
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--model",
                name,
                "--img-size",
                str(IMG_SIZE),
                "--batch-size",
                "4",
                "--max-epochs",
                "1",
                "--augment",
                "none",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        checkpoints[name] = out / "best.ckpt"
    return checkpoints


@pytest.mark.parametrize("name", MODELS)
def test_forward_in_training_and_eval_mode(name: str) -> None:
    model = build(name)
    images = torch.rand(2, model.config.get("in_channels", 3), IMG_SIZE, IMG_SIZE)
    model.train()
    output = model(images, model.encode_text(REPORTS[:2]))
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (2, 1, IMG_SIZE, IMG_SIZE)
    assert all(value.shape[0] == 2 for value in output.aux.values())
    model.eval()
    with torch.no_grad():
        logits = model(images, model.encode_text(REPORTS[:2]))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 1, IMG_SIZE, IMG_SIZE)
    probability = model.predict_proba(images, REPORTS[:2])
    assert probability.shape == (2, 1, IMG_SIZE, IMG_SIZE) and probability.dtype == torch.float32
    assert float(probability.min()) >= 0 and float(probability.max()) <= 1
    torch.testing.assert_close(probability, torch.sigmoid(logits))


@pytest.mark.parametrize("name", MODELS)
def test_every_trainable_parameter_gets_a_gradient_from_the_declared_losses(name: str) -> None:
    """Summed over three seeded inits and batches (a ReLU can be dead for one random init, e.g. in
    PLAM's 6-unit bottleneck), every trainable parameter gets a non-zero gradient from the loss terms."""
    reached: set[str] = set()
    for seed in range(3):
        torch.manual_seed(seed)
        model = create_model(name, texts=REPORTS, **tiny_options(name)).train()
        images = torch.rand(2, model.config.get("in_channels", 3), IMG_SIZE, IMG_SIZE)
        target = torch.zeros(2, 1, IMG_SIZE, IMG_SIZE)
        target[:, :, 8:20, 4:14] = 1.0
        terms = model.compute_losses(model(images, model.encode_text(REPORTS[:2])), target)
        assert set(model.loss_weights) <= set(terms) and all(term.ndim == 0 for term in terms.values())
        torch.stack(list(terms.values())).sum().backward()
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not trainable - reached, f"parameters without gradient: {sorted(trainable - reached)[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_config_rebuilds_an_equal_model(name: str) -> None:
    model = build(name).eval()
    json.dumps(model.config)  # JSON-able: it travels in checkpoints
    twin = create_model(name, **model.config).eval()
    twin.load_weights(model.state_dict())
    assert twin.config == model.config
    images = torch.rand(1, model.config.get("in_channels", 3), IMG_SIZE, IMG_SIZE)
    torch.testing.assert_close(twin.predict_proba(images, REPORTS[:1]), model.predict_proba(images, REPORTS[:1]))


@pytest.mark.parametrize("name", MODELS)
def test_trained_checkpoint_loads_with_identical_outputs(name: str, trained: dict[str, Path], data: Path) -> None:
    from lvseg.checkpoint import read_checkpoint_dict
    from lvseg.inference import load_model
    from lvseg.training.module import SegmentationTask

    checkpoint = read_checkpoint_dict(trained[name])
    assert checkpoint["lvseg"]["format"] == 2 and checkpoint["hyper_parameters"]["model_name"] == name
    segmenter = load_model(trained[name], device="cpu")
    # The module as training left it, restored by Lightning itself (not by lvseg's loader).
    trained_model = SegmentationTask.load_from_checkpoint(trained[name], map_location="cpu", weights_only=True).model
    images = torch.rand(2, segmenter.in_channels, IMG_SIZE, IMG_SIZE)
    texts = [s.text for s in load_split(data, "test")[:2]]
    torch.testing.assert_close(
        segmenter.probabilities(images, texts), trained_model.eval().predict_proba(images, texts)
    )
    sample = load_split(data, "test")[0]
    prediction = segmenter.predict(sample.image_path, sample.text)
    assert prediction.mask.shape == (IMG_SIZE, IMG_SIZE) and set(np.unique(prediction.mask)) <= {0, 1}


@pytest.mark.parametrize("name", MODELS)
def test_inference_checkpoint_round_trip(name: str, trained: dict[str, Path], tmp_path: Path) -> None:
    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict, save_inference_checkpoint
    from lvseg.inference import load_model

    segmenter = load_model(trained[name], device="cpu")
    save_inference_checkpoint(tmp_path / "slim.ckpt", segmenter.model, metrics=segmenter.metrics)
    slim = read_checkpoint_dict(tmp_path / "slim.ckpt")
    assert slim["lvseg"]["training_modules"] == "dropped" and "optimizer_states" not in slim
    again = load_checkpoint(tmp_path / "slim.ckpt").model
    images = torch.rand(2, segmenter.in_channels, IMG_SIZE, IMG_SIZE)
    torch.testing.assert_close(again.predict_proba(images, REPORTS[:2]), segmenter.probabilities(images, REPORTS[:2]))


@pytest.mark.parametrize("name", MODELS)
def test_evaluate_with_given_shuffled_and_empty_text(
    name: str, trained: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    from lvseg.evaluation.evaluate import evaluate_modes

    segmenter_modes = ("given", "shuffled", "empty")
    reports = evaluate_modes(trained[name], data, "test", modes=segmenter_modes, out=tmp_path, device="cpu")
    for mode in segmenter_modes:
        assert 0.0 <= reports[mode].dice <= 1.0
    if not model_class(name).requires_text:  # image-only: text changes nothing
        assert reports["given"].dice == reports["shuffled"].dice == reports["empty"].dice


@pytest.mark.parametrize("name", MODELS)
def test_lvseg_predict_and_info(name: str, trained: dict[str, Path], data: Path, tmp_path: Path) -> None:
    sample = load_split(data, "test")[0]
    text = ["--text", sample.text] if model_class(name).requires_text else []
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(trained[name]),
            "--image",
            str(sample.image_path),
            *text,
            "--out",
            str(tmp_path / "mask.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mask.png").is_file()
    result = CliRunner().invoke(app, ["info", "--model", name, "--img-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["parameters"] >= report["trainable_parameters"] > 0 and report["gflops"] > 0
    result = CliRunner().invoke(app, ["info", "--all", "--json"])
    assert name in [row["model"] for row in json.loads(result.stdout)]


@pytest.mark.parametrize("source", ["checkpoint", "export folder"])
@pytest.mark.parametrize("name", MODELS)
def test_lvseg_serve_starts_and_serves(name: str, source: str, trained: dict[str, Path], tmp_path: Path) -> None:
    """What `lvseg serve` builds (the app factory, the warm-up included) for the trained checkpoint and for its
    export folder; regression: C2FVL's warm-up sent a report its grammar refuses and serve exited."""
    from lvseg.cli.serve import build_app
    from lvseg.inference import load_model

    served = trained[name]
    if source == "export folder":
        if importlib.util.find_spec("onnxruntime") is None:
            pytest.skip("ONNX Runtime (the deploy extra) is missing")
        from lvseg.inference.export import export_model

        export_model(trained[name], tmp_path / "export", "onnx")
        served = tmp_path / "export"
    image = png_bytes()
    # The app runs auto: the fastest backend that passed this checkpoint's guard; the Python API with auto too.
    expected = load_model(served, device="cpu", backend="auto").predict(image, REPORT).mask
    with TestClient(build_app(served, "cpu", None), base_url="http://localhost") as client:
        assert client.get("/api/model").json()["model"] == name
        response = client.post("/api/segment", files={"image": ("scan.png", image, "image/png")}, data={"text": REPORT})
        assert response.status_code == 200, response.text
        assert response.json()["area_px"] == int(expected.sum())  # the same mask as the Python API


@pytest.mark.parametrize("name", MODELS)
def test_training_tunes_every_backend_and_auto_follows_the_record(
    name: str, trained: dict[str, Path], data: Path
) -> None:
    """Every model gets every backend through the contract: training measured each one on the validation images
    (recorded in best.ckpt), each that passed runs from the checkpoint and its masks agree with eager's on those
    images again (the floating-point backends' probabilities too), and auto runs the fastest of them."""
    from lvseg.backend_record import GUARD_MIN_DICE
    from lvseg.checkpoint import load_checkpoint
    from lvseg.data.images import read_image, resize_image
    from lvseg.inference import load_model
    from lvseg.inference.backends import agreement
    from lvseg.inference.tuning import default_backends

    record = load_checkpoint(trained[name]).backend_record
    assert record is not None, "lvseg train did not tune the backends"
    expected = [backend for backend in default_backends(torch.device("cpu")) if backend != "openvino-int8"]
    assert [trial.backend for trial in record.trials] == expected
    samples = load_split(data, "val")
    reference_model = load_model(trained[name], device="cpu", backend="eager")
    images = torch.stack([resize_image(read_image(s.image_path), IMG_SIZE) for s in samples])
    texts = [s.text for s in samples]
    reference = reference_model.probabilities(images, texts).numpy()
    for backend in record.passed():
        candidate = load_model(trained[name], device="cpu", backend=backend).probabilities(images, texts).numpy()
        agreed = agreement(reference, candidate, reference_model.decision_threshold)
        # The guard's rule, with a little room: bf16 kernels may round differently at another batch size.
        assert agreed["min_dice"] >= GUARD_MIN_DICE - 0.01, (backend, agreed)
        if backend in ("onnx", "openvino"):  # fp32: the same numbers up to summation order
            assert agreed["max_abs_diff"] < 1e-3, (backend, agreed)
    assert load_model(trained[name], device="cpu", backend="auto").backend == record.passed()[0]


@pytest.mark.parametrize("name", MODELS)
def test_a_semi_supervised_step(name: str) -> None:
    from lvseg.training.pseudo_labels import PseudoLabelBank
    from lvseg.training.semi import SemiSupervisedTask

    torch.manual_seed(0)
    task = SemiSupervisedTask(
        model_name=name,
        model_config=tiny_options(name),
        model_texts=REPORTS,
        warmup_epochs=0.0,
        rampup_epochs=0.0,
        lv_weight=0.0,
    )
    bank = PseudoLabelBank(["u0", "u1"], img_size=IMG_SIZE, beta=0.9)
    mask = torch.zeros(2, 1, IMG_SIZE, IMG_SIZE)
    mask[:, :, 4:12, 4:12] = 1
    bank.update(torch.tensor([0, 1]), mask)  # earlier pseudo-labels holding a lesion
    task.attach(bank, seed=0)
    batch = {
        "image": torch.rand(4, 3, IMG_SIZE, IMG_SIZE),
        "mask": torch.cat([mask, mask]),
        "text": REPORTS + REPORTS[:1],
        "labeled": torch.tensor([True, True, False, False]),
        "index": torch.tensor([0, 1, 0, 1]),
    }
    task.train()
    prepared = task.prepare_batch(batch, 0)
    terms = task.loss_terms(as_output(task(prepared["image"], prepared["text"])), prepared, 0)
    assert set(task.model.loss_weights) | {"pseudo"} <= set(terms)  # the model's terms + the pseudo-label term
    assert task.training_step(batch, 0).requires_grad
    assert not torch.equal(bank.labels.float(), torch.cat([mask, mask])[:2, 0])  # the teacher updated them (EPI)
    frozen = {id(m) for m in task.model.frozen_modules()}
    assert frozen == {id(m) for m in task.teacher.model.frozen_modules()}  # shared, not copied


# ------------------------------------------------------------------- the contract's own mechanisms


class _WithTrainingBranch(SegmentationModel):
    """A tiny model with an auxiliary output, an extra loss term and a training-only module."""

    training_only_modules = ("reconstructor",)
    loss_weights = {"dice": 0.5, "bce": 0.5, "reconstruction": 2.0}

    def __init__(self, *, in_channels: int = 3, img_size: int = 32, width: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = torch.nn.Conv2d(width, 1, 1)
        self.reconstructor = torch.nn.Conv2d(width, in_channels, 1)

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        features = torch.relu(self.body(images))
        logits = self.head(features)
        if not self.training:
            return logits
        return ModelOutput(logits, {"reconstruction": self.reconstructor(features), "images": images})

    def compute_losses(self, output, target, weight=None):  # type: ignore[no-untyped-def]
        terms = super().compute_losses(output, target, weight)
        if isinstance(output, ModelOutput) and output.aux:
            error = (output.aux["reconstruction"] - output.aux["images"]).pow(2).mean()
            terms["reconstruction"] = self.loss_weights["reconstruction"] * error
        return terms


@pytest.fixture
def branch_model() -> Iterator[str]:
    register_model("contract-branch")(_WithTrainingBranch)
    yield "contract-branch"
    unregister_model("contract-branch")


def test_training_only_modules_are_dropped_from_inference_checkpoints(branch_model: str, tmp_path: Path) -> None:
    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict, save_inference_checkpoint

    model = create_model(branch_model, width=6)
    assert model.config == {"in_channels": 3, "img_size": 32, "width": 6}  # captured from the constructor
    counts = model.parameter_counts()
    assert counts["training_only"] == 6 * 3 + 3 and counts["inference"] == counts["total"] - counts["training_only"]
    save_inference_checkpoint(tmp_path / "m.ckpt", model)
    saved = read_checkpoint_dict(tmp_path / "m.ckpt")
    assert not any("reconstructor" in key for key in saved["state_dict"])
    assert saved["lvseg"]["training_modules"] == "dropped"
    loaded = load_checkpoint(tmp_path / "m.ckpt").model
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.predict_proba(images, [""]), model.eval().predict_proba(images, [""]))


def test_declared_terms_are_summed_and_logged_by_name(branch_model: str, tmp_path: Path) -> None:
    import csv

    from lvseg.training.fit import train
    from lvseg.training.options import TrainConfig

    data = tmp_path / "data"
    generate_synthetic_dataset(data, n=8, size=32, seed=0)
    train(
        TrainConfig(
            data=data,
            out=tmp_path / "run",
            model=branch_model,
            img_size=32,
            batch_size=4,
            max_epochs=1,
            progress_bar=False,
        )
    )
    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    epoch = next(row for row in rows if row.get("train_loss_epoch"))
    terms = [float(epoch[f"train_{name}"]) for name in ("dice", "bce", "reconstruction")]
    assert all(term > 0 for term in terms)
    assert float(epoch["train_loss_epoch"]) == pytest.approx(sum(terms), rel=1e-4)


def test_unknown_model_option_is_named() -> None:
    from lvseg.errors import LvsegError

    with pytest.raises(LvsegError, match="does not take option.*n_classes"):
        create_model("lvit", n_classes=2)


def test_prediction_path_does_not_import_lightning() -> None:
    import subprocess

    code = (
        "import sys, lvseg, lvseg.inference, lvseg.checkpoint, lvseg.serving.app; "
        "lvseg.create_model('unet', img_size=32, base_channels=4); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_a_frozen_hf_encoder_is_registered_shared_by_the_teacher_and_not_stored(tmp_path: Path) -> None:
    from hf_support import save_tiny_bert
    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict, save_inference_checkpoint
    from lvseg.training.teacher import EmaTeacher

    bert = save_tiny_bert(tmp_path / "bert", hidden=16)
    model = create_model("lvit", img_size=32, base_channels=8, text_encoder=f"hf:{bert}", text_len=8)
    assert model.config["text_encoder"] == {"type": "hf", "name_or_path": str(bert), "max_length": 8}
    hf_parameters = list(model.text_encoder.hf_model.parameters())
    assert hf_parameters and all(not p.requires_grad for p in hf_parameters)
    assert {id(p) for p in hf_parameters} <= {id(p) for p in model.parameters()}  # registered: .to() reaches it
    model.train()
    assert not model.text_encoder.hf_model.training  # kept in eval mode
    assert not any("hf_model" in key for key in model.state_dict())
    assert model.pretrained_sources() == {"text_encoder": str(bert)}

    teacher = EmaTeacher(model, decay=0.5)
    assert teacher.model.text_encoder is model.text_encoder  # shared, not copied
    assert teacher.model.inc is not model.inc

    save_inference_checkpoint(tmp_path / "m.ckpt", model)
    saved = read_checkpoint_dict(tmp_path / "m.ckpt")
    assert saved["lvseg"]["pretrained"] == {"model.text_encoder": str(bert)}
    loaded = load_checkpoint(tmp_path / "m.ckpt").model
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        loaded.predict_proba(images, REPORTS[:1]), model.eval().predict_proba(images, REPORTS[:1])
    )
