"""The VLSM study's dataset layout (lvseg.data.vlsm): images/, masks/, anns/{train,val,test}.json.

The records are written exactly in the study's format (naamiinepal/medvlsm ``data/camus/anns/val.json``: one
record per image and structure, ``mask_name`` in ``mask_1/`` ... ``mask_3/``, ``prompts`` p0 a string and
p1 ... p7 lists of strings).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lvseg.data.dataset import SegmentationDataset
from lvseg.data.formats import DataOptions, detect_layout, list_dataset_splits, load_dataset_split
from lvseg.data.vlsm import load_vlsm_split
from lvseg.errors import DataValidationError, LvsegError

STRUCTURES = {"mask_1": "Left ventricular cavity", "mask_2": "Myocardium", "mask_3": "Left atrium cavity"}


def camus_record(image: str, folder: str) -> dict:
    """One record in the study's CAMUS format (field names and nesting as its published JSON)."""
    structure = STRUCTURES[folder]
    return {
        "img_name": image,
        "mask_name": f"{folder}/{Path(image).stem}_gt.png",
        "prompts": {
            "p0": "",
            "p1": [f"{structure} of the heart.", f"{structure} in the cardiac ultrasound."],
            "p2": [
                f"{structure} in two-chamber view of the heart.",
                f"{structure} in two-chamber view in the cardiac ultrasound.",
            ],
            "p3": f"{structure} in two-chamber view of the heart at end of the diastole cycle.",
        },
    }


def write_camus_like(
    root: Path, images: tuple[str, ...] = ("patient0001_2CH_ED.png", "patient0002_2CH_ES.png")
) -> Path:
    """images/, masks/mask_{1,2,3}/ and anns/{train,val,test}.json, every image in every split."""
    (root / "images").mkdir(parents=True)
    records = []
    for number, image in enumerate(images):
        pixels = np.full((20, 28), 30 + number, np.uint8)
        Image.fromarray(pixels).save(root / "images" / image)
        for index, folder in enumerate(STRUCTURES):
            mask = np.zeros((20, 28), np.uint8)
            mask[2 + 5 * index : 6 + 5 * index, 3:12] = 255
            (root / "masks" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "masks" / folder / f"{Path(image).stem}_gt.png")
            records.append(camus_record(image, folder))
    (root / "anns").mkdir()
    for split in ("train", "val", "test"):
        (root / "anns" / f"{split}.json").write_text(json.dumps(records, indent=2))
    return root


def test_study_records_become_samples(tmp_path: Path) -> None:
    root = write_camus_like(tmp_path / "camus")
    assert detect_layout(root).name == "vlsm"
    assert list_dataset_splits(root) == ["train", "val", "test"]
    samples = load_dataset_split(root, "train", DataOptions(prompt_type="p3"))
    assert len(samples) == 6
    first = samples[0]
    assert first.name == "mask_1/patient0001_2CH_ED_gt"
    assert first.image_path == root / "images" / "patient0001_2CH_ED.png"
    assert first.mask_path == (root / "masks" / "mask_1" / "patient0001_2CH_ED_gt.png").resolve()
    assert first.class_name == "mask_1"  # no "cat": the mask's folder
    assert first.text == "Left ventricular cavity in two-chamber view of the heart at end of the diastole cycle."
    assert first.prompt_choices == ()  # one string: nothing to draw
    item = SegmentationDataset(samples, 16)[1]
    assert item["mask"].sum() > 0


def test_lists_are_sampled_per_access_and_random_skips_p0(tmp_path: Path) -> None:
    root = write_camus_like(tmp_path / "camus")
    p1 = load_vlsm_split(root, "train", prompt_type="p1")
    assert p1[0].prompt_choices == (
        ("Left ventricular cavity of the heart.", "Left ventricular cavity in the cardiac ultrasound."),
    )
    dataset = SegmentationDataset(p1, 8, sample_prompts=True, seed=0)
    assert {dataset[0]["text"] for _ in range(40)} == set(p1[0].prompt_choices[0])
    random = load_vlsm_split(root, "train", prompt_type="random")
    offered = {text for group in random[1].prompt_choices for text in group}
    assert len(random[1].prompt_choices) == 3 and "" not in offered  # p1, p2, p3; never p0
    assert load_vlsm_split(root, "train", prompt_type="p0")[0].text == ""
    # The evaluation text is fixed by the seed.
    assert [s.text for s in load_vlsm_split(root, "test", "random", seed=1)] == [
        s.text for s in load_vlsm_split(root, "test", "random", seed=1)
    ]


