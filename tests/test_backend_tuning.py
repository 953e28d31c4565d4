"""Per-checkpoint backend tuning: the guard measured on a checkpoint's images, recorded in it, read by ``auto``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data_builders import write_table
from tests.test_inference_backends import REPORTS, SIZE, _fitted
from typer.testing import CliRunner

from lvseg.backend_record import BackendRecord, BackendTrial, hardware_description
from lvseg.checkpoint import load_checkpoint, save_inference_checkpoint, write_backend_record
from lvseg.inference import load_model
from lvseg.inference.backends import Bf16MixedRunner, NetworkRunner
from lvseg.inference.tuning import tunable_modules, tune_backends

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_NNCF = importlib.util.find_spec("nncf") is not None and HAS_OPENVINO


def _record(passed: dict[str, float], failed: tuple[str, ...] = (), hardware: dict | None = None) -> BackendRecord:
    trials = [BackendTrial(name, True, 1.0, 0.0, ms) for name, ms in passed.items()]
    trials += [BackendTrial(name, False, 0.95, 0.3, 1.0) for name in failed]
    return BackendRecord(tuple(trials), 4, "test images", hardware or hardware_description("cpu"))


def _dataset(root: Path, model: torch.nn.Module) -> Path:
    """An LViT-layout dataset whose every split holds the fitted model's two images with their reports."""
    for prefix in ("Train", "Val", "Test"):
        folder = root / f"{prefix}_Folder"
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        rows = []
        for index, image in enumerate(model.example_images):
            name = f"case{index}.png"
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / "img" / name)
            Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(folder / "labelcol" / name)
            rows.append({"Image": name, "Description": REPORTS[index]})
        write_table(folder / f"{prefix}_text.xlsx", rows)
    return root


@pytest.fixture(scope="module")
def fitted_lvit() -> torch.nn.Module:
    return _fitted("lvit", text_encoder="learned")


def test_auto_follows_the_checkpoint_record(tmp_path: Path, fitted_lvit) -> None:
    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    assert load_model(path, device="cpu", backend="auto").backend == "openvino" if HAS_OPENVINO else True
    write_backend_record(path, _record({"eager": 9.0, "bf16": 3.0, "openvino": 5.0}))
    assert load_model(path, device="cpu", backend="auto").backend == "bf16"
    # A record that forbids bf16: auto takes the fastest backend that passed instead.
    write_backend_record(path, _record({"eager": 9.0, "onnx": 6.0}, failed=("bf16", "openvino-bf16")))
    expected = "onnx" if importlib.util.find_spec("onnxruntime") else "eager"
    assert load_model(path, device="cpu", backend="auto").backend == expected
    # One image: exporting costs more than it saves, so the record's exporting backends are passed over.
    assert load_model(path, device="cpu", backend="auto", expected_images=1).backend == "eager"
    # A record measured on other hardware says nothing here: the registry's default choice.
    write_backend_record(path, _record({"eager": 9.0, "bf16": 1.0}, hardware={"device": "cpu", "cpu": "another CPU"}))
    assert load_model(path, device="cpu", backend="auto").backend != "bf16"
    # Explicit names are unaffected by the record.
    assert load_model(path, device="cpu", backend="eager").backend == "eager"


def test_record_survives_the_checkpoint_round_trip(tmp_path: Path, fitted_lvit) -> None:
    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    assert load_checkpoint(path).backend_record is None
    record = _record({"eager": 9.0, "bf16-mixed": 4.0}, failed=("bf16",))
    write_backend_record(path, record)
    loaded = load_checkpoint(path).backend_record
    assert loaded == record
    assert loaded.passed() == ["bf16-mixed", "eager"]
    assert [row["guard"] for row in loaded.summary_rows()] == ["reference", "passed", "failed"]


def test_a_damaged_record_is_named(tmp_path: Path, fitted_lvit) -> None:
    from lvseg.checkpoint import read_checkpoint_dict
    from lvseg.errors import CheckpointError

    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    checkpoint = read_checkpoint_dict(path)
    checkpoint["lvseg"]["backends"] = {"version": 1, "trials": "not a list"}
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="m.ckpt' has a damaged backend record"):
        load_checkpoint(path)


