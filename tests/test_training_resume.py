"""A resumed run reproduces an uninterrupted one: the data order, the augmentation, the prompts drawn and the
random numbers the model draws (dropout) are restored, not re-seeded, so the epochs after ``--resume`` train on
exactly what they would have trained on without the interruption.

A tiny run (9 synthetic 32 px images, an 8-channel network, 3 epochs) against the same run killed at the start of
its third epoch (after ``last.ckpt`` of the second was written) and resumed.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from lvseg.data.synth import generate_synthetic_dataset
from lvseg.training.checkpoint import read_checkpoint_dict
from lvseg.training.fit import TrainConfig, train
from lvseg.training.module import SegmentationTask

pytestmark = pytest.mark.slow

IMG_SIZE = 32
EPOCHS = 3


class Killed(RuntimeError):
    """What the simulated kill raises."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic_dataset(root, n=12, size=IMG_SIZE, seed=0)
    return root


def _config(data: Path, out: Path, **overrides: Any) -> TrainConfig:
    options: dict[str, Any] = dict(
        data=data,
        out=out,
        model="lvit",
        img_size=IMG_SIZE,
        base_channels=8,
        text_length=12,
        batch_size=2,
        max_epochs=EPOCHS,
        patience=10,
        progress_bar=False,
        num_workers=0,
        seed=3,
        augment="paper",
    )
    options.update(overrides)
    return TrainConfig(**options)


def _epoch_rows(out: Path) -> dict[int, dict[str, float]]:
    """metrics.csv by epoch: the epoch-level values (train_loss, val_dice, ...) of each epoch."""
    rows: dict[int, dict[str, float]] = {}
    with (out / "logs" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            values = {key: float(value) for key, value in row.items() if value not in ("", None)}
            epoch = int(values.pop("epoch"))
            values.pop("step", None)
            rows.setdefault(epoch, {}).update(
                {key: value for key, value in values.items() if key.startswith("val_") or key.endswith("_epoch")}
            )
    return rows


def _run(config: TrainConfig, kill_at_epoch: int | None = None) -> list[tuple[int, list[str]]]:
    """Train; return the names of the images of every training batch, by epoch. ``kill_at_epoch``: raise
    :class:`Killed` at the start of that epoch (its checkpoint of the epoch before is on disk)."""
    seen: list[tuple[int, list[str]]] = []

    def on_train_batch_start(self: SegmentationTask, batch: dict[str, Any], batch_idx: int) -> None:
        if kill_at_epoch is not None and self.current_epoch == kill_at_epoch:
            raise Killed(f"simulated kill at the start of epoch {kill_at_epoch}")
        seen.append((self.current_epoch, list(batch["name"])))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "on_train_batch_start", on_train_batch_start, raising=False)
        train(config)
    return seen


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="shuffled"),
        pytest.param({"balance_classes": True}, id="class-balanced-sampler"),
        pytest.param({"num_workers": 2}, id="two-workers"),
        pytest.param({"labeled_fraction": 0.5, "warmup_epochs": 1}, id="semi-supervised"),
    ],
)
def test_a_resumed_run_reproduces_the_uninterrupted_one(data: Path, tmp_path: Path, options: dict) -> None:
    whole = _run(_config(data, tmp_path / "whole", **options))
    killed_out = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(_config(data, killed_out, **options), kill_at_epoch=EPOCHS - 1)
    assert read_checkpoint_dict(killed_out / "last.ckpt")["epoch"] == EPOCHS - 2
    resumed = _run(_config(data, killed_out, resume=True, **options))

    last_epoch = EPOCHS - 1
    assert [names for epoch, names in resumed] == [names for epoch, names in whole if epoch == last_epoch], (
        "the resumed epoch must visit the images in the uninterrupted run's order"
    )
    expected, found = _epoch_rows(tmp_path / "whole"), _epoch_rows(killed_out)
    assert found.keys() == expected.keys() == set(range(EPOCHS))
    for epoch in range(EPOCHS):
        assert found[epoch].keys() == expected[epoch].keys(), epoch
        for key, value in expected[epoch].items():
            assert found[epoch][key] == pytest.approx(value, abs=1e-6), (epoch, key)
    final = read_checkpoint_dict(killed_out / "last.ckpt")["state_dict"]
    reference = read_checkpoint_dict(tmp_path / "whole" / "last.ckpt")["state_dict"]
    assert final.keys() == reference.keys()
    worst = max(float((final[key].float() - reference[key].float()).abs().max()) for key in reference)
    assert worst <= 1e-6, f"the resumed run's weights differ from the uninterrupted run's by up to {worst:g}"


def test_the_epoch_sampler_is_a_function_of_seed_and_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    import lvseg.data.seeding as seeding
    from lvseg.data.seeding import EpochSampler

    sampler = EpochSampler(10, seed=4)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first  # iterating again repeats the epoch
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(10)) and second != first
    assert list(EpochSampler(10, seed=4, start_epoch=1)) == second  # a resumed run's first epoch
    assert list(EpochSampler(10, seed=5)) != first
    assert list(EpochSampler(4, seed=0, weights=[0, 0, 1, 0])) == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="weights must be 3 non-negative numbers"):
        EpochSampler(3, seed=0, weights=[1, -1, 1])
    # DDP: the processes share out the epoch's list, padded to a multiple of their number
    shares = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(seeding, "_replicas", lambda rank=rank: (3, rank))
        shares.append(list(sampler))
        assert len(sampler) == 4
    dealt = [shares[index % 3][index // 3] for index in range(12)]
    assert dealt == (second + second)[:12]


def test_augmentation_and_prompts_depend_on_seed_epoch_and_index_only(data: Path) -> None:
    import dataclasses

    from lvseg.data.dataset import SegmentationDataset
    from lvseg.data.layout import load_split
    from lvseg.data.seeding import EpochClock

    samples = [
        dataclasses.replace(sample, prompt_choices=((f"a {index}", f"b {index}", f"c {index}"), (f"d {index}",)))
        for index, sample in enumerate(load_split(data, "train"))
    ]
    clock = EpochClock()
    dataset = SegmentationDataset(samples, IMG_SIZE, augment="paper", seed=1, sample_prompts=True, epoch_clock=clock)

    def epoch() -> list[tuple[torch.Tensor, str]]:
        return [(dataset[index]["image"], dataset[index]["text"]) for index in range(len(dataset))]

    forward = epoch()
    backward = [(dataset[index]["image"], dataset[index]["text"]) for index in reversed(range(len(dataset)))][::-1]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(forward, backward))  # order does not matter
    clock.set(1)
    later = epoch()
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(forward, later))  # another epoch, other draws
    clock.set(0)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(forward, epoch()))
    with pytest.raises(ValueError, match="give a seed"):
        SegmentationDataset(samples, IMG_SIZE, augment="paper", epoch_clock=clock)
