"""Semi-supervised runs in two phases: the supervised phase is supervised-only training, the semi phase starts
from its best checkpoint, and the returned checkpoint is the better of the two on validation. Also the
per-pixel confidence mask, the report filter as the task applies it, and DDP with resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lvseg.data.synth import generate_synthetic_dataset
from lvseg.models.losses import class_balanced_bce_with_logits, soft_dice_loss
from lvseg.training.checkpoint import read_checkpoint_dict
from lvseg.training.fit import TrainConfig, train
from lvseg.training.pseudo_labels import PseudoLabelBank, ReportFilter, confidence_weight
from lvseg.training.semi import PHASES_FILE, PSEUDO_LABEL_FILE, SEMI, SUPERVISED, SemiSupervisedTask

LVSEG = Path(sys.executable).parent / "lvseg"


@pytest.fixture(scope="module")
def semi_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phases") / "data"
    generate_synthetic_dataset(root, n=30, size=32, seed=2, splits=(0.6, 0.2, 0.2))
    return root


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    options: dict = dict(
        data=data,
        out=out,
        model="unet",
        img_size=32,
        base_channels=4,
        batch_size=4,
        max_epochs=8,
        patience=1,
        accelerator="cpu",
        progress_bar=False,
        labeled_fraction=0.34,
        seed=0,
        rampup_epochs=1.0,
        augment="none",
    )
    options.update(changes)
    return TrainConfig(**options)


def _val_dice(out: Path) -> list[float]:
    with open(out / "logs" / "metrics.csv", newline="", encoding="utf-8") as handle:
        return [float(row["val_dice"]) for row in csv.DictReader(handle) if row.get("val_dice")]


@pytest.fixture(scope="module")
def runs(semi_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("phase-runs")
    baseline = train(_config(semi_data, root / "supervised", supervised_only=True))
    semi = train(_config(semi_data, root / "semi"))
    return {"baseline": baseline, "semi": semi, "baseline_out": root / "supervised", "semi_out": root / "semi"}


def test_the_supervised_phase_is_supervised_only_training(runs: dict) -> None:
    baseline, semi = runs["baseline"], runs["semi"]
    phases = semi.phases
    assert phases is not None and phases["semi_start_epoch"] is not None, "the supervised phase must end"
    supervised_epochs = phases["semi_start_epoch"]
    # Same loader, seed and weights: epoch for epoch the same validation Dice until the baseline stops.
    assert _val_dice(runs["semi_out"])[:supervised_epochs] == _val_dice(runs["baseline_out"])[:supervised_epochs]
    assert baseline.epochs + 1 >= supervised_epochs  # the baseline stopped where the supervised phase ended
    assert phases["supervised_best_val_dice"] == pytest.approx(baseline.best_val_dice)


def test_the_returned_checkpoint_is_the_better_phase_on_validation(runs: dict) -> None:
    phases, out = runs["semi"].phases, runs["semi_out"]
    best_of_both = max(
        value for value in (phases["supervised_best_val_dice"], phases["semi_best_val_dice"]) if value is not None
    )
    checkpoint = read_checkpoint_dict(out / "best.ckpt")
    assert checkpoint["lvseg"]["metrics"]["val_dice"] == pytest.approx(best_of_both)
    assert max(_val_dice(out)) == pytest.approx(best_of_both)
    assert runs["semi"].best_val_dice >= runs["baseline"].best_val_dice  # never worse than supervised-only
    expected_phase = SEMI if (phases["semi_best_val_dice"] or -1) > phases["supervised_best_val_dice"] else SUPERVISED
    assert phases["best_checkpoint_phase"] == expected_phase
    best_epoch = phases["semi_best_epoch"] if expected_phase == SEMI else phases["supervised_best_epoch"]
    assert checkpoint["epoch"] == best_epoch
    written = json.loads((out / PHASES_FILE).read_text(encoding="utf-8"))
    assert written == phases
    last = read_checkpoint_dict(out / "last.ckpt")
    assert last["lvseg"]["metrics"]["supervised_best_val_dice"] == pytest.approx(phases["supervised_best_val_dice"])


def test_the_semi_phase_starts_from_the_best_supervised_weights(
    semi_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    restored: list[dict[str, torch.Tensor]] = []
    original = SemiSupervisedTask.start_semi_phase

    def spy(self: SemiSupervisedTask) -> None:
        original(self)
        restored.append({key: value.clone() for key, value in self.model.state_dict().items()})
        assert self.teacher is not None
        teacher_state = self.teacher.model.state_dict()
        assert all(torch.equal(teacher_state[key], value) for key, value in restored[-1].items())

    monkeypatch.setattr(SemiSupervisedTask, "start_semi_phase", spy)
    out = tmp_path / "warm"
    result = train(_config(semi_data, out, warmup_epochs=2, max_epochs=3, patience=10))
    assert result.phases is not None and result.phases["semi_start_epoch"] == 2 and len(restored) == 1
    best = read_checkpoint_dict(out / "best.ckpt")
    if best["epoch"] < 2:  # best.ckpt from the supervised phase holds the weights the semi phase started from
        stored = {key[len("model.") :]: value for key, value in best["state_dict"].items()}
        assert all(torch.equal(stored[key], value) for key, value in restored[0].items())
    pseudo = torch.load(out / PSEUDO_LABEL_FILE, weights_only=True)
    assert bool(pseudo["seen"].all())  # the one semi epoch updated every unlabeled image


# ------------------------------------------------------------------------------- confidence and report


def test_confidence_weight_ignores_the_uncertain_band() -> None:
    soft = torch.tensor([0.0, 0.05, 0.2, 0.5, 0.85, 0.95, 1.0]).view(1, 1, 1, -1)
    assert confidence_weight(soft, 0.9).flatten().tolist() == [1, 1, 0, 0, 0, 1, 1]
    assert confidence_weight(soft, 0.5).flatten().tolist() == [1] * 7
    with pytest.raises(Exception, match="pseudo-confidence"):
        confidence_weight(soft, 0.3)


def test_pixel_weights_restrict_the_losses_to_the_kept_pixels() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    ones = torch.ones(2, 1, 8, 8)
    assert soft_dice_loss(logits, target, ones) == pytest.approx(float(soft_dice_loss(logits, target)), abs=1e-6)
    assert class_balanced_bce_with_logits(logits, target, ones) == pytest.approx(
        float(class_balanced_bce_with_logits(logits, target)), abs=1e-6
    )
    keep = torch.zeros(2, 1, 8, 8)
    keep[..., :4] = 1.0
    masked = soft_dice_loss(logits, target, keep)
    assert masked == pytest.approx(float(soft_dice_loss(logits[..., :4], target[..., :4])), abs=1e-5)
    changed = logits.clone()
    changed[..., 4:] = 100.0  # the ignored pixels do not matter
    assert soft_dice_loss(changed, target, keep) == pytest.approx(float(masked), abs=1e-5)
    assert class_balanced_bce_with_logits(changed, target, keep) == pytest.approx(
        float(class_balanced_bce_with_logits(logits, target, keep)), abs=1e-5
    )


def test_the_task_supervises_only_confident_pixels_and_filters_by_report() -> None:
    size = 32
    task = SemiSupervisedTask(
        model_name="unet",
        model_config={"img_size": size, "base_channels": 4},
        warmup_epochs=0.0,
        rampup_epochs=0.0,
        lv_weight=0.0,
        strong_view=False,
        pseudo_confidence=0.9,
        report_filter=True,
        epi_beta=0.99,
    )
    bank = PseudoLabelBank(["a"], img_size=size, beta=0.99)
    stored = torch.zeros(1, 1, size, size)
    stored[..., 8:12, 20:26] = 1.0  # image right = the patient's left lung, upper zone: named by the report
    stored[..., 8:12, 6:12] = 1.0  # image left = the patient's right lung: the report does not name it
    stored[..., 20:24, 20:26] = 0.7  # a lesion the teacher is unsure of
    bank.update(torch.tensor([0]), stored)
    task.attach(bank, seed=0, reports=["Unilateral pulmonary infection, one infected area, upper left lung."])
    batch = {
        "image": torch.rand(2, 3, size, size),
        "mask": torch.zeros(2, 1, size, size),
        "text": ["x", "y"],
        "labeled": torch.tensor([True, False]),
        "index": torch.tensor([0, 0]),
    }
    prepared = task.prepare_batch(batch, 0)
    target, weight = prepared["pseudo_target"][0, 0], prepared["pseudo_weight"][0, 0]
    assert bool(target[8:12, 20:26].all())  # kept: where the report says
    assert not bool(target[8:12, 6:12].any())  # dropped: the other lung becomes background ...
    assert bool((weight[8:12, 6:12] == 1).all())  # ... and supervises as such
    assert not bool(weight[20:24, 20:26].any())  # the uncertain lesion is ignored, not taught either way
    assert 0.9 < prepared["pseudo_kept"] < 1.0


def test_report_filter_keeps_unreadable_reports_as_they_are() -> None:
    targets = torch.zeros(2, 1, 16, 16)
    targets[:, :, 2:5, 2:5] = 1.0
    report_filter = ReportFilter(["Many nuclei with dense chromatin.", "No pulmonary infection."])
    assert report_filter.readable == 0
    assert torch.equal(report_filter(torch.tensor([0, 1]), targets, targets), targets)


# ------------------------------------------------------------------------------------------------- DDP


def test_semi_supervised_ddp_on_two_cpu_processes_and_resume(semi_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    base = [
        str(LVSEG),
        "train",
        "--data",
        str(semi_data),
        "--out",
        str(out),
        "--model",
        "unet",
        "--img-size",
        "32",
        "--base-channels",
        "4",
        "--batch-size",
        "4",
        "--labeled-fraction",
        "0.34",
        "--warmup-epochs",
        "1",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--augment",
        "none",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run([*base, "--max-epochs", "2"], capture_output=True, text=True, timeout=300, env=env)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-3000:]
    assert "MEMBER: 2/2" in output
    checkpoint = read_checkpoint_dict(out / "last.ckpt")
    assert checkpoint["lvseg_semi"]["phase"] == SEMI and checkpoint["lvseg_semi"]["semi_start_epoch"] == 1
    bank = torch.load(out / PSEUDO_LABEL_FILE, weights_only=True)
    assert bool(bank["seen"].all()), "the ranks' EPI updates are gathered: rank 0's bank holds every image"
    steps = checkpoint["global_step"]
    resumed = subprocess.run(
        [*base, "--max-epochs", "3", "--resume"], capture_output=True, text=True, timeout=300, env=env
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    again = read_checkpoint_dict(out / "last.ckpt")
    assert again["epoch"] == checkpoint["epoch"] + 1 and again["global_step"] > steps
    assert "lvseg_teacher" in again
    assert json.loads((out / PHASES_FILE).read_text(encoding="utf-8"))["semi_start_epoch"] == 1


def test_the_sampler_deals_pairs_to_processes_and_covers_every_unlabeled_image() -> None:
    from lvseg.data.split import BalancedSemiSampler

    shards = [
        list(BalancedSemiSampler(n_labeled=3, n_unlabeled=7, seed=4, num_replicas=2, rank=rank)) for rank in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 8  # the same number of steps on every process
    for shard in shards:
        assert all(i < 3 for i in shard[0::2]) and all(i >= 3 for i in shard[1::2])  # pairs kept: half labeled
    unlabeled = [i for shard in shards for i in shard[1::2]]
    assert set(unlabeled) == set(range(3, 10)) and len(unlabeled) == 8  # all 7, one repeated as padding


def test_gathered_updates_keep_one_per_image() -> None:
    from lvseg.training.semi import _first_occurrences

    assert _first_occurrences([5, -1, 3, 5, -1, 7]) == [(0, 5), (1, -1), (2, 3), (5, 7)]
