"""Tests of lvseg.data.dataset and lvseg.data.transforms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import lvseg.data.dataset as dataset_module
from data_builders import make_split
from lvseg.data import SegmentationDataset, build_train_transform, load_split

IMG_SIZE = 32


@pytest.fixture
def samples(tmp_path: Path):
    make_split(tmp_path, names=("a", "b", "c", "d"), size=(40, 48))
    return load_split(tmp_path, "train")


def square_item(size: int = IMG_SIZE) -> dict[str, torch.Tensor]:
    """An image whose only bright pixels are an off-centre 3x3 square, and the square's mask."""
    image = torch.zeros(3, size, size)
    mask = torch.zeros(1, size, size)
    image[:, 4:7, 20:23] = 1.0
    mask[:, 4:7, 20:23] = 1.0
    return {"image": image, "mask": mask}


def centroid(plane: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(plane).nonzero().float().mean(dim=0)


def test_items_have_the_contract_shapes(samples) -> None:
    dataset = SegmentationDataset(samples, IMG_SIZE)
    assert len(dataset) == 4
    item = dataset[1]
    assert item["image"].shape == (3, IMG_SIZE, IMG_SIZE) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, IMG_SIZE, IMG_SIZE) and item["mask"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert (item["text"], item["name"], item["index"], item["labeled"]) == ("text of b", "b", 1, True)
    assert dataset.texts() == ["text of a", "text of b", "text of c", "text of d"]
    # The bright square of the image lies where the mask is.
    bright = item["image"][0] > 0.6
    assert (item["mask"][0][bright] == 1).float().mean() > 0.9
    gray = SegmentationDataset(samples, 16, channels=1)[0]["image"]
    assert gray.shape == (1, 16, 16)


def test_grayscale_files_are_replicated(tmp_path: Path) -> None:
    split_dir = make_split(tmp_path, names=("g",))
    Image.open(split_dir / "img" / "g.png").convert("L").save(split_dir / "img" / "g.png")
    item = SegmentationDataset(load_split(tmp_path, "train"), 8)[0]
    assert item["image"].shape == (3, 8, 8)
    assert torch.equal(item["image"][0], item["image"][2])


def test_unlabeled_samples_never_open_a_mask(samples, monkeypatch) -> None:
    unlabeled = [dataclasses.replace(sample, mask_path=None) for sample in samples]

    def refuse(path):
        raise AssertionError(f"mask {path} was opened")

    monkeypatch.setattr(dataset_module, "read_mask", refuse)
    item = SegmentationDataset(unlabeled, IMG_SIZE, augment=True, seed=0)[2]
    assert item["labeled"] is False
    assert torch.equal(item["mask"], torch.zeros(1, IMG_SIZE, IMG_SIZE))


def test_cache_decodes_each_file_once_and_matches_uncached(samples, monkeypatch) -> None:
    calls: list[Path] = []
    original = dataset_module.read_image

    def counting(source, channels=3):
        calls.append(source)
        return original(source, channels=channels)

    monkeypatch.setattr(dataset_module, "read_image", counting)
    cached = SegmentationDataset(samples, IMG_SIZE, cache=True)
    first, again = cached[0], cached[0]
    assert len(calls) == 1
    uncached = SegmentationDataset(samples, IMG_SIZE, cache=False)
    fresh = uncached[0]
    uncached[0]
    assert len(calls) == 3
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["image"], fresh["image"])
    assert torch.equal(first["mask"], fresh["mask"])
    cached.preload()
    assert len(calls) == 3 + 3  # only the three samples not yet cached


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    transform = build_train_transform(seed=3)
    seen_positions = set()
    for _ in range(24):
        out = transform(square_item())
        image, mask = out["image"].as_tensor(), out["mask"].as_tensor()
        assert image.shape == (3, IMG_SIZE, IMG_SIZE) and mask.shape == (1, IMG_SIZE, IMG_SIZE)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        image_centre, mask_centre = centroid(image[0] > 0.5), centroid(mask[0])
        assert torch.allclose(image_centre, mask_centre, atol=1.0), (image_centre, mask_centre)
        seen_positions.add(tuple(mask_centre.round().tolist()))
    assert len(seen_positions) >= 4  # it really moves the square around