def test_tuning_measures_every_backend_against_eager(fitted_lvit) -> None:
    names = ["eager", "bf16", "bf16-mixed"] + (["openvino", "openvino-bf16"] if HAS_OPENVINO else [])
    record = tune_backends(fitted_lvit, fitted_lvit.example_images, REPORTS, "two images", backends=names, repeats=2)
    assert [trial.backend for trial in record.trials] == names
    eager = record.trial("eager")
    assert eager is not None and eager.passed and eager.min_dice == 1.0
    for trial in record.trials:
        assert trial.error is None, trial
        assert trial.latency_ms is not None and trial.latency_ms > 0
        assert trial.passed == (trial.min_dice >= 0.99)
    assert record.images == 2 and record.applies_here("cpu")
    assert record.passed()[-1] in names and "eager" in record.passed()


def test_mixed_keeps_modules_in_fp32_until_the_guard_passes(monkeypatch, fitted_lvit) -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16: the bf16 paths compute in fp32")
    images = fitted_lvit.example_images
    with torch.no_grad():
        reference = torch.sigmoid(fitted_lvit(images, fitted_lvit.encode_text(REPORTS)))
    # A threshold where many pixels sit (the median probability), so bf16's rounding flips mask pixels.
    threshold = float(reference.median())
    monkeypatch.setattr("lvseg.inference.tuning.GUARD_MIN_DICE", 0.9999)  # stricter than the rule, on two images
    record = tune_backends(
        fitted_lvit, images, REPORTS, "two images", backends=["bf16", "bf16-mixed"], repeats=1, threshold=threshold
    )
    plain, mixed = record.trial("bf16"), record.trial("bf16-mixed")
    assert plain is not None and mixed is not None
    assert plain.min_dice < 0.9999 and not plain.passed, "bf16 agreed at this threshold: the search was not exercised"
    assert mixed.fp32_modules and set(mixed.fp32_modules) <= set(tunable_modules(fitted_lvit))
    assert mixed.min_dice > plain.min_dice


def test_mixed_runner_with_every_module_in_fp32_is_eager(fitted_lvit) -> None:
    images = fitted_lvit.example_images
    text = fitted_lvit.encode_text(REPORTS)
    with torch.no_grad():
        reference = NetworkRunner(fitted_lvit, torch.device("cpu"))(images, text)
        runner = Bf16MixedRunner(fitted_lvit, torch.device("cpu"), tuple(tunable_modules(fitted_lvit)))
        mixed = runner(images, text)
        runner.release()
        plain = Bf16MixedRunner(fitted_lvit, torch.device("cpu"), ())(images, text)
    fitted_lvit.to(memory_format=torch.contiguous_format)
    assert torch.allclose(mixed, reference, atol=1e-4)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not torch.allclose(plain, reference, atol=1e-4)  # the hooks, not the layout, made it exact


def test_mixed_without_a_record_says_how_to_get_one(tmp_path: Path, fitted_lvit) -> None:
    from lvseg.errors import LvsegError

    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    with pytest.raises(LvsegError, match="lvseg tune-backend"):
        load_model(path, device="cpu", backend="bf16-mixed")


@pytest.mark.skipif(not HAS_NNCF, reason="openvino-int8 needs OpenVINO and NNCF (the deploy extra)")
def test_int8_is_quantised_recorded_and_runs_from_the_checkpoint(tmp_path: Path, fitted_lvit) -> None:
    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    images = fitted_lvit.example_images
    record = tune_backends(
        fitted_lvit, images, REPORTS, "two images", backends=["openvino-int8"], calibration=(images, REPORTS), repeats=1
    )
    trial = record.trial("openvino-int8")
    assert trial is not None and trial.error is None and trial.details["quantisers"] > 0
    assert set(record.graphs["openvino-int8"]) == {"network-int8.xml", "network-int8.bin"}
    write_backend_record(path, record)
    segmenter = load_model(path, device="cpu", backend="openvino-int8")
    assert segmenter.backend == "openvino-int8"
    quantised = segmenter.probabilities(images, REPORTS)
    reference = load_model(path, device="cpu", backend="eager").probabilities(images, REPORTS)
    assert float((quantised - reference).abs().max()) == pytest.approx(trial.max_abs_diff, abs=1e-5)


