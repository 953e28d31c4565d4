"""The real MoNuSeg release in ``../shared/datasets/MoNuSeg``: all 44 samples load and training runs on it.

Skipped with a reason when the folder is absent (see ``monuseg_root`` in conftest.py).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from lvseg.data.layout import load_split
from lvseg.inference import load_model
from lvseg.training.checkpoint import read_checkpoint_dict
from lvseg.training.fit import TrainConfig, train

EXPECTED_COUNTS = {"train": 24, "val": 6, "test": 14}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks train fastest on one thread; two threads on a busy 2-core machine are ~4x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_all_44_samples_load_with_masks_and_reports(monuseg_root: Path) -> None:
    names: set[str] = set()
    for split, expected in EXPECTED_COUNTS.items():
        samples = load_split(monuseg_root, split)
        assert len(samples) == expected, split
        for sample in samples:
            assert sample.image_path.is_file() and sample.mask_path is not None and sample.mask_path.is_file()
            assert sample.text.strip(), f"{sample.name} has an empty report"
        names.update(sample.name for sample in samples)
    assert len(names) == sum(EXPECTED_COUNTS.values()) == 44  # no image in two splits


@pytest.mark.parametrize("model", ["lvit", "unet"])
def test_one_short_training_step(model: str, monuseg_root: Path, tmp_path: Path) -> None:
    out = tmp_path / model
    config = TrainConfig(
        data=monuseg_root,
        out=out,
        model=model,
        img_size=64,
        base_channels=8,
        text_length=16,
        max_epochs=1,
        limit_train_batches=1,
        progress_bar=False,
        num_workers=0,
        seed=0,
    )
    result = train(config)
    assert result.last_checkpoint.is_file() and result.best_checkpoint.is_file()
    checkpoint = read_checkpoint_dict(result.last_checkpoint)
    assert checkpoint["global_step"] == 1 and checkpoint["hyper_parameters"]["model_name"] == model
    with (out / "logs" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["train_loss_epoch"]) for row in rows if row.get("train_loss_epoch")]
    assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0
    dice = [float(row["val_dice"]) for row in rows if row.get("val_dice")]
    assert len(dice) == 1 and 0.0 <= dice[0] <= 1.0
    segmenter = load_model(result.best_checkpoint)
    assert segmenter.requires_text == (model == "lvit")
    sample = load_split(monuseg_root, "test")[0]
    prediction = segmenter.predict(sample.image_path, sample.text)
    with Image.open(sample.image_path) as image:
        assert prediction.mask.shape == (image.height, image.width)  # back at the slide's resolution
