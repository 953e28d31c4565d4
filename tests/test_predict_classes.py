"""Multi-class prediction: label maps from a tiny trained multi-class checkpoint (``Segmenter.segment_classes``,
``lvseg predict --classes``, folder prediction's per-class areas) and the rules of
:mod:`lvseg.inference.multiclass` (prompts, overlaps, class tables)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.cli.main import app
from lvseg.data.classes import ClassInfo
from lvseg.data.synth_classes import generate_multiclass_dataset
from lvseg.errors import CheckpointError, LvsegError
from lvseg.inference import Segmenter, load_model
from lvseg.inference.multiclass import (
    ClassSelectionError,
    class_prompts,
    class_table_of,
    compose_label_map,
    select_classes,
)
from lvseg.models import create_model
from lvseg.training.fit import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_support import dicom_bytes

VALUES = {"disc": 1, "ring": 2, "bar": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, data root): an LViT trained one epoch on 8 synthetic 32 px label maps (disc, ring, bar)."""
    root = tmp_path_factory.mktemp("classes") / "data"
    generate_multiclass_dataset(root, n=8, size=32, seed=0)
    config = TrainConfig(
        data=root,
        out=root.parent / "run",
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
    return train(config).best_checkpoint, root


@pytest.fixture(scope="module")
def segmenter(trained: tuple[Path, Path]) -> Segmenter:
    return load_model(trained[0], device="cpu")


def _test_image(root: Path) -> Path:
    return sorted((root / "Test_Folder" / "img").iterdir())[0]


def _middle_threshold(segmenter: Segmenter, image: Path, prompts: list[str]) -> tuple[float, np.ndarray]:
    """A threshold with pixels on both sides, and the (K, H, W) probabilities of ``predict`` per prompt."""
    probabilities = np.stack([segmenter.predict(image, prompt).probability for prompt in prompts])
    return float(np.quantile(probabilities, 0.6)), probabilities


# -------------------------------------------------------------------------------------------- the library


def test_the_label_map_is_the_most_probable_class_above_the_threshold(
    segmenter: Segmenter, trained: tuple[Path, Path]
) -> None:
    image = _test_image(trained[1])
    assert [info.name for info in segmenter.class_table] == ["disc", "ring", "bar"]
    # Training recorded how it worded the prompts (random, modality "image"): a class is asked as training asked.
    prompts = segmenter.class_prompts(segmenter.class_table)
    assert prompts == ["disc in an image", "ring in an image", "bar in an image"]
    threshold, expected = _middle_threshold(segmenter, image, prompts)
    prediction = segmenter.segment_classes(image, "all", threshold=threshold)

    label_map = prediction.label_map
    assert label_map.shape == (32, 32) and label_map.dtype == np.uint8
    # The same forward as one predict per class: the batch of K prompts changes nothing.
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-5)
    winner = np.asarray([1, 2, 3])[expected.argmax(axis=0)]
    np.testing.assert_array_equal(label_map, np.where((expected > threshold).any(axis=0), winner, 0))
    assert 0 < int((label_map > 0).sum()) < label_map.size
    for result, prompt in zip(prediction.classes, prompts):
        assert result.prompt == prompt
        np.testing.assert_array_equal(result.mask, (label_map == result.value).astype(np.uint8))
        assert result.area_px == int(result.mask.sum())
        assert result.area_percent == pytest.approx(100 * result.area_px / label_map.size, abs=1e-3)
        assert result.area_mm2 is None  # a PNG gives no pixel size
        above = int((result.probability > threshold).sum())
        assert result.outvoted_px == above - result.area_px >= 0
    assert sum(result.area_px for result in prediction.classes) == int((label_map > 0).sum())
    # one class alone: its binary mask is exactly the mask of predict with that class's prompt
    ring = segmenter.segment_classes(image, ["Ring"], threshold=threshold)
    np.testing.assert_array_equal(
        ring.classes[0].mask, segmenter.predict(image, "ring in an image", threshold=threshold).mask
    )
    assert [result.name for result in ring.classes] == ["ring"]


def test_the_caller_prompt_and_modality_replace_a_class_prompt(
    segmenter: Segmenter, trained: tuple[Path, Path]
) -> None:
    image = _test_image(trained[1])
    prediction = segmenter.segment_classes(image, "disc,bar", prompts={"BAR": "bar"}, modality="CT slice")
    assert [result.prompt for result in prediction.classes] == ["disc in a CT slice", "bar"]
    with pytest.raises(ClassSelectionError, match="'ring'.*not among the chosen classes"):
        segmenter.segment_classes(image, "disc", prompts={"ring": "ring"})


def test_unknown_classes_are_named_with_the_accepted_ones(segmenter: Segmenter) -> None:
    with pytest.raises(ClassSelectionError) as caught:
        segmenter.select_classes("disc, lung ,spleen")
    assert caught.value.unknown == ["lung", "spleen"]
    assert caught.value.accepted == ["disc", "ring", "bar"]
    assert "'lung', 'spleen'" in str(caught.value) and "disc, ring, bar" in str(caught.value)
    with pytest.raises(ClassSelectionError, match="no class chosen"):
        segmenter.select_classes(" , ")


