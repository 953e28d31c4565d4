"""``lvseg prompts``: reports written from masks drawn here with known answers, end to end into training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.data.layout import load_split
from lvseg.data.prompts import LOCATIONS, STYLES, article, make_prompt, mask_regions, plural, style_for, write_prompts
from lvseg.errors import DataValidationError, LvsegError


def two_lesions() -> np.ndarray:
    """100 x 100: a 4 x 4 square top left (0.16 %: tiny) and a 30 x 30 square bottom right (9 %: medium)."""
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[5:9, 5:9] = 1
    mask[65:95, 65:95] = 1
    return mask


def test_regions_have_sizes_and_locations() -> None:
    regions = mask_regions(two_lesions())
    assert [(r.size, r.location) for r in regions] == [("tiny", "top left"), ("medium", "bottom right")]
    center = np.zeros((90, 90), dtype=np.uint8)
    center[35:55, 40:50] = 1  # 200 px of 8100: 2.5 %, small, centroid in the middle third both ways
    assert [(r.size, r.location) for r in mask_regions(center)] == [("small", "center")]
    large = np.zeros((10, 10), dtype=np.uint8)
    large[:, :5] = 1  # half the image, centroid column 2 of 10: left, rows centered
    assert [(r.size, r.location) for r in mask_regions(large)] == [("large", "left")]
    diagonal = np.zeros((10, 10), dtype=np.uint8)
    diagonal[0, 0] = diagonal[1, 1] = 1  # touching corners: one region (8-connectivity)
    assert len(mask_regions(diagonal)) == 1


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("p1", "polyp"),
        ("p2", "two polyps"),
        ("p3", "tiny, medium polyps"),
        ("p4", "two tiny, medium polyps"),
        ("p5", "two tiny, medium polyps in an endoscopy image"),
        ("p6", "two tiny, medium polyps in an endoscopy image, located in the top left and bottom right of the image"),
    ],
)
def test_the_attribute_ladder(style: str, expected: str) -> None:
    assert make_prompt(two_lesions(), "polyp", "endoscopy image", style) == expected


def test_empty_masks_single_lesions_and_bad_styles() -> None:
    empty = np.zeros((20, 20), dtype=np.uint8)
    assert make_prompt(empty, "polyp", "endoscopy image", "p1") == "no polyp"
    assert make_prompt(empty, "polyp", "endoscopy image", "p6") == "no polyp in an endoscopy image"
    one = np.zeros((30, 30), dtype=np.uint8)
    one[12:18, 12:18] = 1
    assert (
        make_prompt(one, "lesion", "dermoscopy image", "p6")
        == "one small lesion in a dermoscopy image, located in the center of the image"
    )
    with pytest.raises(LvsegError, match="p7"):
        make_prompt(one, "lesion", "x", "p7")
    choices = {style_for(f"case{i}", "random", seed=1) for i in range(60)}
    assert choices == set(STYLES) - {"random"}  # every style appears, deterministically
    assert style_for("case3", "random", seed=1) == style_for("case3", "random", seed=1)


@pytest.mark.parametrize(
    ("noun", "expected"),
    [
        ("nucleus", "nuclei"),
        ("cell nucleus", "cell nuclei"),
        ("metastasis", "metastases"),
        ("diverticulum", "diverticula"),
        ("thrombus", "thrombi"),
        ("opacity", "opacities"),
        ("polyp", "polyps"),
        ("mass", "masses"),
        ("lymph node", "lymph nodes"),
        ("nuclei", "nuclei"),
    ],
)
def test_class_names_take_their_own_plural(noun: str, expected: str) -> None:
    assert plural(noun) == expected


@pytest.mark.parametrize(
    ("modality", "expected"),
    [
        ("H&E image", "an H&E image"),
        ("MRI slice", "an MRI slice"),
        ("X-ray", "an X-ray"),
        ("CT slice", "a CT slice"),
        ("US image", "a US image"),
        ("endoscopy image", "an endoscopy image"),
        ("ultrasound image", "an ultrasound image"),
        ("unilateral view", "a unilateral view"),
        ("histology tile", "a histology tile"),
    ],
)
def test_the_modality_takes_a_or_an_by_sound(modality: str, expected: str) -> None:
    assert article(modality) == expected


def test_many_nuclei_in_an_h_and_e_image() -> None:
    """The MoNuSeg case: hundreds of tiny nuclei, the count in digits, "an" before H&E."""
    mask = np.zeros((400, 400), dtype=np.uint8)
    mask[2::8, 2::8] = 1  # 50 x 50 = 2500 separate one-pixel regions
    assert make_prompt(mask, "nucleus", "H&E image", "p5") == "2500 tiny nuclei in an H&E image"
    one = np.zeros((40, 40), dtype=np.uint8)
    one[18:22, 18:22] = 1
    assert make_prompt(one, "nucleus", "H&E image", "p4") == "one small nucleus"


def test_zones_are_listed_in_one_fixed_order_whatever_the_regions_order() -> None:
    """Regions are found top to bottom; the zones they fall in are listed in LOCATIONS order, so these two
    images with lesions in the same two zones read the same."""
    higher_right = np.zeros((90, 90), dtype=np.uint8)
    higher_right[5:10, 80:85] = 1  # top right, found first
    higher_right[20:25, 5:10] = 1  # top left
    higher_left = np.zeros((90, 90), dtype=np.uint8)
    higher_left[5:10, 5:10] = 1  # top left, found first
    higher_left[20:25, 80:85] = 1  # top right
    prompts = {make_prompt(mask, "polyp", "endoscopy image", "p6") for mask in (higher_right, higher_left)}
    assert prompts == {"two tiny polyps in an endoscopy image, located in the top left and top right of the image"}
    assert [r.location for r in mask_regions(higher_right)] == ["top right", "top left"]  # the regions' own order
    everywhere = np.zeros((90, 90), dtype=np.uint8)
    for row in (10, 45, 80):
        for column in (80, 45, 10):
            everywhere[row - 2 : row + 2, column - 2 : column + 2] = 1
    assert make_prompt(everywhere, "polyp", "endoscopy image", "p6").endswith(
        "located in the " + ", ".join(LOCATIONS[:-1]) + " and bottom right of the image"
    )


def _dataset_without_text(root: Path, prefixed: bool = False) -> Path:
    for number, folder in enumerate(("Train_Folder", "Val_Folder", "Test_Folder")):
        (root / folder / "img").mkdir(parents=True)
        (root / folder / "labelcol").mkdir()
        for index in range(4):
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[4 + index : 12 + index, 3 + 5 * number : 11 + 5 * number] = 255
            image = np.stack([mask // 2 + 40] * 3, axis=-1).astype(np.uint8)
            name = f"case{number}{index}.png"
            Image.fromarray(image).save(root / folder / "img" / name)
            Image.fromarray(mask).save(root / folder / "labelcol" / (f"mask_{name}" if prefixed else name))
    return root


def test_prompts_turn_a_folder_without_text_into_a_trainable_dataset(tmp_path: Path) -> None:
    data = _dataset_without_text(tmp_path / "data", prefixed=True)
    result = CliRunner().invoke(
        app, ["prompts", "--data", str(data), "--class-name", "polyp", "--modality", "endoscopy image", "--style", "p6"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(data / "Train_Folder" / "Train_text.csv")
    assert list(table.columns) == ["Image", "Description"] and table["Image"][0] == "mask_case00.png"
    # an 8 x 8 square of 32 x 32 is 6.25 % of the image: medium; its centroid (7.5, 6.5) is in the top-left ninth
    assert table["Description"][0] == "one medium polyp in an endoscopy image, located in the top left of the image"
    assert len(load_split(data, "train")) == 4  # the loader accepts it
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--img-size",
            "32",
            "--base-channels",
            "8",
            "--max-epochs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output

    before = (data / "Train_Folder" / "Train_text.csv").read_text()
    with pytest.raises(DataValidationError, match="--overwrite"):
        write_prompts(data, "polyp", "endoscopy image", style="p1")
    assert (data / "Train_Folder" / "Train_text.csv").read_text() == before  # never overwritten silently
    write_prompts(data, "polyp", "endoscopy image", style="p1", overwrite=True)
    assert set(pd.read_csv(data / "Train_Folder" / "Train_text.csv")["Description"]) == {"polyp"}


def test_images_without_masks_are_listed_before_anything_is_written(tmp_path: Path) -> None:
    data = _dataset_without_text(tmp_path / "data")
    (data / "Val_Folder" / "labelcol" / "case12.png").unlink()
    (data / "Test_Folder" / "labelcol" / "case23.png").unlink()
    with pytest.raises(DataValidationError) as error:
        write_prompts(data, "polyp", "endoscopy image")
    assert len(error.value.problems) == 2 and "case12.png" in str(error.value) and "case23.png" in str(error.value)
    assert not list(data.glob("*/*_text.*"))
    shutil.rmtree(data / "Train_Folder")
    with pytest.raises(LvsegError, match="--class-name and --modality"):
        write_prompts(data, " ", "endoscopy image")
