"""The synthetic dataset: layout, determinism, masks = targets, report = mask zones, look-alike distractors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from lvseg.data.reports import LUNGS, ZONES, parse_report
from lvseg.data.synth import (
    MANIFEST_NAME,
    SPLIT_FOLDERS,
    SPLIT_TEXT_FILES,
    contact_sheet,
    generate_synthetic_dataset,
    nominal_lungs,
    synthesize_case,
)
from lvseg.errors import LvsegError

N, SIZE = 12, 64


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    manifest = generate_synthetic_dataset(out, n=N, size=SIZE, seed=3)
    return out, manifest


@pytest.fixture(scope="module")
def cases() -> list:
    return [synthesize_case(seed=0, index=i, size=96) for i in range(200)]


def test_layout(dataset: tuple[Path, dict]) -> None:
    out, manifest = dataset
    assert manifest["complete"] and manifest["counts"] == {"Train_Folder": 9, "Val_Folder": 1, "Test_Folder": 2}
    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest
    assert manifest["params"] == {"n": N, "size": SIZE, "seed": 3, "splits": [0.7, 0.1, 0.2]}
    names_seen: set[str] = set()
    for folder, text_file in zip(SPLIT_FOLDERS, SPLIT_TEXT_FILES):
        split = out / folder
        table = pd.read_excel(split / text_file)
        assert list(table.columns) == ["Image", "Description"]
        images = sorted(p.name for p in (split / "img").iterdir())
        masks = sorted(p.name for p in (split / "labelcol").iterdir())
        assert len(images) == manifest["counts"][folder]
        assert masks == [f"mask_{name}" for name in images]
        assert sorted(table["Image"]) == masks
        assert not names_seen & set(images)
        names_seen |= set(images)
        for name in images:
            image = Image.open(split / "img" / name)
            mask = Image.open(split / "labelcol" / f"mask_{name}")
            assert image.mode == "L" and image.size == (SIZE, SIZE)
            assert mask.mode == "L" and mask.size == (SIZE, SIZE)
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
            assert np.asarray(mask).any()
        for description in table["Description"]:
            assert not parse_report(description).is_empty
    assert len(names_seen) == N


def test_files_match_the_generator(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    table = pd.read_excel(out / "Val_Folder" / "Val_text.xlsx")
    index = 9  # the first validation case
    case = synthesize_case(seed=3, index=index, size=SIZE)
    name = f"synth_{index:05d}.png"
    assert np.array_equal(np.asarray(Image.open(out / "Val_Folder" / "img" / name)), case.image)
    assert np.array_equal(np.asarray(Image.open(out / "Val_Folder" / "labelcol" / f"mask_{name}")), case.mask)
    assert table.set_index("Image").loc[f"mask_{name}", "Description"] == case.report


def test_loader_accepts_the_layout(dataset: tuple[Path, dict]) -> None:
    layout = pytest.importorskip("lvseg.data.layout")
    out, manifest = dataset
    for split, folder in (("train", "Train_Folder"), ("val", "Val_Folder"), ("test", "Test_Folder")):
        samples = layout.load_split(out, split)
        assert len(samples) == manifest["counts"][folder]
        assert all(sample.mask_path is not None and sample.mask_path.name.startswith("mask_") for sample in samples)


def test_deterministic_by_seed(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = dataset
    same = tmp_path / "same"
    other = tmp_path / "other"
    generate_synthetic_dataset(same, n=N, size=SIZE, seed=3)
    generate_synthetic_dataset(other, n=N, size=SIZE, seed=4)
    reference = _tree_hashes(out)
    assert _tree_hashes(same) == reference
    different = _tree_hashes(other)
    assert different.keys() == reference.keys()
    images = [key for key in reference if "/img/" in key]
    assert all(different[key] != reference[key] for key in images)


def test_masks_cover_exactly_the_targets(cases: list) -> None:
    for case in cases:
        targets = [k + 1 for k, o in enumerate(case.opacities) if o.is_target]
        assert np.array_equal(case.mask > 0, np.isin(case.labels, targets))
        for k, opacity in enumerate(case.opacities):
            region = case.labels == k + 1
            assert region.sum() > 20  # every opacity is visible
            x0, y0, x1, y1 = case.zone_box_pixels(opacity.lung, opacity.zone)
            ys, xs = np.nonzero(region)
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            # the opacity is bright where its mask is: clearly above the lung around it
            ring = ndimage.binary_dilation(region, iterations=6) & ~ndimage.binary_dilation(region, iterations=3)
            ring &= case.labels == 0
            assert case.image[region].mean() > case.image[ring].mean() + 25


def test_report_zones_agree_with_mask_zones(cases: list) -> None:
    """Each mask component lies in the nominal zone named by the report: zones are consistent across images."""
    boxes = {(lung, zone): geometry.zone_box(zone) for lung, geometry in nominal_lungs().items() for zone in ZONES}
    for case in cases:
        findings = parse_report(case.report)
        components, count = ndimage.label(case.mask > 0)
        assert count == findings.count
        found: dict[str, set[str]] = {lung: set() for lung in LUNGS}
        for cy, cx in ndimage.center_of_mass(case.mask > 0, components, range(1, count + 1)):
            u, v = (cx + 0.5) / case.image.shape[1], (cy + 0.5) / case.image.shape[0]
            inside = [key for key, (x0, y0, x1, y1) in boxes.items() if x0 <= u < x1 and y0 <= v < y1]
            assert len(inside) == 1, (case.index, u, v)
            found[inside[0][0]].add(inside[0][1])
        assert found["left"] == set(findings.left) and found["right"] == set(findings.right)


def test_radiological_laterality() -> None:
    lungs = nominal_lungs()
    assert lungs["left"].center_x > 0.5 > lungs["right"].center_x  # patient's left = image right


def test_targets_and_distractors_look_alike(cases: list) -> None:
    means: dict[bool, list[float]] = {True: [], False: []}
    areas: dict[bool, list[int]] = {True: [], False: []}
    for case in cases:
        for k, opacity in enumerate(case.opacities):
            region = case.labels == k + 1
            means[opacity.is_target].append(float(case.image[region].mean()))
            areas[opacity.is_target].append(int(region.sum()))
    target, distractor = np.array(means[True]), np.array(means[False])
    assert len(target) > 150 and len(distractor) > 150
    difference = target.mean() - distractor.mean()
    stderr = math.sqrt(target.var(ddof=1) / len(target) + distractor.var(ddof=1) / len(distractor))
    assert abs(difference) < 3.0, difference
    assert abs(difference / stderr) < 3.5, difference / stderr  # Welch t statistic
    area_ratio = np.mean(areas[True]) / np.mean(areas[False])
    assert 0.9 < area_ratio < 1.1


def test_report_and_target_statistics(cases: list) -> None:
    zones_used = {(o.lung, o.zone) for case in cases for o in case.opacities if o.is_target}
    assert len(zones_used) == 6
    lungs_per_report = {len(case.findings.lungs) for case in cases}
    assert lungs_per_report == {1, 2}
    assert {case.findings.count for case in cases} == {1, 2, 3}
    assert all(2 <= len(case.opacities) <= 5 and any(not o.is_target for o in case.opacities) for case in cases)
    target_pixels = sum(int((case.mask > 0).sum()) for case in cases)
    opacity_pixels = sum(int((case.labels > 0).sum()) for case in cases)
    assert 0.38 < target_pixels / opacity_pixels < 0.52
    dice_all = [2 * (c.mask > 0).sum() / ((c.mask > 0).sum() + (c.labels > 0).sum()) for c in cases]
    assert float(np.mean(dice_all)) < 0.66  # an image-only model cannot do much better than this


def test_contact_sheet(cases: list, tmp_path: Path) -> None:
    path = contact_sheet(cases[:8], tmp_path / "sheet.png")
    assert Image.open(path).size == (8 * 98, 2 * 96 + 2)


def test_refuses_foreign_folder_and_replaces_previous_output(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(LvsegError, match="not empty"):
        generate_synthetic_dataset(foreign, n=4, size=32)
    generate_synthetic_dataset(foreign, n=4, size=32, force=True)
    assert (foreign / "notes.txt").read_text() == "keep me"

    previous = tmp_path / "previous"
    generate_synthetic_dataset(previous, n=10, size=32)
    generate_synthetic_dataset(previous, n=5, size=32)  # a previous synth output is replaced without --force
    assert sum(1 for _ in previous.glob("*_Folder/img/*.png")) == 5
    assert sum(1 for _ in previous.glob("*_Folder/labelcol/*.png")) == 5


@pytest.mark.parametrize(
    ("n", "splits"), [(2, (0.7, 0.1, 0.2)), (10, (0.5, 0.5)), (10, (0.5, 0.2, 0.2)), (10, (1.2, -0.1, -0.1))]
)
def test_rejects_bad_arguments(tmp_path: Path, n: int, splits: tuple[float, ...]) -> None:
    with pytest.raises(LvsegError):
        generate_synthetic_dataset(tmp_path / "x", n=n, size=32, splits=splits)


def test_cli_synth_and_check(tmp_path: Path) -> None:
    from lvseg.cli.main import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "6", "--size", "32", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 synthetic images" in result.output and "Train_Folder 4" in result.output
    assert json.loads((out / MANIFEST_NAME).read_text())["params"]["seed"] == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    result = runner.invoke(app, ["data", "synth", "--out", str(foreign), "--n", "6", "--size", "32"])
    assert result.exit_code != 0 and isinstance(result.exception, LvsegError)
    result = runner.invoke(app, ["data", "synth", "--out", str(foreign), "--n", "6", "--size", "32", "--force"])
    assert result.exit_code == 0, result.output

    pytest.importorskip("lvseg.data.layout")
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0, result.output
    assert "train: 4 images" in result.output
    (out / "Test_Folder" / "labelcol" / "mask_synth_00005.png").unlink()
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code != 0 and isinstance(result.exception, LvsegError)