def test_lvseg_tune_backend_records_and_prints(tmp_path: Path, fitted_lvit) -> None:
    from lvseg.cli.main import app

    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    data = _dataset(tmp_path / "data", fitted_lvit)
    result = CliRunner().invoke(
        app, ["tune-backend", "-c", str(path), "-d", str(data), "--backends", "eager,bf16", "--repeats", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "bf16" in result.output and "recorded in" in result.output
    record = load_checkpoint(path).backend_record
    assert record is not None and [t.backend for t in record.trials] == ["eager", "bf16"]
    assert record.images == 2 and "val images" in record.data
    shown = CliRunner().invoke(app, ["info", "--checkpoint", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "auto runs the fastest that passed" in shown.output and "reference" in shown.output
    as_json = CliRunner().invoke(app, ["info", "--checkpoint", str(path), "--json"])
    assert as_json.exit_code == 0 and '"backend_record"' in as_json.output


def test_lvseg_info_says_when_a_checkpoint_is_untuned(tmp_path: Path, fitted_lvit) -> None:
    from lvseg.cli.main import app

    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    shown = CliRunner().invoke(app, ["info", "-c", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "not tuned" in shown.output and "lvseg tune-backend" in shown.output


def test_training_records_the_backends_of_best_ckpt(tmp_path: Path) -> None:
    from lvseg.data.synth import generate_synthetic_dataset
    from lvseg.training.fit import TrainConfig, train

    data = tmp_path / "data"
    generate_synthetic_dataset(data, n=12, size=32, seed=0)
    options = dict(
        data=data, img_size=32, base_channels=8, max_epochs=1, text_length=12, progress_bar=False, num_workers=0
    )
    result = train(TrainConfig(out=tmp_path / "run", **options))
    record = load_checkpoint(result.best_checkpoint).backend_record
    assert record is not None and "val images" in record.data
    assert record.trial("eager") is not None and record.trial("bf16") is not None
    assert record.trial("openvino-int8") is None  # int8 is tuned on request only (minutes)
    untuned = train(TrainConfig(out=tmp_path / "untuned", tune_backends=False, **options))
    assert load_checkpoint(untuned.best_checkpoint).backend_record is None


@pytest.mark.skipif(not HAS_NNCF, reason="openvino-int8 needs OpenVINO and NNCF (the deploy extra)")
def test_export_carries_the_record_and_the_quantised_graph(tmp_path: Path, fitted_lvit) -> None:
    import json

    from lvseg.inference.export import export_model

    path = save_inference_checkpoint(tmp_path / "m.ckpt", fitted_lvit)
    images = fitted_lvit.example_images
    tuned = tune_backends(
        fitted_lvit, images, REPORTS, "two images", backends=["openvino-int8"], calibration=(images, REPORTS), repeats=1
    )
    int8 = tuned.trial("openvino-int8")
    assert int8 is not None
    # A record in which int8 passed and is the fastest, with the graph the tuning quantised.
    trials = (BackendTrial("eager", True, 1.0, 0.0, 9.0), BackendTrial("openvino", True, 1.0, 0.0, 5.0), int8)
    trials = (*trials[:2], BackendTrial("openvino-int8", True, 1.0, 0.0, 1.0, details=int8.details))
    write_backend_record(path, BackendRecord(trials, 2, "two images", hardware_description("cpu"), graphs=tuned.graphs))
    manifest = json.loads(export_model(path, tmp_path / "export", "onnx").read_text())
    assert manifest["backend_record"]["trials"][-1]["backend"] == "openvino-int8"
    assert {"network-int8.xml", "network-int8.bin"} <= set(manifest["files"]) <= set(manifest["sha256"])
    folder = load_model(tmp_path / "export", device="cpu", backend="auto")
    assert folder.backend == "openvino-int8"
    from_checkpoint = load_model(path, device="cpu", backend="openvino-int8").probabilities(images, REPORTS)
    assert torch.allclose(folder.probabilities(images, REPORTS), from_checkpoint, atol=1e-5)
    # Exported again from an untuned checkpoint, the folder loses the quantised graph and auto its record.
    save_inference_checkpoint(path, fitted_lvit)
    manifest = json.loads(export_model(path, tmp_path / "export", "onnx").read_text())
    assert manifest["backend_record"] is None and not (tmp_path / "export" / "network-int8.xml").exists()
    assert load_model(tmp_path / "export", device="cpu", backend="auto").backend in ("openvino", "onnx")
