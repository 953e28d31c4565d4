"""Tests of lvseg.data.layout: reading and validating LViT-layout splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders import make_split, square_image, truncate, write_table
from lvseg.data.layout import SPLIT_FOLDERS, Sample, TextRow, find_text_table, list_splits, load_split, read_text_table
from lvseg.errors import DataValidationError, LvsegError


def problems_of(root: Path, split: str = "train", **options) -> list[str]:
    with pytest.raises(DataValidationError) as caught:
        load_split(root, split, **options)
    return caught.value.problems


def test_stem_named_masks_from_xlsx_with_tif_images(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, "test", image_ext=".tif")
    samples = load_split(tmp_path, "test")
    assert [sample.name for sample in samples] == ["a_case", "b_case", "c_case"]
    first = samples[0]
    assert first == Sample(
        name="a_case",
        image_path=split_dir / "img" / "a_case.tif",
        mask_path=split_dir / "labelcol" / "a_case.png",
        text="text of a_case",
    )
    assert first.labeled


def test_prefixed_masks_from_csv(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, "val", prefixed=True, text_format="csv")
    samples = load_split(tmp_path, "val")
    assert [sample.mask_path for sample in samples] == [
        split_dir / "labelcol" / f"mask_{name}.png" for name in ("a_case", "b_case", "c_case")
    ]
    assert [sample.text for sample in samples] == ["text of a_case", "text of b_case", "text of c_case"]


def test_text_rows_may_name_the_image_instead_of_the_mask(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, prefixed=True, names=("x", "y"))
    write_table(
        split_dir / "Train_text.xlsx",
        [{"Image": "x.png", "Description": "one"}, {"Image": "y.png", "Description": "two"}],
    )
    assert [sample.text for sample in load_split(tmp_path, "train")] == ["one", "two"]


def test_list_splits(tmp_path: Path) -> None:
    assert list_splits(tmp_path) == []
    make_split(tmp_path, "test")
    make_split(tmp_path, "train")
    assert list_splits(tmp_path) == ["train", "test"]
    assert set(SPLIT_FOLDERS) == {"train", "val", "test"}


def test_unknown_split_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match="unknown split 'training'"):
        load_split(tmp_path, "training")
    problems = problems_of(tmp_path)
    assert problems == [f"split folder '{tmp_path / 'Train_Folder'}' not found"]
    problems = problems_of(tmp_path / "nowhere")
    assert len(problems) == 1 and "dataset root" in problems[0] and "nowhere" in problems[0]


def test_missing_img_labelcol_and_text_file_reported_together(tmp_path: Path) -> None:
    split_dir = tmp_path / "Train_Folder"
    split_dir.mkdir()
    with pytest.raises(DataValidationError) as caught:
        load_split(tmp_path, "train")
    error = caught.value
    assert len(error.problems) == 3
    joined = "\n".join(error.problems)
    assert str(split_dir / "img") in joined
    assert str(split_dir / "labelcol") in joined
    assert "'Train_text.xlsx' or 'Train_text.csv' not found" in joined
    assert str(split_dir) in str(error)  # `where` names the split folder


def test_every_problem_reported_at_once_naming_the_file(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, names=("good", "nomask", "notext", "empty", "dup", "badimg", "badmask"))
    img, labelcol = split_dir / "img", split_dir / "labelcol"
    (labelcol / "nomask.png").unlink()
    _, mask = square_image((20, 24), 1, 1, 3)
    Image.fromarray(mask).save(labelcol / "orphan.png")  # mask without image
    truncate(img / "badimg.png")
    truncate(labelcol / "badmask.png")
    rows = [
        {"Image": "good.png", "Description": "fine"},
        {"Image": "nomask.png", "Description": "fine"},
        {"Image": "empty.png", "Description": ""},
        {"Image": "dup.png", "Description": "first"},
        {"Image": "dup.png", "Description": "second"},
        {"Image": "badimg.png", "Description": "fine"},
        {"Image": "badmask.png", "Description": "fine"},
        {"Image": "ghost.png", "Description": "row without image"},
    ]
    write_table(split_dir / "Train_text.xlsx", rows)
    problems = problems_of(tmp_path)
    expected_fragments = [
        (f"image '{img / 'nomask.png'}' has no mask", "expected 'nomask.png'"),
        (f"mask '{labelcol / 'orphan.png'}' has no matching image",),
        (f"image '{img / 'notext.png'}' has no row in", "Train_text.xlsx"),
        ("row 9 of", "names 'ghost.png', which matches no image"),
        ("row 4 of", "('empty.png') has an empty 'Description'"),
        (f"image '{img / 'dup.png'}' has 2 duplicate rows", "rows 5, 6"),
        (f"image '{img / 'badimg.png'}' cannot be read", "truncated or corrupt"),
        (f"mask '{labelcol / 'badmask.png'}' cannot be read", "truncated or corrupt"),
    ]
    for fragments in expected_fragments:
        assert any(all(fragment in problem for fragment in fragments) for problem in problems), (fragments, problems)
    assert len(problems) == len(expected_fragments), problems


def test_missing_prefixed_mask_names_the_expected_file(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, prefixed=True, image_ext=".jpg")
    (split_dir / "labelcol" / "mask_b_case.jpg").unlink()
    (problem,) = problems_of(tmp_path)
    assert f"image '{split_dir / 'img' / 'b_case.jpg'}'" in problem
    assert "expected 'mask_b_case.jpg'" in problem


def test_text_file_missing_column_lists_found_columns(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, text_format="csv")
    write_table(split_dir / "Train_text.csv", [{"Image": "a_case.png", "Text": "x"}], columns=["Image", "Text"])
    (problem,) = problems_of(tmp_path)
    assert f"'{split_dir / 'Train_text.csv'}'" in problem
    assert "no column 'Description'" in problem
    assert "found columns: 'Image', 'Text'" in problem


def test_unreadable_text_file(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path)
    (split_dir / "Train_text.xlsx").write_bytes(b"this is not a spreadsheet")
    (problem,) = problems_of(tmp_path)
    assert f"text file '{split_dir / 'Train_text.xlsx'}' cannot be read" in problem


def test_not_an_image_and_truncated_tiff_and_jpeg(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, names=("a", "b", "c"), image_ext=".tif")
    img = split_dir / "img"
    (img / "a.tif").write_bytes(b"plain text, not an image")
    truncate(img / "b.tif", 0.6)
    jpeg_split = make_split(tmp_path, "val", names=("d",), image_ext=".jpg")
    truncate(jpeg_split / "img" / "d.jpg", 0.6)
    problems = problems_of(tmp_path)
    assert len(problems) == 2, problems
    assert any(f"'{img / 'a.tif'}'" in p and "not a PNG/JPEG/TIFF/BMP/DICOM file" in p for p in problems)
    assert any(f"'{img / 'b.tif'}'" in p and "truncated or corrupt" in p for p in problems)
    (problem,) = problems_of(tmp_path, "val")
    assert f"'{jpeg_split / 'img' / 'd.jpg'}'" in problem


def test_mask_with_other_size_than_its_image(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, names=("a", "b"))
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(split_dir / "labelcol" / "b.png")
    (problem,) = problems_of(tmp_path)
    assert f"mask '{split_dir / 'labelcol' / 'b.png'}' is 10x10" in problem and "24x20" in problem


def test_unlabeled_split_without_masks(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, prefixed=True)
    shutil.rmtree(split_dir / "labelcol")
    problems = problems_of(tmp_path)
    assert problems == [f"mask folder '{split_dir / 'labelcol'}' not found"]
    samples = load_split(tmp_path, "train", require_masks=False)
    assert [sample.mask_path for sample in samples] == [None, None, None]
    assert not any(sample.labeled for sample in samples)
    assert samples[1].text == "text of b_case"


def test_require_masks_false_keeps_present_masks_and_never_opens_them(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path)
    (split_dir / "labelcol" / "a_case.png").unlink()
    (split_dir / "labelcol" / "c_case.png").write_bytes(b"corrupt, but must not be opened")
    samples = load_split(tmp_path, "train", require_masks=False)
    assert [sample.mask_path for sample in samples] == [
        None,
        split_dir / "labelcol" / "b_case.png",
        split_dir / "labelcol" / "c_case.png",
    ]
    assert len(problems_of(tmp_path)) == 2  # both reported when masks are required


def test_real_monuseg_splits(monuseg_root: Path) -> None:
    assert list_splits(monuseg_root) == ["train", "val", "test"]
    counts = {split: load_split(monuseg_root, split) for split in ("train", "val", "test")}
    assert {split: len(samples) for split, samples in counts.items()} == {"train": 24, "val": 6, "test": 14}
    for samples in counts.values():
        assert [s.name for s in samples] == sorted(s.name for s in samples)
        assert all(s.mask_path is not None and s.mask_path.stem == s.name and s.text for s in samples)
    assert all(s.image_path.suffix == ".tif" and s.mask_path.suffix == ".png" for s in counts["test"])


# --- the text table reader ------------------------------------------------------------------------


@pytest.mark.parametrize("text_format", ["xlsx", "csv"])
def test_read_text_table_rows_with_spreadsheet_row_numbers(tmp_path: Path, text_format: str) -> None:
    path = tmp_path / f"Test_text.{text_format}"
    write_table(path, [{"Image": " a.png ", "Description": "first "}, {"Image": "b.png", "Description": ""}])
    rows = read_text_table(path)
    assert rows == [TextRow(2, "a.png", "first"), TextRow(3, "b.png", "")]
    row, key, description = rows[0]  # rows unpack as tuples too
    assert (row, key, description) == (2, "a.png", "first") and rows[0].description == "first"


def test_read_text_table_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "Test_text.csv"
    write_table(path, [{"Image": "a.png", "Report": "x"}], columns=["Image", "Report"])
    with pytest.raises(
        LvsegError, match=r"Test_text\.csv' has no column 'Description'; found columns: 'Image', 'Report'"
    ):
        read_text_table(path)
    broken = tmp_path / "Other_text.xlsx"
    broken.write_bytes(b"not a spreadsheet")
    with pytest.raises(LvsegError, match=r"text file '.*Other_text\.xlsx' cannot be read"):
        read_text_table(broken)


def test_find_text_table(tmp_path: Path) -> None:
    assert find_text_table(tmp_path) is None
    (tmp_path / ".hidden_text.csv").write_text("Image,Description\n")
    (tmp_path / "notes.csv").write_text("x\n")
    assert find_text_table(tmp_path) is None
    (tmp_path / "Test_TEXT.xlsx").write_bytes(b"")
    assert find_text_table(tmp_path) == tmp_path / "Test_TEXT.xlsx"
    (tmp_path / "Other_text.csv").write_text("Image,Description\n")
    with pytest.raises(LvsegError, match="several text tables"):
        find_text_table(tmp_path)
