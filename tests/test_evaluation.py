"""evaluate() / evaluate_text_reliance() on a tiny dataset, the shuffled-text derangement, ``lvseg evaluate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.data.images import read_mask, resize_mask
from lvseg.errors import LvsegError
from lvseg.evaluation.evaluate import (
    PER_IMAGE_COLUMNS,
    derangement,
    evaluate,
    evaluate_text_reliance,
    texts_for_mode,
)
from lvseg.evaluation.metrics import mask_metrics
from lvseg.models import create_model
from lvseg.text import create_text_encoder

IMG_SIZE = 32
# (height, width) of each test image: non-square and off the model size, so original != model resolution.
SIZES = [(40, 56), (48, 48), (37, 61), (64, 40), (33, 33)]
TEXTS = ["lesion upper left", "lesion lower right", "two lesions both lungs", "lesion middle left", "no lesion"]


def write_dataset(root: Path, split_folder: str = "Test_Folder") -> Path:
    """The LViT layout with masks named like their image (MoNuSeg style) and a CSV text table."""
    rng = np.random.default_rng(0)
    folder = root / split_folder
    (folder / "img").mkdir(parents=True)
    (folder / "labelcol").mkdir()
    rows = []
    for index, ((height, width), text) in enumerate(zip(SIZES, TEXTS)):
        name = f"case_{index}.png"
        image = (rng.random((height, width)) * 255).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        if index < len(SIZES) - 1:  # the last image has no lesion
            mask[height // 4 : height // 4 + 8 + 2 * index, width // 3 : width // 3 + 10] = 255
        Image.fromarray(image).save(folder / "img" / name)
        Image.fromarray(mask).save(folder / "labelcol" / name)
        rows.append({"Image": name, "Description": text})
    pd.DataFrame(rows).to_csv(folder / f"{split_folder.removesuffix('_Folder')}_text.csv", index=False)
    return root


def unet_checkpoint(path: Path, fill: float | None = None, in_channels: int = 3) -> Path:
    """A tiny U-Net; ``fill=+10`` predicts lesion everywhere, ``-10`` nowhere, None keeps random weights."""
    torch.manual_seed(0)
    options = {"img_size": IMG_SIZE, "base_channels": 4, "in_channels": in_channels}
    net = create_model("unet", **options)
    if fill is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.fill_(fill)
    return save_inference_checkpoint(path, net)


def lvit_checkpoint(path: Path, texts: list[str] = TEXTS) -> Path:
    torch.manual_seed(0)
    encoder = create_text_encoder("learned", texts=texts, dim=8, max_length=6)
    options = {"img_size": IMG_SIZE, "base_channels": 8, "text_dim": 8, "text_len": 6}
    net = create_model("lvit", **options, text_encoder=encoder)
    return save_inference_checkpoint(path, net)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lvit_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lvit_checkpoint(tmp_path_factory.mktemp("ckpt") / "lvit.ckpt")


# ------------------------------------------------------------------------------------------- derangement


def test_derangement_moves_every_text_and_is_deterministic() -> None:
    texts = [f"report {i}" for i in range(9)]
    perm = derangement(texts, seed=3)
    assert sorted(perm) == list(range(9))
    assert all(perm[i] != i for i in range(9))
    assert derangement(texts, seed=3) == perm
    assert any(derangement(texts, seed=s) != perm for s in range(4, 8))
    shuffled = texts_for_mode(texts, "shuffled", seed=3)
    assert sorted(shuffled) == sorted(texts) and all(a != b for a, b in zip(shuffled, texts))


def test_derangement_never_gives_an_equal_report_when_avoidable() -> None:
    # Duplicate reports: an index derangement alone could hand an image a copy of its own report.
    texts = ["a", "a", "a", "b", "b", "c", "c", "d"]
    for seed in range(20):
        shuffled = texts_for_mode(texts, "shuffled", seed=seed)
        assert sorted(shuffled) == sorted(texts)
        assert all(new != old for new, old in zip(shuffled, texts)), seed


def test_derangement_edge_cases() -> None:
    assert derangement([], 0) == []
    assert derangement(["x"], 0) == [0]
    assert derangement(["x", "y"], 0) == [1, 0]
    same = derangement(["x"] * 5, 1)  # all equal: still no image keeps its own index
    assert sorted(same) == list(range(5)) and all(same[i] != i for i in range(5))
    assert texts_for_mode(["x", "y"], "empty") == ["", ""]
    with pytest.raises(LvsegError, match="unknown text mode 'upside-down'"):
        texts_for_mode(["x"], "upside-down")


# --------------------------------------------------------------------------------------------- evaluate


def _expected_all_lesion(dataset: Path) -> tuple[list[float], list[float]]:
    """Dice of predicting 'lesion everywhere', at model and at original resolution."""
    model, original = [], []
    for index in range(len(SIZES)):
        truth = read_mask(dataset / "Test_Folder" / "labelcol" / f"case_{index}.png")
        small = resize_mask(truth, IMG_SIZE).numpy()[0]
        model.append(mask_metrics(np.ones_like(small), small, hd95=False)["dice"])
        original.append(mask_metrics(np.ones_like(truth), truth, hd95=False)["dice"])
    return model, original


def test_evaluate_writes_metrics_csv_and_overlays(dataset: Path, tmp_path: Path) -> None:
    checkpoint = unet_checkpoint(tmp_path / "unet.ckpt", fill=10.0)
    out = tmp_path / "eval"
    report = evaluate(checkpoint, dataset, "test", out=out, batch_size=2, n_overlays=2)

    assert report.n_images == len(SIZES) and report.model_name == "unet" and report.text_mode == "given"
    table = pd.read_csv(out / "per_image.csv", keep_default_na=False)
    assert list(table.columns) == list(PER_IMAGE_COLUMNS)
    assert len(table) == len(SIZES)
    assert table["name"].tolist() == [f"case_{i}" for i in range(len(SIZES))]
    assert table["text"].tolist() == TEXTS

    expected_model, expected_original = _expected_all_lesion(dataset)
    assert table["dice"].astype(float).tolist() == pytest.approx(expected_model, abs=1e-5)
    assert table["dice_original"].astype(float).tolist() == pytest.approx(expected_original, abs=1e-5)
    assert expected_model != pytest.approx(expected_original, abs=1e-4)  # the two resolutions differ
    # The lesion-free image: truth empty, prediction full -> Dice 0 and HD95 undefined (empty cell).
    assert table["dice"].iloc[-1] == 0 and table["hd95"].iloc[-1] == ""

    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "model",
        "checkpoint",
        "split",
        "text_mode",
        "n_images",
        "dice",
        "iou",
        "dice_original",
        "iou_original",
        "hd95",
        "std",
        "hd95_undefined",
    ):
        assert key in metrics, key
    assert metrics["n_images"] == len(SIZES) and metrics["split"] == "test" and metrics["model"] == "unet"
    assert metrics["backend"] == "eager"  # a checkpoint loaded by the library runs eager unless told otherwise
    assert metrics["dice"] == pytest.approx(np.mean(expected_model), abs=1e-5)
    assert metrics["std"]["dice"] == pytest.approx(np.std(expected_model), abs=1e-5)
    assert metrics["hd95_undefined"] == 1
    hd = table["hd95"].iloc[:-1].astype(float)
    assert metrics["hd95"] == pytest.approx(hd.mean(), abs=1e-4)

    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert [name[:8] for name in overlays] == ["best_01_", "best_02_", "worst_01", "worst_02"]
    worst = pd.Series(expected_original).idxmin()
    assert overlays[2] == f"worst_01_case_{worst}.png"
    assert Image.open(out / "overlays" / overlays[0]).mode == "RGB"


def test_empty_truth_and_empty_prediction_score_one(dataset: Path, tmp_path: Path) -> None:
    checkpoint = unet_checkpoint(tmp_path / "none.ckpt", fill=-10.0)
    report = evaluate(checkpoint, dataset, "test", n_overlays=0)
    dice = [result.dice for result in report.per_image]
    assert dice == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert report.hd95_undefined == len(SIZES) and math.isnan(report.means["hd95"])
    assert report.files == {}  # out=None writes nothing


def test_original_resolution_matches_segmenter_predict_batch(dataset: Path, tmp_path: Path) -> None:
    """dice_original must be what a user of Segmenter.predict_batch would measure."""
    from lvseg.inference import load_model

    checkpoint = unet_checkpoint(tmp_path / "random.ckpt")
    segmenter = load_model(checkpoint, device="cpu")
    images = [dataset / "Test_Folder" / "img" / f"case_{i}.png" for i in range(len(SIZES))]
    # Centre the random network's logits so that it predicts a non-trivial mix of pixels.
    with torch.no_grad():
        from lvseg.data.images import read_image, resize_image

        batch = torch.stack([resize_image(read_image(path), IMG_SIZE) for path in images])
        segmenter.net.head.bias -= segmenter.net(batch, None).median()
    predictions = segmenter.predict_batch(images, TEXTS)
    assert any(0 < p.mask.mean() < 1 for p in predictions)
    expected = [
        mask_metrics(p.mask, read_mask(str(path).replace("img", "labelcol"))) for p, path in zip(predictions, images)
    ]

    report = evaluate(checkpoint, dataset, "test", batch_size=3, n_overlays=0, model=segmenter)
    got = [result.dice_original for result in report.per_image]
    assert got == pytest.approx([e["dice"] for e in expected], abs=1e-6)
    assert [r.iou_original for r in report.per_image] == pytest.approx([e["iou"] for e in expected], abs=1e-6)


def test_grayscale_model_and_batch_size_do_not_change_results(dataset: Path, tmp_path: Path) -> None:
    checkpoint = unet_checkpoint(tmp_path / "gray.ckpt", in_channels=1)
    one = evaluate(checkpoint, dataset, "test", batch_size=1, n_overlays=0)
    many = evaluate(checkpoint, dataset, "test", batch_size=4, n_overlays=0)
    assert [r.dice for r in one.per_image] == pytest.approx([r.dice for r in many.per_image], abs=1e-6)


def test_text_reliance_runs_given_shuffled_and_empty(dataset: Path, lvit_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "reliance"
    combined = evaluate_text_reliance(lvit_ckpt, dataset, "test", out=out, batch_size=4, n_overlays=1, seed=5)
    assert set(combined.reports) == {"given", "shuffled", "empty"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["text_reliance"] == pytest.approx(
        metrics["modes"]["given"]["dice"] - metrics["modes"]["shuffled"]["dice"]
    )
    assert combined.text_reliance == pytest.approx(combined.reports["given"].dice - combined.reports["shuffled"].dice)
    tables = {mode: pd.read_csv(out / mode / "per_image.csv", keep_default_na=False) for mode in combined.reports}
    assert tables["given"]["text"].tolist() == TEXTS
    shuffled = tables["shuffled"]["text"].tolist()
    assert sorted(shuffled) == sorted(TEXTS) and all(a != b for a, b in zip(shuffled, TEXTS))
    assert tables["empty"]["text"].tolist() == [""] * len(TEXTS)
    for mode in combined.reports:
        assert json.loads((out / mode / "metrics.json").read_text())["text_mode"] == mode
        assert len(list((out / mode / "overlays").glob("*.png"))) == 2
    # Same seed, same permutation.
    again = evaluate(lvit_ckpt, dataset, "test", text_mode="shuffled", seed=5, n_overlays=0)
    assert [r.text for r in again.per_image] == shuffled


def test_text_model_outputs_depend_on_the_text(dataset: Path, lvit_ckpt: Path) -> None:
    """The shuffled texts really reach the network: its probabilities change."""
    from lvseg.data.images import read_image, resize_image
    from lvseg.errors import LvsegError
    from lvseg.inference import load_model

    segmenter = load_model(lvit_ckpt, device="cpu")
    batch = torch.stack(
        [resize_image(read_image(dataset / "Test_Folder" / "img" / f"case_{i}.png"), IMG_SIZE) for i in range(2)]
    )
    given = segmenter.probabilities(batch, TEXTS[:2])
    empty = segmenter.probabilities(batch, ["", ""], allow_empty_text=True)
    assert given.shape == (2, 1, IMG_SIZE, IMG_SIZE)
    assert not torch.allclose(given, empty)
    with pytest.raises(LvsegError, match="must not be empty"):
        segmenter.probabilities(batch, ["", ""])


def test_evaluate_rejects_bad_arguments(dataset: Path, tmp_path: Path) -> None:
    checkpoint = unet_checkpoint(tmp_path / "u.ckpt")
    with pytest.raises(LvsegError, match="unknown text mode 'sideways'"):
        evaluate(checkpoint, dataset, text_mode="sideways")
    with pytest.raises(LvsegError, match="batch size"):
        evaluate(checkpoint, dataset, batch_size=0)
    with pytest.raises(LvsegError, match="missing.ckpt"):
        evaluate(tmp_path / "missing.ckpt", dataset)
    with pytest.raises(LvsegError, match="nowhere"):
        evaluate(checkpoint, tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate_text_model_reports_text_reliance(dataset: Path, lvit_ckpt: Path, tmp_path: Path) -> None:
    from lvseg.cli.main import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(lvit_ckpt),
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--overlays",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "text reliance" in result.output and "shuffled" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["modes"]) == {"given", "shuffled"} and "text_reliance" in metrics
    assert (out / "given" / "per_image.csv").is_file() and (out / "shuffled" / "per_image.csv").is_file()


def test_cli_evaluate_image_model_runs_given_only(dataset: Path, tmp_path: Path) -> None:
    from lvseg.cli.main import app

    checkpoint = unet_checkpoint(tmp_path / "u.ckpt", fill=10.0)
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app, ["evaluate", "-c", str(checkpoint), "-d", str(dataset), "-o", str(out), "--overlays", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "text reliance" not in result.output and "shuffled" not in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["text_mode"] == "given" and metrics["n_images"] == len(SIZES)
    assert len(pd.read_csv(out / "per_image.csv")) == len(SIZES)


def test_cli_evaluate_all_modes_of_an_image_model_says_text_reliance_does_not_apply(
    dataset: Path, tmp_path: Path
) -> None:
    """U-Net reads no text: its Dice is the same in every mode, and a reliance of 0.0000 would read as a finding."""
    from lvseg.cli.main import app

    checkpoint = unet_checkpoint(tmp_path / "u.ckpt")
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "-c",
            str(checkpoint),
            "-d",
            str(dataset),
            "-o",
            str(out),
            "--text-mode",
            "all",
            "--overlays",
            "0",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "text reliance: not applicable (model 'unet' reads no text" in result.output
    assert "0.0000" not in next(line for line in result.output.splitlines() if "text reliance" in line)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["text_reliance"] is None and metrics["reads_text"] is False
    assert set(metrics["modes"]) == {"given", "shuffled", "empty"}

    combined = evaluate_text_reliance(checkpoint, dataset, "test", n_overlays=0)
    assert combined.text_reliance is None and combined.to_json()["text_reliance"] is None


def test_progress_is_logged_at_each_quarter_not_every_batch(caplog: pytest.LogCaptureFixture) -> None:
    from lvseg.evaluation.evaluate import _Progress

    progress = _Progress(200)
    with caplog.at_level("INFO", logger="lvseg.evaluation.evaluate"):
        for done in [*range(8, 200, 8), 200]:  # 25 batches of 8
            progress.update(done)
    lines = [record.getMessage() for record in caplog.records if "evaluated" in record.getMessage()]
    assert lines == [
        "evaluated 56 / 200 images",
        "evaluated 104 / 200 images",
        "evaluated 152 / 200 images",
        "evaluated 200 / 200 images",
    ]


def test_cli_evaluate_missing_checkpoint_is_a_user_error(dataset: Path, tmp_path: Path) -> None:
    from lvseg.cli.main import app

    missing = tmp_path / "absent.ckpt"
    result = CliRunner().invoke(app, ["evaluate", "-c", str(missing), "-d", str(dataset), "-o", str(tmp_path)])
    assert isinstance(result.exception, LvsegError)
    assert str(missing) in str(result.exception)