def test_cat_names_the_class_and_optional_fields_are_accepted(tmp_path: Path) -> None:
    root = write_camus_like(tmp_path / "camus")
    records = json.loads((root / "anns" / "train.json").read_text())
    for record in records:
        record.update(cat="heart", bbox=[1, 2, 3, 4], segment_id=7, sentences=[{"sent": "x"}])
    (root / "anns" / "train.json").write_text(json.dumps(records))
    assert {s.class_name for s in load_vlsm_split(root, "train", "p1")} == {"heart"}


def test_per_split_image_folders(tmp_path: Path) -> None:
    root = write_camus_like(tmp_path / "camus")
    (root / "images" / "train").mkdir()
    for image in list((root / "images").glob("*.png")):
        image.rename(root / "images" / "train" / image.name)
    samples = load_dataset_split(root, "train", DataOptions(prompt_type="p1"))  # auto: images/train exists
    assert samples[0].image_path.parent == (root / "images" / "train").resolve()
    with pytest.raises(DataValidationError, match="not found"):
        load_dataset_split(root, "train", DataOptions(prompt_type="p1", split_image_folders=False))
    with pytest.raises(DataValidationError, match="per-split image folder"):
        load_dataset_split(root, "val", DataOptions(prompt_type="p1", split_image_folders=True))


def test_every_problem_of_a_split_is_listed_at_once(tmp_path: Path) -> None:
    root = write_camus_like(tmp_path / "camus")
    records = json.loads((root / "anns" / "train.json").read_text())
    records[0]["img_name"] = "missing.png"
    del records[1]["prompts"]
    records[2]["prompts"]["p1"] = 5
    records[3]["prompts"].pop("p3")
    records.append("not a record")
    records.append(dict(records[4]))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / records[5]["mask_name"])
    (root / "anns" / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataValidationError) as caught:
        load_vlsm_split(root, "train", prompt_type="p3")
    problems = caught.value.problems
    assert any(p.startswith("record 1 ") and "missing.png" in p and "not found" in p for p in problems)
    assert any(p.startswith("record 2 ") and "missing field(s) prompts" in p for p in problems)
    assert any(p.startswith("record 3 ") and "prompt 'p1' is 5" in p for p in problems)
    assert any(p.startswith("record 4 ") and "no prompt 'p3'" in p for p in problems)
    assert any(p.startswith("record 6 ") and "5x5" in p and "expected the same size" in p for p in problems)
    assert any(p.startswith("record 7:") and "expected an object" in p for p in problems)
    assert any(p.startswith("record 8 ") and "repeats record 5" in p for p in problems)
    assert len(problems) == 7


def test_bad_json_and_prompt_type(tmp_path: Path) -> None:
    root = write_camus_like(tmp_path / "camus")
    (root / "anns" / "val.json").write_text("{not json")
    with pytest.raises(DataValidationError, match="is not JSON"):
        load_vlsm_split(root, "val")
    with pytest.raises(LvsegError, match="p10"):
        load_vlsm_split(root, "train", prompt_type="p10")


def test_data_check_cli_lists_every_problem_of_every_split(tmp_path: Path) -> None:
    from lvseg.cli.main import app

    root = write_camus_like(tmp_path / "camus")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(root), "--prompt-type", "p2"])
    assert result.exit_code == 0, result.output
    assert "vlsm layout" in result.output and "train: 6 samples of 2 images" in result.output
    (root / "images" / "patient0002_2CH_ES.png").unlink()
    result = runner.invoke(app, ["data", "check", str(root), "--prompt-type", "p3"])
    assert result.exit_code != 0 and isinstance(result.exception, DataValidationError)
    problems = result.exception.problems
    for split in ("train", "val", "test"):
        assert any(p.startswith(f"{split}: record 4 ('mask_1/patient0002_2CH_ES_gt.png')") for p in problems)
    assert len(problems) == 9  # three records of the image, in each of three splits