def test_overlaps_go_to_the_most_probable_class_ties_to_the_first() -> None:
    probabilities = np.zeros((2, 2, 3), dtype=np.float32)
    probabilities[0] = [[0.9, 0.6, 0.1], [0.7, 0.2, 0.55]]
    probabilities[1] = [[0.8, 0.7, 0.2], [0.7, 0.3, 0.1]]
    label_map = compose_label_map(probabilities, [4, 300], threshold=0.5)
    assert label_map.dtype == np.uint16  # a value over 255
    np.testing.assert_array_equal(label_map, [[4, 300, 0], [4, 0, 4]])
    assert compose_label_map(probabilities, [1, 2], 0.5).dtype == np.uint8


def test_class_tables_and_prompt_rules() -> None:
    assert class_table_of({"classes": ["liver", "kidney"]}) == [ClassInfo(1, "liver"), ClassInfo(2, "kidney")]
    table = class_table_of(
        {
            "classes": ["ignored"],
            "class_table": [
                {"value": 5, "name": "liver", "template": "{name} in {modality}"},
                {"value": 9, "name": "kidney", "template": "{count} {name}"},
                {"value": 2, "name": "spleen", "template": None},
            ],
        }
    )
    assert [(info.value, info.name) for info in table] == [(5, "liver"), (9, "kidney"), (2, "spleen")]
    assert class_table_of({}) == []
    with pytest.raises(CheckpointError, match="row 2"):
        class_table_of({"class_table": [{"value": 1, "name": "a"}, {"name": "b"}]})
    # a template of name and modality is used; one that describes the answer ({count}) cannot be filled
    assert class_prompts(table, modality="CT slice") == [
        "liver in a CT slice",
        "kidney in a CT slice",
        "spleen in a CT slice",
    ]
    assert class_prompts(table, prompt_type="p3") == ["liver in an image", "kidney", "spleen"]
    assert class_prompts(table, prompt_type="p0") == ["", "", ""]
    assert select_classes(table, "all") == table
    assert select_classes(table, ["SPLEEN", "liver"]) == [table[0], table[2]]  # table order
    with pytest.raises(ClassSelectionError, match="no class table"):
        select_classes([], "liver")


def _multi_channel_unet(path: Path, biases: list[float], table: list[dict[str, object]]) -> Path:
    """An image-only U-Net with one output channel per class, each channel a constant logit."""
    torch.manual_seed(0)
    net = create_model("unet", img_size=32, base_channels=4, n_classes=len(biases))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(biases))
    return save_inference_checkpoint(path, net, hparams={"class_table": table})


def test_a_model_with_one_channel_per_class_maps_channel_k_to_the_kth_class(tmp_path: Path) -> None:
    table = [{"value": 300, "name": "liver", "template": None}, {"value": 7, "name": "kidney", "template": None}]
    segmenter = load_model(_multi_channel_unet(tmp_path / "unet.ckpt", [-10.0, 10.0], table), device="cpu")
    assert segmenter.output_classes == 2
    image = np.random.default_rng(0).random((40, 24, 3)).astype(np.float32)
    prediction = segmenter.segment_classes(image, "all")
    assert prediction.label_map.dtype == np.uint16 and prediction.label_map.shape == (40, 24)
    assert (prediction.label_map == 7).all()  # channel 1: kidney everywhere, liver (channel 0) nowhere
    assert [result.prompt for result in prediction.classes] == ["", ""]
    liver = segmenter.segment_classes(image, "liver")
    assert not liver.label_map.any() and liver.classes[0].max_probability < 0.01
    with pytest.raises(LvsegError, match="segments 2 classes at once"):
        segmenter.predict(image)


# ---------------------------------------------------------------------------------------------------- CLI


