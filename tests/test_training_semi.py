"""Semi-supervised training: the labeled/unlabeled split, EPI pseudo-labels, ramp-up, a tiny end-to-end run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lvseg.data.layout import Sample, load_split
from lvseg.data.split import BalancedSemiSampler, read_labeled_list, split_labeled
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.errors import LvsegError
from lvseg.models import create_model
from lvseg.models.losses import image_weight
from lvseg.training.fit import TrainConfig, train
from lvseg.training.pseudo_labels import PseudoLabelBank
from lvseg.training.semi import PSEUDO_LABEL_FILE, SPLIT_FILE, TEACHER_KEY, SemiSupervisedTask, rampup_weight
from lvseg.training.teacher import EmaTeacher


def _samples(n: int) -> list[Sample]:
    return [
        Sample(f"img{i:03d}", Path(f"/x/img{i:03d}.png"), Path(f"/x/mask_img{i:03d}.png"), f"text {i}")
        for i in range(n)
    ]


# ----------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_complete() -> None:
    samples = _samples(40)
    first = split_labeled(samples, 0.25, seed=7)
    again = split_labeled(list(reversed(samples)), 0.25, seed=7)  # input order does not matter
    assert [s.name for s in first.labeled] == [s.name for s in again.labeled]
    assert [s.name for s in first.unlabeled] == [s.name for s in again.unlabeled]
    labeled = {s.name for s in first.labeled}
    unlabeled = {s.name for s in first.unlabeled}
    assert len(labeled) == 10 and len(unlabeled) == 30
    assert labeled.isdisjoint(unlabeled) and labeled | unlabeled == {s.name for s in samples}
    assert all(s.mask_path is not None for s in first.labeled)
    assert all(s.mask_path is None for s in first.unlabeled)  # nothing downstream can open them
    assert all(s.text for s in first.unlabeled)  # reports kept
    other = split_labeled(samples, 0.25, seed=8)
    assert {s.name for s in other.labeled} != labeled


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(LvsegError):
        split_labeled(_samples(4), 0.0)
    with pytest.raises(LvsegError):
        split_labeled(_samples(4), 1.5)
    assert len(split_labeled(_samples(3), 0.01).labeled) == 1  # at least one labeled image


def test_labeled_list(tmp_path: Path) -> None:
    samples = _samples(6)
    listing = tmp_path / "labeled.txt"
    listing.write_text("# labeled images\nimg001.png\nmask_img004.png\n\nimg002\n", encoding="utf-8")
    split = read_labeled_list(listing, samples)
    assert [s.name for s in split.labeled] == ["img001", "img002", "img004"]
    assert [s.name for s in split.unlabeled] == ["img000", "img003", "img005"]
    listing.write_text("img001\nnope.png\n", encoding="utf-8")
    with pytest.raises(LvsegError, match="nope.png"):
        read_labeled_list(listing, samples)


# ------------------------------------------------------------------------------------------------- EPI


def test_epi_update_matches_the_formula() -> None:
    beta = 0.7
    bank = PseudoLabelBank(["a", "b", "c"], img_size=2, beta=beta)
    first = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]], [[[1.0, 0.0], [0.5, 0.5]]]])  # (2, 1, 2, 2)
    bank.update(torch.tensor([0, 2]), first)
    targets, seen = bank.targets(torch.tensor([0, 1, 2]))
    labels = bank.labels[torch.tensor([0, 1, 2])].float().unsqueeze(1)  # the soft EMA state P_t
    assert seen.tolist() == [True, False, True]
    assert torch.equal(targets, (labels >= 0.5).float())  # training targets: P_t thresholded at 0.5
    torch.testing.assert_close(labels[0], first[0], atol=1e-3, rtol=0)  # P_1 = first prediction
    torch.testing.assert_close(labels[2], first[1], atol=1e-3, rtol=0)
    assert labels[1].abs().sum() == 0

    second = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    bank.update(torch.tensor([0]), second)
    expected = beta * first[0] + (1 - beta) * second[0]  # P_t = beta P_(t-1) + (1 - beta) p_t
    labels = bank.labels[torch.tensor([0, 2])].float().unsqueeze(1)
    torch.testing.assert_close(labels[0], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(labels[1], first[1], atol=1e-3, rtol=0)  # untouched
    assert bank.labels.dtype == torch.float16


def test_bank_save_and_load(tmp_path: Path) -> None:
    bank = PseudoLabelBank(["a", "b"], img_size=4, beta=0.5)
    bank.update(torch.tensor([1]), torch.rand(1, 1, 4, 4))
    path = bank.save(tmp_path / PSEUDO_LABEL_FILE, global_step=12, epoch=3)
    other = PseudoLabelBank(["a", "b"], img_size=4, beta=0.5)
    state = other.load(path)
    assert state["global_step"] == 12
    assert torch.equal(other.labels, bank.labels) and torch.equal(other.seen, bank.seen)
    with pytest.raises(LvsegError):
        PseudoLabelBank(["a", "c"], img_size=4).load(path)


def test_rampup() -> None:
    assert rampup_weight(0, 5) == pytest.approx(math.exp(-5))
    assert rampup_weight(2.5, 5) == pytest.approx(math.exp(-1.25))
    assert rampup_weight(5, 5) == 1.0 and rampup_weight(9, 5) == 1.0 and rampup_weight(0, 0) == 1.0
    values = [rampup_weight(t / 2, 5) for t in range(12)]
    assert values == sorted(values)


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_semi_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """12 training images; the masks of the 9 not in the 25 % split (seed 0) are unreadable garbage."""
    root = tmp_path_factory.mktemp("semi") / "data"
    generate_synthetic_dataset(root, n=18, size=64, seed=1, splits=(0.67, 0.11, 0.22))
    samples = load_split(root, "train")
    assert len(samples) == 12
    split = split_labeled(samples, 0.25, seed=0)
    by_name = {s.name: s for s in samples}
    for sample in split.unlabeled:
        mask = by_name[sample.name].mask_path
        assert mask is not None
        mask.write_bytes(b"not a PNG: reading this mask would fail")
    return root, [s.name for s in split.unlabeled]


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    options: dict = dict(
        data=data,
        out=out,
        model="unet",
        img_size=32,
        base_channels=4,
        batch_size=4,
        max_epochs=1,
        accelerator="cpu",
        progress_bar=False,
        labeled_fraction=0.25,
        warmup_epochs=0.0,
        rampup_epochs=1.0,
        seed=0,
    )
    options.update(changes)
    return TrainConfig(**options)


def _logged_columns(out: Path) -> set[str]:
    with open(out / "logs" / "metrics.csv", newline="", encoding="utf-8") as handle:
        return set(next(csv.reader(handle)))


def test_semi_run_never_reads_unlabeled_masks_and_resumes_pseudo_labels(
    tiny_semi_data: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, unlabeled_names = tiny_semi_data
    with pytest.raises(LvsegError):  # the supervised path opens every mask and refuses the garbage
        load_split(data, "train")
    out = tmp_path / "run"
    # Every pixel supervises (pseudo_confidence 0.5): the stored labels set below are what epoch 2 must train on.
    result = train(_config(data, out, pseudo_confidence=0.5))
    assert result.last_checkpoint.is_file()
    columns = _logged_columns(out)
    # the model's own terms on labeled images, the LV term, the ramp weight (terms named by the model contract)
    assert {"train_dice", "train_bce", "train_lv", "train_unlabeled_weight", "train_loss_epoch", "val_dice"} <= columns
    saved = torch.load(out / PSEUDO_LABEL_FILE, weights_only=True)
    assert saved["names"] == unlabeled_names
    assert bool(saved["seen"].all())  # every unlabeled image got a pseudo-label in epoch 1
    assert (out / SPLIT_FILE).is_file()
    # A 4-wide net after one epoch may predict no lesion anywhere, and empty pseudo-labels are not used
    # (see test_empty_pseudo_labels_do_not_supervise); give the stored labels a lesion, so the resumed epoch
    # must train on what it reloads.
    saved["labels"][:, 8:16, 8:16] = 1.0
    torch.save(saved, out / PSEUDO_LABEL_FILE)

    loaded: list[torch.Tensor] = []
    original_load = PseudoLabelBank.load

    def spy(self: PseudoLabelBank, path: str | Path) -> dict:
        state = original_load(self, path)
        loaded.append(self.labels.clone())
        return state

    monkeypatch.setattr(PseudoLabelBank, "load", spy)
    teacher_loads: list[dict] = []
    original_teacher_load = EmaTeacher.load_state_dict

    def teacher_spy(self: EmaTeacher, state: dict) -> None:
        teacher_loads.append(state)
        original_teacher_load(self, state)

    monkeypatch.setattr(EmaTeacher, "load_state_dict", teacher_spy)
    saved_teacher = torch.load(out / "last.ckpt", weights_only=True)[TEACHER_KEY]
    train(_config(data, out, max_epochs=2, resume=True, pseudo_confidence=0.5))
    assert len(loaded) == 1 and torch.equal(loaded[0], saved["labels"])  # resumed with the stored labels
    assert len(teacher_loads) == 1  # and with the stored teacher
    assert all(torch.equal(teacher_loads[0][key], saved_teacher[key]) for key in saved_teacher)
    columns = _logged_columns(out)
    assert "train_pseudo" in columns  # epoch 2 trains on them
    resumed = torch.load(out / PSEUDO_LABEL_FILE, weights_only=True)
    assert resumed["global_step"] > saved["global_step"]
    checkpoint = torch.load(out / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["epi_beta"] == 0.8
    assert "head.weight" in checkpoint[TEACHER_KEY]  # the EMA teacher resumes too


def test_resume_restores_the_teacher(tiny_semi_data: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, _ = tiny_semi_data
    out = tmp_path / "run"
    train(_config(data, out))
    saved = torch.load(out / "last.ckpt", weights_only=True)[TEACHER_KEY]
    task = SemiSupervisedTask("unet", {"img_size": 32, "base_channels": 4})
    task.on_load_checkpoint({TEACHER_KEY: saved})
    teacher = task.build_teacher()
    restored = teacher.state_dict()
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[key], saved[key]) for key in saved)
    fresh = SemiSupervisedTask("unet", {"img_size": 32, "base_channels": 4}).build_teacher().state_dict()
    assert any(not torch.equal(fresh[key], saved[key]) for key in saved if saved[key].is_floating_point())


def test_semi_with_templates_and_supervised_only(
    tiny_semi_data: tuple[Path, list[str]], tmp_path: Path, lv_templates_root: Path
) -> None:
    data, _ = tiny_semi_data
    train(_config(data, tmp_path / "templates", lv_templates=lv_templates_root))
    assert (tmp_path / "templates" / PSEUDO_LABEL_FILE).is_file()
    baseline = tmp_path / "baseline"
    train(_config(data, baseline, supervised_only=True))
    assert not (baseline / PSEUDO_LABEL_FILE).exists()
    assert "epi_beta" not in torch.load(baseline / "last.ckpt", weights_only=True)["hyper_parameters"]


def test_attach_is_required() -> None:
    task = SemiSupervisedTask("unet", {"img_size": 32, "base_channels": 4})
    with pytest.raises(ValueError):
        task.attach(PseudoLabelBank(["a"], 32), lv_masks=torch.zeros(1, 1, 32, 32, dtype=torch.uint8), lv_match=None)


def test_cli_has_the_semi_flags() -> None:
    from lvseg.cli.main import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--labeled-fraction", "--labeled-list", "--lv-templates", "--epi-beta", "--supervised-only"):
        assert flag in result.output


def test_balanced_sampler_visits_every_unlabeled_image_once_and_half_of_each_batch_is_labeled() -> None:
    sampler = BalancedSemiSampler(n_labeled=3, n_unlabeled=10, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) == 20
    unlabeled = [i for i in order if i >= 3]
    assert sorted(unlabeled) == list(range(3, 13))  # each unlabeled image exactly once
    assert all(i < 3 for i in order[0::2]) and all(i >= 3 for i in order[1::2])  # alternating: half labeled
    sampler.set_epoch(0)
    assert list(sampler) == order  # deterministic per epoch
    assert list(sampler) != order  # the next epoch is reshuffled


def test_no_pseudo_labels_during_the_supervised_warm_up(tiny_semi_data: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, _ = tiny_semi_data
    out = tmp_path / "warm"
    train(_config(data, out, warmup_epochs=5.0))
    saved = torch.load(out / PSEUDO_LABEL_FILE, weights_only=True)
    assert not bool(saved["seen"].any())  # the model's first, poor predictions seed no pseudo-label


def test_empty_pseudo_labels_do_not_supervise() -> None:
    """An unlabeled image whose pseudo-label holds no lesion gets weight 0 in the pseudo-label loss."""
    task = SemiSupervisedTask(
        model_name="unet",
        model_config={"img_size": 32, "base_channels": 4},
        warmup_epochs=0.0,
        rampup_epochs=0.0,
        lv_weight=0.0,
        pseudo_confidence=0.5,
    )
    bank = PseudoLabelBank(["empty", "lesion"], img_size=32, beta=0.5)
    lesion = torch.zeros(1, 1, 32, 32)
    lesion[..., 8:16, 8:16] = 1.0
    bank.update(torch.tensor([0, 1]), torch.cat([torch.zeros(1, 1, 32, 32), lesion]))
    task.attach(bank)
    weights: list[torch.Tensor | None] = []
    compute_losses = task.model.compute_losses

    def spy(output, target, weight=None):
        weights.append(None if weight is None else weight.detach().clone())
        return compute_losses(output, target, weight)

    task.model.compute_losses = spy
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "mask": torch.zeros(2, 1, 32, 32),
        "text": ["a", "b"],
        "labeled": torch.tensor([False, False]),
        "index": torch.tensor([0, 1]),
    }
    task.training_step(batch, 0)
    assert len(weights) == 1 and weights[0] is not None
    assert image_weight(weights[0]).tolist() == [0.0, 1.0]  # per-pixel weights; the empty image keeps none


# ------------------------------------------------------------------------------- teacher and strong view


def test_strong_view_moves_image_pseudo_label_and_reference_together_and_keeps_sides() -> None:
    from lvseg.training.perturb import StrongPerturbation

    size = 48
    targets = torch.zeros(4, 1, size, size)
    targets[..., 18:30, 6:16] = 1.0  # a lesion in the left half of each image
    images = targets.repeat(1, 3, 1, 1) * 0.8 + 0.1
    strong, warped, references = StrongPerturbation(size, seed=3)(images, targets, targets.clone())
    assert references is not None
    assert strong.shape == images.shape and warped.shape == references.shape == targets.shape
    assert torch.equal(warped, references)  # one geometry for pseudo-label and reference
    assert set(warped.unique().tolist()) <= {0.0, 1.0}  # masks stay binary
    assert not torch.equal(warped, targets)  # the geometry did move them
    assert float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0
    # the image moved with its mask: bright pixels sit on the warped lesion
    inside = strong[:, 0:1][warped > 0].mean()
    outside = strong[:, 0:1][warped == 0].mean()
    assert inside > outside + 0.4
    columns = torch.arange(size, dtype=torch.float32)
    centre_x = (warped.sum(2).squeeze(1) * columns).sum(1) / warped.sum((1, 2, 3))
    assert bool((centre_x < size / 2).all())  # no flip: a left lesion stays on the left
    again = StrongPerturbation(size, seed=3)(images, targets, targets.clone())
    assert torch.equal(again[0], strong) and torch.equal(again[1], warped)  # seeded


def test_ema_teacher_follows_the_formula() -> None:
    student = create_model("unet", img_size=32, base_channels=4)
    teacher = EmaTeacher(student, decay=0.9)
    start = student.head.weight.detach().clone()
    assert torch.equal(teacher.model.head.weight, start)
    teacher.update()  # the teacher starts as a copy of the student
    with torch.no_grad():
        student.head.weight.add_(1.0)
    teacher.update()
    assert torch.allclose(teacher.model.head.weight, 0.9 * start + 0.1 * (start + 1.0), atol=1e-6)
    assert not teacher.model.head.weight.requires_grad and not teacher.model.training
    with pytest.raises(LvsegError):
        EmaTeacher(student, decay=1.0)


def test_pseudo_labels_come_from_the_teacher_on_the_unperturbed_image() -> None:
    task = SemiSupervisedTask(
        model_name="unet",
        model_config={"img_size": 32, "base_channels": 4},
        warmup_epochs=0.0,
        rampup_epochs=0.0,
        lv_weight=0.0,
    )
    bank = PseudoLabelBank(["a", "b"], img_size=32, beta=0.5)
    task.attach(bank, seed=0)
    task.build_teacher()
    images = torch.rand(2, 3, 32, 32)
    expected = task.teacher.predict_proba(images, ["a", "b"])
    with torch.no_grad():  # the student drifts away from its teacher
        for parameter in task.model.parameters():
            parameter.add_(torch.randn_like(parameter))
    task.eval()
    student = torch.sigmoid(task(images, ["a", "b"]))
    task.train()
    batch = {
        "image": images,
        "mask": torch.zeros(2, 1, 32, 32),
        "text": ["a", "b"],
        "labeled": torch.tensor([False, False]),
        "index": torch.tensor([0, 1]),
    }
    task.training_step(batch, 0)
    stored = bank.labels.float().unsqueeze(1)
    assert torch.allclose(stored, expected, atol=1e-3)  # P_1 = the teacher's prediction
    assert not torch.allclose(stored, student, atol=1e-2)
