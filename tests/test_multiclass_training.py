"""Training and evaluating text models on multi-class data (label maps, the VLSM study's layout): per-class
samples through ``train(TrainConfig(...))`` and ``lvseg evaluate`` with per-class metrics and the class swap.

Tiny: 8 synthetic 32 px images, one epoch, an 8-channel network.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lvseg.data.formats import load_dataset_split
from lvseg.data.layout import Sample
from lvseg.data.synth_classes import generate_multiclass_dataset
from lvseg.evaluation.class_swap import _summary, swap_pairs
from lvseg.evaluation.classes import class_mean, per_class_means
from lvseg.evaluation.evaluate import ImageResult
from lvseg.training.fit import TrainConfig, class_balanced_sampler, train


def tiny(data: Path, out: Path, **overrides) -> TrainConfig:
    options = dict(
        data=data,
        out=out,
        img_size=32,
        base_channels=8,
        max_epochs=1,
        patience=5,
        text_length=12,
        progress_bar=False,
        num_workers=0,
        seed=0,
        augment="none",
    )
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def label_maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mc") / "lvit"
    generate_multiclass_dataset(root, n=8, size=32, seed=0)
    return root


def test_lvit_trains_on_label_maps_and_evaluates_per_class(label_maps: Path, tmp_path: Path) -> None:
    from lvseg.checkpoint import read_backend_record
    from lvseg.cli.main import app
    from lvseg.training.checkpoint import read_checkpoint_dict

    result = train(tiny(label_maps, tmp_path / "run", balance_classes=True, modality="synthetic phantom image"))
    assert result.best_checkpoint.is_file()
    saved = read_checkpoint_dict(result.best_checkpoint)
    assert saved["hyper_parameters"]["classes"] == ["disc", "ring", "bar"]
    record = read_backend_record(saved, result.best_checkpoint)
    assert record is not None and record.trial("eager") is not None  # training tuned the backends on label maps
    out = tmp_path / "eval"
    command = ["evaluate", "-c", str(result.best_checkpoint), "-d", str(label_maps), "-o", str(out)]
    outcome = CliRunner().invoke(app, [*command, "--overlays", "0", "--modality", "synthetic phantom image"])
    assert outcome.exit_code == 0, outcome.output
    assert "per class" in outcome.output and "class swap" in outcome.output
    metrics = json.loads((out / "metrics.json").read_text())
    given = metrics["modes"]["given"]
    assert set(given["per_class"]) == {"disc", "ring", "bar"}
    assert sum(values["n"] for values in given["per_class"].values()) == given["n_images"] == 6
    assert given["class_mean"]["dice"] == pytest.approx(
        np.mean([values["dice"] for values in given["per_class"].values()])
    )
    assert set(metrics["text_reliance_per_class"]) == {"disc", "ring", "bar"}
    header = (out / "given" / "per_image.csv").read_text().splitlines()[0]
    assert header.startswith("name,class,text,dice")
    swap = json.loads((out / "class_swap.json").read_text())
    assert swap["n_pairs"] > 0 and -1 <= swap["class_swap_reliance"] <= 1


def test_a_vlsm_layout_set_trains_and_evaluates(tmp_path: Path) -> None:
    from lvseg.evaluation.evaluate import evaluate
    from lvseg.training.fit import _all_texts

    root = tmp_path / "vlsm"
    generate_multiclass_dataset(root, n=8, size=32, seed=1, layout="vlsm")
    result = train(tiny(root, tmp_path / "run", prompt_type="random"))
    assert result.best_checkpoint.is_file()
    # The learned vocabulary is built on every prompt a sample may draw (p1 is a list of two in each record).
    texts = _all_texts(load_dataset_split(root, "train"))
    assert {"disc", "disc in a synthetic phantom image"} <= set(texts)
    report = evaluate(result.best_checkpoint, root, n_overlays=0)
    assert set(report.per_class) <= {"disc", "ring", "bar"} and report.per_class


def test_class_balanced_sampler_draws_each_class_equally() -> None:
    samples = [Sample(f"s{i}", Path("x.png"), Path("m.png"), "t", class_name="a") for i in range(18)]
    samples += [Sample(f"r{i}", Path("y.png"), Path("m.png"), "t", class_name="b") for i in range(2)]
    sampler = class_balanced_sampler(samples, seed=0)
    drawn: Counter[str] = Counter()
    for epoch in range(50):  # Lightning sets each epoch; an epoch's draws are a function of (seed, epoch)
        sampler.set_epoch(epoch)
        drawn.update(samples[index].class_name for index in sampler)
    assert abs(drawn["a"] - drawn["b"]) / sum(drawn.values()) < 0.1  # uniform would give 90 % "a"


def test_per_class_means_count_a_correct_empty_answer_as_dice_one() -> None:
    results = [
        ImageResult("a:liver", "liver", 0.5, 0.4, 0.5, 0.4, 3.0, "liver"),
        ImageResult("b:liver", "liver", 1.0, 1.0, 1.0, 1.0, float("nan"), "liver"),  # empty truth and prediction
        ImageResult("a:kidney", "kidney", 0.0, 0.0, 0.0, 0.0, float("nan"), "kidney"),
    ]
    per_class = per_class_means(results)
    assert per_class["liver"]["dice"] == 0.75 and per_class["liver"]["hd95"] == 3.0 and per_class["liver"]["n"] == 2
    assert class_mean(per_class)["dice"] == pytest.approx(0.375)
    assert per_class_means([ImageResult("x", "t", 1, 1, 1, 1, 1)]) == {}


def test_swap_pairs_use_another_present_class_of_the_same_image(label_maps: Path) -> None:
    samples = load_dataset_split(label_maps, "train")
    pairs = swap_pairs(samples, seed=0)
    assert pairs
    for i, j in pairs:
        assert samples[i].image_path == samples[j].image_path and samples[i].class_name != samples[j].class_name
        from lvseg.data.classes import read_sample_mask

        assert read_sample_mask(samples[i]).any() and read_sample_mask(samples[j]).any()
    # A model that follows the prompt scores +1, one that keeps to the original structure -1.
    from lvseg.evaluation.class_swap import SwapResult

    follower = _summary("m", "test", [SwapResult("a", "x", "y", "t", 1.0, 0.0)])
    stayer = _summary("m", "test", [SwapResult("a", "x", "y", "t", 0.0, 1.0)])
    assert follower.class_swap_reliance == 1.0 and stayer.class_swap_reliance == -1.0


# ------------------------------------------------------------------ one output channel per class (U-Net)


@pytest.fixture(scope="module")
def unet_channels(label_maps: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-Net trained on the label maps: one output channel per class."""
    out = tmp_path_factory.mktemp("unet_channels") / "run"
    return train(tiny(label_maps, out, model="unet", augment="rotate", max_epochs=2)).best_checkpoint