def invoke(*args: object):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_cli_classes_write_a_label_map_an_overlay_with_a_legend_and_areas(
    segmenter: Segmenter, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint, root = trained
    image = _test_image(root)
    threshold, expected = _middle_threshold(segmenter, image, segmenter.class_prompts(segmenter.class_table))
    out, overlay = tmp_path / "labels.png", tmp_path / "overlay.png"
    result = invoke(
        "-c", checkpoint, "-i", image, "-o", out, "--overlay", overlay, "--classes", "all", "--threshold", threshold
    )
    assert result.exit_code == 0, result.output
    label_map = np.asarray(Image.open(out))
    winner = np.asarray([1, 2, 3])[expected.argmax(axis=0)]
    np.testing.assert_array_equal(label_map, np.where((expected > threshold).any(axis=0), winner, 0))
    shown = Image.open(overlay)
    assert shown.mode == "RGB" and shown.height > 32 and shown.width >= 32  # the legend below the image
    with (tmp_path / "labels_areas.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == ["disc", "ring", "bar"]
    for row in rows:
        assert int(row["area_px"]) == int((label_map == VALUES[row["class"]]).sum())
        assert row["prompt"] == f"{row['class']} in an image"
    assert "disc" in result.output and "areas:" in result.output


def test_cli_one_class_writes_its_binary_mask(segmenter: Segmenter, trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, root = trained
    image = _test_image(root)
    threshold, _ = _middle_threshold(segmenter, image, ["bar in an image"])
    out = tmp_path / "bar.png"
    result = invoke("-c", checkpoint, "-i", image, "-o", out, "--classes", "bar", "--threshold", threshold)
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out))
    expected = segmenter.predict(image, "bar in an image", threshold=threshold).mask
    np.testing.assert_array_equal(mask, expected * 255)
    assert set(np.unique(mask)) <= {0, 255}


def _error(result: object) -> str:
    """The message of the LvsegError a command stopped with (the entry point prints it)."""
    error = getattr(result, "exception", None)
    assert isinstance(error, LvsegError), getattr(result, "output", "")
    return str(error)


def test_cli_class_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, root = trained
    image = _test_image(root)
    out = tmp_path / "x.png"
    unknown = _error(invoke("-c", checkpoint, "-i", image, "-o", out, "--classes", "disc,lung"))
    assert "'lung'" in unknown and "disc, ring, bar" in unknown
    with_text = _error(invoke("-c", checkpoint, "-i", image, "-o", out, "--classes", "disc", "--text", "a disc"))
    assert "--class-text" in with_text
    bad_text = _error(invoke("-c", checkpoint, "-i", image, "-o", out, "--classes", "disc", "--class-text", "disc"))
    assert "NAME=TEXT" in bad_text
    binary = tmp_path / "binary.ckpt"
    save_inference_checkpoint(binary, create_model("unet", img_size=32, base_channels=4))
    assert "no class table" in _error(invoke("-c", binary, "-i", image, "-o", out, "--classes", "all"))
    assert not out.exists()


def test_cli_areas_in_mm2_for_a_dicom_with_pixel_spacing(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, root = trained
    pixels = (np.asarray(Image.open(_test_image(root)).convert("L")).astype(np.uint16)) * 200
    dicom = tmp_path / "slice.dcm"
    dicom.write_bytes(dicom_bytes(pixels, pixel_spacing=(0.5, 0.25)))
    out = tmp_path / "labels.png"
    result = invoke("-c", checkpoint, "-i", dicom, "-o", out, "--classes", "all", "--threshold", 0.05)
    assert result.exit_code == 0, result.output
    with (tmp_path / "labels_areas.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert any(int(row["area_px"]) for row in rows)
    for row in rows:
        assert float(row["area_mm2"]) == pytest.approx(int(row["area_px"]) * 0.125)


def test_folder_prediction_adds_per_class_areas(
    segmenter: Segmenter, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint, root = trained
    out = tmp_path / "predictions"
    result = invoke("-c", checkpoint, "--folder", root / "Test_Folder", "-o", out, "--classes", "disc,ring")
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((root / "Test_Folder" / "img").iterdir()))
    for row in rows:
        assert row["classes"] == "disc;ring" and "bar_area_px" not in row
        label_map = np.asarray(Image.open(out / row["mask"]))
        assert set(np.unique(label_map)) <= {0, 1, 2}
        for name in ("disc", "ring"):
            assert int(row[f"{name}_area_px"]) == int((label_map == VALUES[name]).sum())
            assert row[f"{name}_area_mm2"] == ""
        assert (out / "overlays" / row["mask"].split("/")[-1]).is_file()
        same = segmenter.segment_classes(root / "Test_Folder" / "img" / row["image"], "disc,ring")
        np.testing.assert_array_equal(label_map, same.label_map)


def test_predict_classes_checks_the_memory_of_one_row_per_class(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text model asks once per class: three classes of one image are three rows of one forward pass, so the
    memory check counts three where one would fit."""
    import lvseg.memory
    from lvseg.checkpoint import read_checkpoint_dict

    checkpoint, root = trained
    config = read_checkpoint_dict(checkpoint)["hyper_parameters"]["model_config"]
    one = lvseg.memory.image_batch_bytes(config["img_size"], 1, config["base_channels"], 3, training=False)
    monkeypatch.setattr(lvseg.memory, "_machine_available", lambda: 2 * one)  # one or two rows fit, three do not
    monkeypatch.setattr(lvseg.memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = _test_image(root)

    def predict(out: Path, classes: str):
        arguments = ["predict", "-c", str(checkpoint), "-i", str(image), "-o", str(out), "--classes", classes]
        return CliRunner().invoke(app, [*arguments, "--device", "cpu"])

    assert predict(tmp_path / "disc.png", "disc").exit_code == 0
    refused = predict(tmp_path / "all.png", "all")
    assert isinstance(refused.exception, LvsegError), refused.output
    assert "one image needs about" in str(refused.exception) and not (tmp_path / "all.png").exists()