def test_augmentation_rotations_stay_within_20_degrees_or_are_right_angles() -> None:
    transform = build_train_transform(seed=11)
    size = IMG_SIZE
    centre = (size - 1) / 2
    reference = centroid(square_item()["mask"][0]) - centre
    for _ in range(30):
        moved = centroid(transform(square_item())["mask"].as_tensor()[0]) - centre
        angle = torch.rad2deg(torch.atan2(moved[0], moved[1]) - torch.atan2(reference[0], reference[1]))
        angle = (angle + 180) % 360 - 180
        # right-angle rotations and flips put the square on a mirrored/rotated spot;
        # otherwise the angle is small (allowing for pixel rounding).
        mirrored = torch.tensor([[r * reference[0], c * reference[1]] for r in (1, -1) for c in (1, -1)])
        swapped = mirrored.flip(dims=[1])
        near_symmetric = torch.cat([mirrored, swapped]).sub(moved).norm(dim=1).min() < 1.0
        assert near_symmetric or abs(float(angle)) <= 23.0, float(angle)


def test_augmentation_is_deterministic_by_seed(samples) -> None:
    def stream(seed: int) -> list[torch.Tensor]:
        dataset = SegmentationDataset(samples, IMG_SIZE, augment=True, seed=seed)
        return [dataset[index % 4]["mask"] for index in range(8)]

    first, second, other = stream(5), stream(5), stream(6)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_default_collate_and_worker_processes(samples) -> None:
    same_sample = [samples[0]] * 4
    dataset = SegmentationDataset(same_sample, IMG_SIZE, augment=True, seed=0)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, IMG_SIZE, IMG_SIZE) and batch["mask"].shape == (2, 1, IMG_SIZE, IMG_SIZE)
    assert batch["text"] == ["text of a", "text of a"] and batch["name"] == ["a", "a"]
    assert batch["index"].tolist() == [0, 1] and batch["labeled"].tolist() == [True, True]

    def worker_masks() -> list[torch.Tensor]:
        torch.manual_seed(123)
        loader = DataLoader(dataset, batch_size=1, num_workers=2)
        return [batch["mask"][0] for batch in loader]

    masks = worker_masks()
    assert len(masks) == 4
    # items 0, 2 come from worker 0 and 1, 3 from worker 1: workers must not repeat each other
    assert not (torch.equal(masks[0], masks[1]) and torch.equal(masks[2], masks[3]))
    again = worker_masks()
    assert all(torch.equal(a, b) for a, b in zip(masks, again))  # reproducible under torch.manual_seed


def test_real_monuseg_item_at_224(monuseg_root: Path) -> None:
    samples = load_split(monuseg_root, "test")
    assert len(samples) == 14
    dataset = SegmentationDataset(samples[:1], 224, augment=True, seed=0)
    item = dataset[0]
    assert item["image"].shape == (3, 224, 224) and item["mask"].shape == (1, 224, 224)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert 0.02 < float(item["mask"].mean()) < 0.9
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["text"] == samples[0].text and item["labeled"] is True
    np.testing.assert_array_less(0.05, item["image"].std().item())


def _quadrant_of_bright_block(image) -> tuple[int, int]:
    import numpy as np

    array = np.asarray(image[0])
    rows, cols = np.nonzero(array > 0.5)
    half = array.shape[0] / 2
    return int(rows.mean() >= half), int(cols.mean() >= half)


def test_rotate_augmentation_keeps_sides_that_reports_name_while_paper_mode_flips():
    import torch

    from lvseg.data.transforms import build_train_transform

    image = torch.zeros(1, 64, 64)
    image[:, 8:20, 10:22] = 1.0  # a lesion in the upper-left quadrant
    sample = {"image": image, "mask": (image > 0.5).float()}
    rotate_quadrants = {
        _quadrant_of_bright_block(build_train_transform(seed, mode="rotate")(dict(sample))["image"])
        for seed in range(30)
    }
    paper_quadrants = {
        _quadrant_of_bright_block(build_train_transform(seed, mode="paper")(dict(sample))["image"])
        for seed in range(30)
    }
    assert rotate_quadrants == {(0, 0)}
    assert len(paper_quadrants) > 1


def test_augment_none_returns_the_resized_sample_unchanged(tmp_path):
    import numpy as np
    from PIL import Image

    from lvseg.data.dataset import SegmentationDataset
    from lvseg.data.layout import Sample

    pixels = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray((pixels > 128).astype(np.uint8) * 255).save(tmp_path / "m.png")
    sample = Sample(name="a", image_path=tmp_path / "a.png", mask_path=tmp_path / "m.png", text="t")
    plain = SegmentationDataset([sample], 32, augment=False)[0]
    none = SegmentationDataset([sample], 32, augment="none")[0]
    assert (plain["image"] == none["image"]).all() and (plain["mask"] == none["mask"]).all()