def test_unet_trains_one_channel_per_class_and_records_the_class_table(unet_channels: Path) -> None:
    import csv

    import torch

    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict

    hparams = read_checkpoint_dict(unet_channels)["hyper_parameters"]
    assert hparams["model_config"]["n_classes"] == 3
    assert hparams["class_table"] == [
        {"value": 1, "name": "disc", "template": None},
        {"value": 2, "name": "ring", "template": None},
        {"value": 3, "name": "bar", "template": None},
    ]
    assert hparams["data_options"] | {"seed": 0} == {
        "layout": "lvit",
        "classes": None,
        "prompt_type": "random",
        "negative_ratio": 1.0,
        "modality": "image",
        "split_image_folders": None,
        "seed": 0,
        "balance_classes": False,
    }
    loaded = load_checkpoint(unet_channels)
    assert loaded.model.output_classes == 3
    assert loaded.backend_record is not None and "eager" in loaded.backend_record.passed()  # tuned per channel
    assert loaded.model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with open(unet_channels.parent / "logs" / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_dice")]
    per_class = [float(rows[-1][f"val_dice_{name}"]) for name in ("disc", "ring", "bar")]
    assert float(rows[-1]["val_dice"]) == pytest.approx(np.mean(per_class), abs=1e-6)  # val_dice: mean over classes


def test_lvseg_evaluate_scores_each_channel_on_the_text_models_samples(
    unet_channels: Path, label_maps: Path, tmp_path: Path
) -> None:
    from lvseg.cli.main import app

    out = tmp_path / "eval"
    command = ["evaluate", "-c", str(unet_channels), "-d", str(label_maps), "-o", str(out), "--overlays", "1"]
    outcome = CliRunner().invoke(app, command)
    assert outcome.exit_code == 0, outcome.output
    assert "per class" in outcome.output and "class swap: not applicable" in outcome.output
    assert not (out / "class_swap.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reads_text"] is False and set(metrics["per_class"]) == {"disc", "ring", "bar"}
    samples = load_dataset_split(label_maps, "test")  # the (image, class) samples a text model is scored on
    assert metrics["n_images"] == len(samples) == sum(values["n"] for values in metrics["per_class"].values())
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("name,class,text,dice") and [row.split(",")[0] for row in rows[1:]] == [
        sample.name for sample in samples
    ]
    assert metrics["class_mean"]["dice"] == pytest.approx(
        np.mean([values["dice"] for values in metrics["per_class"].values()])
    )


def test_each_channel_is_scored_against_its_own_class(unet_channels: Path, label_maps: Path) -> None:
    """Channel c of the network's output, and no other, answers the samples of class c."""
    import torch

    from lvseg.data.classes import read_sample_mask
    from lvseg.evaluation.evaluate import evaluate
    from lvseg.inference import load_model

    segmenter = load_model(unet_channels, device="cpu")
    samples = load_dataset_split(label_maps, "test")
    values = {"disc": 1, "ring": 2, "bar": 3}
    truth = {s.image_path: {} for s in samples}
    for sample in samples:
        truth[sample.image_path][values[sample.class_name]] = read_sample_mask(sample)

    def oracle(images: torch.Tensor, texts: list[str], allow_empty_text: bool = False) -> torch.Tensor:
        # A perfect answer for the first image's classes, in table order: channels must not be mixed up.
        maps = truth[samples[0].image_path]
        return torch.stack([torch.from_numpy(maps.get(v, np.zeros((32, 32), np.uint8))).float() for v in (1, 2, 3)])[
            None
        ].expand(len(images), -1, -1, -1)

    segmenter.probabilities = oracle  # type: ignore[method-assign]
    report = evaluate(unet_channels, label_maps, n_overlays=0, model=segmenter)
    first = [r for r in report.per_image if r.name.startswith(samples[0].name.split(":")[0] + ":")]
    assert first and all(r.dice == 1.0 for r in first)


def test_a_binary_set_gives_an_unchanged_one_channel_checkpoint(tmp_path: Path) -> None:
    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict
    from lvseg.data.synth import generate_synthetic_dataset

    data = tmp_path / "binary"
    generate_synthetic_dataset(data, n=8, size=32, seed=0)
    checkpoint = train(tiny(data, tmp_path / "run", model="unet")).best_checkpoint
    hparams = read_checkpoint_dict(checkpoint)["hyper_parameters"]
    assert hparams["model_config"]["n_classes"] == 1
    assert "class_table" not in hparams and "classes" not in hparams
    assert hparams["data_options"]["layout"] == "lvit"
    assert load_checkpoint(checkpoint).model.output_classes == 1


def test_class_channel_dataset_gives_one_item_per_image_with_k_channels(label_maps: Path) -> None:
    from lvseg.data.class_channels import ClassChannelDataset, dataset_class_table
    from lvseg.data.classes import read_label_map
    from lvseg.data.formats import DataOptions

    options = DataOptions(negative_ratio=1.0)
    samples = load_dataset_split(label_maps, "train", options)
    table = dataset_class_table(label_maps, options, samples)
    assert [(info.value, info.name) for info in table] == [(1, "disc"), (2, "ring"), (3, "bar")]
    dataset = ClassChannelDataset(samples, table, 32)
    assert len(dataset) == len({s.image_path for s in samples}) == len(samples) // 3
    item = dataset[0]
    label_map = read_label_map(samples[0].mask_path)
    assert item["mask"].shape == (3, 32, 32) and item["text"] == ""
    for k, info in enumerate(table):
        assert np.array_equal(item["mask"][k].numpy(), (label_map == info.value).astype(np.float32))
    augmented = ClassChannelDataset(samples, table, 32, augment="paper", seed=0)
    assert augmented[1]["mask"].shape == (3, 32, 32)


def test_a_vlsm_set_gives_empty_channels_for_unlisted_classes(tmp_path: Path) -> None:
    from lvseg.data.class_channels import ClassChannelDataset, dataset_class_table
    from lvseg.data.formats import DataOptions

    root = tmp_path / "vlsm"
    generate_multiclass_dataset(root, n=8, size=32, seed=1, layout="vlsm")
    samples = load_dataset_split(root, "train")
    table = dataset_class_table(root, DataOptions(), samples)
    assert sorted(info.name for info in table) == ["bar", "disc", "ring"]
    dataset = ClassChannelDataset(samples, table, 32)
    listed = {(Path(s.image_path), s.class_name) for s in samples}
    for index, image in enumerate(dataset.images):
        mask = dataset[index]["mask"]
        for k, info in enumerate(table):
            assert bool(mask[k].any()) == ((Path(image.sample.image_path), info.name) in listed)


def test_channel_losses_are_the_mean_of_per_channel_binary_losses() -> None:
    import torch

    from lvseg.models import create_model

    model = create_model("unet", img_size=32, base_channels=4, n_classes=3)
    logits = torch.randn(2, 3, 32, 32)
    target = (torch.rand(2, 3, 32, 32) > 0.7).float()
    binary = create_model("unet", img_size=32, base_channels=4)
    terms = model.compute_losses(logits, target)
    for name in ("dice", "bce"):
        per_channel = [binary.compute_losses(logits[:, k : k + 1], target[:, k : k + 1])[name] for k in range(3)]
        assert float(terms[name]) == pytest.approx(float(torch.stack(per_channel).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        model.compute_losses(logits, target[:, :1])


def test_contradicting_channel_options_are_listed(label_maps: Path, tmp_path: Path) -> None:
    from lvseg.data.class_channels import ClassTraining
    from lvseg.data.formats import DataOptions
    from lvseg.data.synth import generate_synthetic_dataset
    from lvseg.errors import LvsegError

    samples = load_dataset_split(label_maps, "train")
    plan = ClassTraining.plan(True, label_maps, DataOptions(), samples)
    assert plan.channels and plan.n_classes == 3
    assert plan.model_options("unet", True, {"base_channels": 8}) == {"base_channels": 8, "n_classes": 3}
    with pytest.raises(LvsegError, match="n_classes=2: the data has 3 classes"):
        plan.model_options("unet", True, {"n_classes": 2})
    assert not ClassTraining.plan(False, label_maps, DataOptions(), samples).channels  # a text model: per class
    binary = tmp_path / "binary"
    generate_synthetic_dataset(binary, n=4, size=32, seed=0)
    flat = ClassTraining.plan(True, binary, DataOptions(), load_dataset_split(binary, "train"))
    assert not flat.channels and flat.n_classes == 1
    with pytest.raises(LvsegError, match="the data is binary"):
        flat.model_options("unet", True, {"n_classes": 3})


def test_a_multi_channel_checkpoint_needs_its_class_table(unet_channels: Path, tmp_path: Path) -> None:
    import torch

    from lvseg.checkpoint import load_checkpoint, read_checkpoint_dict, save_inference_checkpoint
    from lvseg.errors import CheckpointError, LvsegError
    from lvseg.models import create_model

    model = create_model("unet", img_size=32, base_channels=4, n_classes=2)
    with pytest.raises(LvsegError, match="2 output channels.*class_table has none"):
        save_inference_checkpoint(tmp_path / "bare.ckpt", model)
    table = [{"value": 1, "name": "a", "template": None}, {"value": 2, "name": "b", "template": None}]
    path = save_inference_checkpoint(tmp_path / "ok.ckpt", model, hparams={"class_table": table})
    assert load_checkpoint(path).hparams["class_table"] == table
    checkpoint = read_checkpoint_dict(unet_channels)
    checkpoint["hyper_parameters"]["class_table"] = checkpoint["hyper_parameters"]["class_table"][:2]
    torch.save(checkpoint, tmp_path / "short.ckpt")
    with pytest.raises(CheckpointError, match="3 output channels.*has 2 rows"):
        load_checkpoint(tmp_path / "short.ckpt")


def test_a_multi_channel_fact_is_checked_when_the_model_is_defined() -> None:
    from lvseg.models.base import SegmentationModel

    with pytest.raises(TypeError, match="needs the constructor option 'n_classes'"):

        class NoOption(SegmentationModel):
            multi_channel_classes = True

            def __init__(self, *, img_size: int = 32) -> None:
                super().__init__()

    with pytest.raises(TypeError, match="for image-only models"):

        class Reads(SegmentationModel):
            multi_channel_classes = True
            requires_text = True

            def __init__(self, *, img_size: int = 32, n_classes: int = 1) -> None:
                super().__init__()


@pytest.mark.skipif(__import__("importlib").util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_a_multi_channel_unet_exports_k_output_channels(unet_channels: Path, tmp_path: Path) -> None:
    import onnxruntime

    from lvseg.inference import load_model
    from lvseg.inference.export import export_model

    manifest = json.loads(export_model(unet_channels, tmp_path / "export").read_text())
    assert manifest["output"]["shape"] == ["batch", 3, 32, 32]
    assert [row["name"] for row in manifest["class_table"]] == ["disc", "ring", "bar"]
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "network.onnx"))
    assert session.run(None, {"images": np.random.rand(2, 3, 32, 32).astype(np.float32)})[0].shape == (2, 3, 32, 32)
    exported = load_model(tmp_path / "export")
    assert exported.output_classes == 3 and [info.name for info in exported.class_table] == ["disc", "ring", "bar"]


def test_semi_supervised_training_on_label_maps_is_refused_before_training(label_maps: Path, tmp_path: Path) -> None:
    from lvseg.errors import LvsegError

    with pytest.raises(LvsegError, match="multi-class set .* semi-supervised training"):
        train(tiny(label_maps, tmp_path / "run", labeled_fraction=0.5))
    assert not (tmp_path / "run" / "last.ckpt").exists()
