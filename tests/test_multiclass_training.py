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
    from lvseg.cli.main import app
    from lvseg.training.checkpoint import read_checkpoint_dict

    result = train(tiny(label_maps, tmp_path / "run", balance_classes=True, modality="synthetic phantom image"))
    assert result.best_checkpoint.is_file()
    assert read_checkpoint_dict(result.best_checkpoint)["hyper_parameters"]["classes"] == ["disc", "ring", "bar"]
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
