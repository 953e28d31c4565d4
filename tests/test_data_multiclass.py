"""Label maps with a class table (lvseg.data.classes, lvseg.data.formats): one sample per (image, class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data_builders import make_split
from lvseg.data.classes import parse_classes, read_class_table, read_sample_mask
from lvseg.data.dataset import SegmentationDataset
from lvseg.data.formats import DataOptions, class_names, detect_layout, load_dataset_split
from lvseg.data.layout import load_split
from lvseg.data.prompts import class_prompt
from lvseg.data.synth_classes import CLASSES, generate_multiclass_dataset, synthesize_multiclass_case
from lvseg.errors import DataValidationError, LvsegError


def label_split(root: Path, maps: dict[str, np.ndarray], table: list[dict[str, str]] | None = None) -> Path:
    """Train_Folder with gray images and the given label maps (uint8), and optionally a text table."""
    folder = root / "Train_Folder"
    (folder / "img").mkdir(parents=True)
    (folder / "labelcol").mkdir()
    for name, label_map in maps.items():
        Image.fromarray((label_map * 60).astype(np.uint8)).save(folder / "img" / f"{name}.png")
        Image.fromarray(label_map.astype(np.uint8)).save(folder / "labelcol" / f"{name}.png")
    if table is not None:
        pd.DataFrame(table).to_csv(folder / "Train_text.csv", index=False)
    return folder


def two_maps() -> dict[str, np.ndarray]:
    first = np.zeros((24, 24), np.uint8)
    first[2:8, 2:8] = 1
    first[14:20, 14:22] = 2
    second = np.zeros((24, 24), np.uint8)
    second[10:16, 3:9] = 1  # no class 2: a negative sample for it
    return {"a": first, "b": second}


def write_classes(root: Path, text: str) -> None:
    (root / "classes.csv").write_text(text)


def test_each_image_and_class_is_a_sample_with_its_binary_mask(tmp_path: Path) -> None:
    label_split(tmp_path, two_maps())
    write_classes(tmp_path, "value,name\n1,liver\n2,kidney\n")
    samples = load_dataset_split(tmp_path, "train", DataOptions(prompt_type="p6", modality="CT slice"))
    assert [(s.name, s.class_name, s.mask_value) for s in samples] == [
        ("a:liver", "liver", 1),
        ("a:kidney", "kidney", 2),
        ("b:liver", "liver", 1),
        ("b:kidney", "kidney", 2),
    ]
    assert class_names(samples) == ["liver", "kidney"]
    masks = [read_sample_mask(sample) for sample in samples]
    assert masks[0].sum() == 36 and masks[1].sum() == 48 and masks[3].sum() == 0
    assert set(np.unique(masks[1])) == {0, 1}
    # Per-class prompts: the class's own regions; the absent class is asked for, never "no kidney".
    assert samples[0].text == "one medium liver in a CT slice, located in the top left of the image"
    assert samples[1].text.startswith("one medium kidney in a CT slice, located in the bottom right")
    assert samples[3].text == "kidney in a CT slice"
    item = SegmentationDataset(samples, 12)[1]
    assert item["mask"].shape == (1, 12, 12) and item["mask"].sum() > 0
    assert torch.equal(SegmentationDataset(samples, 12)[3]["mask"], torch.zeros(1, 12, 12))


def test_classes_option_replaces_the_table_and_negative_ratio_drops_absent_pairs(tmp_path: Path) -> None:
    label_split(tmp_path, two_maps())
    write_classes(tmp_path, "value,name\n1,liver\n2,kidney\n")
    kept = load_dataset_split(tmp_path, "train", DataOptions(classes="1=organ,2=lesion", negative_ratio=0.0))
    assert [s.name for s in kept] == ["a:organ", "a:lesion", "b:organ"]  # b has no lesion: dropped at ratio 0
    assert len(load_dataset_split(tmp_path, "train", DataOptions(negative_ratio=1.0))) == 4


def test_per_class_text_column_then_template_then_writer(tmp_path: Path) -> None:
    table = [
        {"Image": "a.png", "Description": "x", "Description_liver": "the liver as the radiologist wrote"},
        {"Image": "b.png", "Description": "y", "Description_liver": ""},
    ]
    label_split(tmp_path, two_maps(), table)
    write_classes(tmp_path, "value,name,prompt\n1,liver,\n2,kidney,{count} {name} in {modality}\n")
    by_name = {s.name: s.text for s in load_dataset_split(tmp_path, "train", DataOptions(prompt_type="p1"))}
    assert by_name == {
        "a:liver": "the liver as the radiologist wrote",
        "a:kidney": "one kidney in an image",
        "b:liver": "liver",  # empty cell: the writer's p1
        "b:kidney": "no kidney in an image",  # the template's {count} says absence (documented)
    }


def test_random_prompt_type_offers_the_ladder_and_training_draws_from_it(tmp_path: Path) -> None:
    label_split(tmp_path, two_maps())
    write_classes(tmp_path, "value,name\n1,liver\n2,kidney\n")
    samples = load_dataset_split(tmp_path, "train", DataOptions(prompt_type="random", modality="CT slice"))
    liver = samples[0]
    offered = {text for group in liver.prompt_choices for text in group}
    assert len(offered) == 6 and liver.text in offered
    dataset = SegmentationDataset(samples, 8, sample_prompts=True, seed=0)
    drawn = {dataset[0]["text"] for _ in range(60)}
    assert len(drawn) > 2 and drawn <= offered
    fixed = SegmentationDataset(samples, 8)
    assert {fixed[0]["text"] for _ in range(5)} == {liver.text}


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    maps = two_maps()
    maps["c"] = np.full((24, 24), 7, np.uint8)
    maps["d"] = np.full((24, 24), 9, np.uint8)
    label_split(tmp_path, maps, [{"Image": "a.png", "Description": "x", "Description_spleen": "s"}])
    write_classes(tmp_path, "value,name\n1,liver\n2,kidney\n")
    with pytest.raises(DataValidationError) as caught:
        load_dataset_split(tmp_path, "train")
    problems = caught.value.problems
    assert any("c.png" in p and "value(s) 7" in p and "classes: 1, 2" in p for p in problems)
    assert any("d.png" in p and "value(s) 9" in p for p in problems)
    assert any("Description_spleen" in p and "'spleen' is not a class" in p for p in problems)


def test_class_table_errors_name_every_row(tmp_path: Path) -> None:
    path = tmp_path / "classes.csv"
    path.write_text("value,name,prompt\n1,liver,\nx,kidney,\n0,bg,\n1,again,\n3,,\n4,Liver,\n5,spleen,{colour}\n")
    with pytest.raises(DataValidationError) as caught:
        read_class_table(path)
    problems = caught.value.problems
    assert len(problems) == 6
    assert problems[0].startswith("row 3: value 'x' is not an integer")
    assert "row 4: value 0 is out of range" in problems[1]
    assert "row 5: value 1 is already class 'liver'" in problems[2]
    assert "row 6: class 3 has no name" in problems[3]
    assert "row 7: name 'Liver'" in problems[4]
    assert "row 8" in problems[5] and "{colour}" in problems[5]
    with pytest.raises(DataValidationError, match="item 2"):
        parse_classes("1=liver,kidney")
    assert [c.name for c in parse_classes(" 1 = liver , 2=kidney")] == ["liver", "kidney"]


def test_binary_lvit_layout_is_read_unchanged(tmp_path: Path) -> None:
    make_split(tmp_path, "train")
    assert detect_layout(tmp_path).name == "lvit"
    assert load_dataset_split(tmp_path, "train") == load_split(tmp_path, "train")
    assert all(s.class_name == "" and s.mask_value is None for s in load_dataset_split(tmp_path, "train"))


def test_label_maps_reject_semi_supervised_and_bad_prompt_types(tmp_path: Path) -> None:
    folder = label_split(tmp_path, two_maps())
    write_classes(tmp_path, "value,name\n1,liver\n2,kidney\n")
    # Reading images where masks are optional (backend tuning) works while every image has its label map ...
    assert len(load_dataset_split(tmp_path, "train", require_masks=False)) == 4
    with pytest.raises(LvsegError, match="p7"):
        load_dataset_split(tmp_path, "train", DataOptions(classes="1=liver,2=kidney", prompt_type="p7"))
    (folder / "labelcol" / "b.png").unlink()
    with pytest.raises(LvsegError, match="semi-supervised.*'b.png'"):  # ... and names the image without one
        load_dataset_split(tmp_path, "train", require_masks=False)


def test_class_prompt_never_says_no() -> None:
    empty = np.zeros((10, 10), np.uint8)
    assert class_prompt(empty, "kidney", "CT slice", "p2") == "kidney"
    assert class_prompt(empty, "kidney", "CT slice", "p6") == "kidney in a CT slice"
    assert class_prompt(empty, "kidney", "CT slice", "p0") == ""


def test_synthetic_multiclass_set_is_deterministic_and_alike_but_for_shape(tmp_path: Path) -> None:
    first, again = synthesize_multiclass_case(3, 5, 64), synthesize_multiclass_case(3, 5, 64)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.label_map, again.label_map)
    cases = [synthesize_multiclass_case(0, index, 64) for index in range(40)]
    assert all(len(case.present) >= 2 for case in cases)
    levels = {value: [] for value in CLASSES}
    for case in cases:
        for value in case.present:
            levels[value].append(float(case.image[case.label_map == value].mean()))
    means = [np.mean(values) for values in levels.values()]
    assert max(means) - min(means) < 10  # one intensity distribution: brightness does not tell the class
    manifest = generate_multiclass_dataset(tmp_path / "set", n=10, size=32, seed=0)
    assert manifest["counts"] == {"train": 7, "val": 1, "test": 2}
    samples = load_dataset_split(tmp_path / "set", "test")
    assert len(samples) == 6 and class_names(samples) == ["disc", "ring", "bar"]
    with pytest.raises(LvsegError, match="not an empty folder"):
        generate_multiclass_dataset(tmp_path / "set", n=10, size=32)


def test_verbs_reading_a_checkpoints_data_default_to_the_options_training_recorded() -> None:
    from lvseg.data.formats import recorded_data_options

    hparams = {"data_options": {"layout": "lvit", "prompt_type": "p6", "modality": "CT slice", "negative_ratio": 0.2}}
    recorded = recorded_data_options(hparams)
    options = DataOptions.given_or_recorded(recorded, prompt_type=None, modality=None, negative_ratio=None, seed=3)
    # the prompts' wording follows training; every (image, class) pair is scored; the given seed is kept
    assert (options.prompt_type, options.modality, options.negative_ratio, options.seed) == ("p6", "CT slice", 1.0, 3)
    given = DataOptions.given_or_recorded(recorded, prompt_type="p2", modality="MRI")
    assert (given.prompt_type, given.modality) == ("p2", "MRI")
    text_model = recorded_data_options({"class_prompting": {"prompt_type": "p1", "modality": "X-ray"}})
    assert DataOptions.given_or_recorded(text_model).modality == "X-ray"
    assert DataOptions.given_or_recorded(recorded_data_options({})) == DataOptions()
