"""Semi-supervised LViT: a labeled/unlabeled split, EPI pseudo-labels and the LV loss.

``lvseg train --labeled-fraction 0.25`` (or ``--labeled-list FILE``) keeps the masks of a seeded quarter of
the training images; the other images keep their image and report but their masks are never opened
(their samples carry ``mask_path=None`` and :func:`lvseg.data.layout.load_split` is called with
``require_masks=False``, which matches masks by name without reading them).

Each training batch mixes labeled and unlabeled samples (``batch["labeled"]`` (B,) bool,
``batch["index"]`` (B,) the position in the labeled or unlabeled set). The loss of a batch is

    loss = L_sup + w(t) * (L_pseudo + lv_weight * L_LV)

* ``L_sup``: Dice + class-balanced BCE (:class:`~lvseg.training.losses.DiceBCELoss`) on labeled images;
* ``L_pseudo``: the same loss between the prediction for an unlabeled image's strong view and its
  pseudo-label (moved with the view);
* ``L_LV``: :func:`lvseg.training.lv_loss.lv_loss` against the mask of the most similar reference report;
* ``w(t) = unlabeled_weight * exp(-5 (1 - t / rampup_epochs)^2)`` for ``t < rampup_epochs`` (t in
  fractional epochs), then ``unlabeled_weight`` (the sigmoid ramp-up of Laine & Aila).

Exponential Pseudo-label Iteration (EPI, :class:`PseudoLabelBank`): every time an unlabeled image is
trained on (once per epoch, after the supervised warm-up), its pseudo-label becomes
``P_t = beta * P_(t-1) + (1 - beta) * p_t`` (the first prediction initialises it). ``p_t`` comes from a
*teacher* (:class:`EmaTeacher`): an exponential moving average of the student's weights
(``teacher_decay`` per step), run in eval mode on the un-augmented image. The training target is the
updated ``P_t``, binarised at 0.5; an image whose pseudo-label holds no lesion is not supervised.

The student sees a *strong view* of the unlabeled image (:class:`~lvseg.training.perturb.StrongPerturbation`:
a random affine applied alike to the image, its pseudo-label and its LV reference, plus contrast,
noise and blur on the image). Why both: predictions of the student on the image it is trained on, in
training mode, made the pseudo-labels follow every oscillation of the student, and a target predicted
from the very input it supervises teaches nothing new; the averaged teacher is stabler than the
student, and the perturbation makes the unlabeled loss a consistency constraint (Mean Teacher,
Tarvainen & Valpola 2017; FixMatch's weak/strong views, Sohn et al. 2020). Labeled images keep the usual
augmentation.

Pseudo-labels are stored at model resolution as float16 in ``<run>/pseudo_labels.pt`` (atomic write,
each time a checkpoint is saved, tagged with the global step) so ``--resume`` continues with them (the
teacher's weights travel in the checkpoint, under ``lvseg_teacher``); the split is written to
``<run>/semi_split.json`` and must be the same when resuming. Semi-supervised training runs in one
process (the bank is not shared across DDP ranks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from lvseg.data.layout import Sample
from lvseg.errors import LvsegError
from lvseg.files import atomic_write, atomic_write_text
from lvseg.training.lv_loss import LVReferenceSet, load_template_references, lv_loss, references_from_samples
from lvseg.training.module import SegmentationTask
from lvseg.training.perturb import StrongPerturbation

log = logging.getLogger(__name__)

PSEUDO_LABEL_FILE = "pseudo_labels.pt"
SPLIT_FILE = "semi_split.json"
#: hparams of :class:`SemiSupervisedTask` beyond those of :class:`SegmentationTask`.
SEMI_HPARAMS: tuple[str, ...] = (
    "epi_beta", "unlabeled_weight", "warmup_epochs", "rampup_epochs", "lv_weight", "teacher_decay", "strong_view",
)
TEACHER_KEY = "lvseg_teacher"


# --------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class LabeledSplit:
    """Training samples divided into those whose masks are used and those trained without masks.

    ``unlabeled`` samples have ``mask_path=None``: nothing downstream can open their masks.
    """

    labeled: list[Sample]
    unlabeled: list[Sample]

    def to_json(self) -> dict[str, list[str]]:
        return {"labeled": [s.name for s in self.labeled], "unlabeled": [s.name for s in self.unlabeled]}


def _drop_masks(samples: Sequence[Sample]) -> list[Sample]:
    return [dataclasses.replace(sample, mask_path=None) for sample in samples]


def split_labeled(samples: Sequence[Sample], fraction: float, seed: int = 0) -> LabeledSplit:
    """A seeded split: ``round(fraction * N)`` (at least 1) labeled samples, the rest unlabeled.

    The labeled samples are drawn (``random.Random(seed)``) among the samples that have a mask file,
    from the samples sorted by name, so the split depends only on the names, the fraction and the seed.
    Both lists keep name order.
    """
    if not 0.0 < fraction <= 1.0:
        raise LvsegError(f"--labeled-fraction {fraction} is not in (0, 1]")
    ordered = sorted(samples, key=lambda sample: sample.name)
    candidates = [sample.name for sample in ordered if sample.mask_path is not None]
    n_labeled = max(1, round(fraction * len(ordered)))
    if n_labeled > len(candidates):
        raise LvsegError(
            f"--labeled-fraction {fraction} asks for {n_labeled} labeled images but only {len(candidates)} "
            "training images have a mask"
        )
    chosen = set(random.Random(seed).sample(candidates, n_labeled))
    return LabeledSplit(
        labeled=[s for s in ordered if s.name in chosen],
        unlabeled=_drop_masks([s for s in ordered if s.name not in chosen]),
    )


def read_labeled_list(path: str | Path, samples: Sequence[Sample]) -> LabeledSplit:
    """Split by a text file naming the labeled images, one per line (image stem or file name; ``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise LvsegError(f"--labeled-list '{path}' does not exist")
    by_name = {sample.name: sample for sample in samples}
    wanted: set[str] = set()
    unknown: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        name = entry if entry in by_name else Path(entry).stem
        if name.startswith("mask_") and name not in by_name:
            name = name[len("mask_"):]
        (wanted.add(name) if name in by_name else unknown.append(entry))
    if unknown:
        raise LvsegError(f"--labeled-list '{path}' names {len(unknown)} image(s) not in the training split: {unknown[:5]}")
    if not wanted:
        raise LvsegError(f"--labeled-list '{path}' names no image")
    missing = sorted(name for name in wanted if by_name[name].mask_path is None)
    if missing:
        raise LvsegError(f"--labeled-list '{path}' names image(s) without a mask: {missing[:5]}")
    ordered = sorted(samples, key=lambda sample: sample.name)
    return LabeledSplit(
        labeled=[s for s in ordered if s.name in wanted],
        unlabeled=_drop_masks([s for s in ordered if s.name not in wanted]),
    )


def check_labeled_masks(samples: Sequence[Sample]) -> None:
    """Validate the masks of the labeled samples only (readable, same size as the image)."""
    from lvseg.data.layout import _check_readable
    from lvseg.errors import DataValidationError

    problems = []
    for sample in samples:
        assert sample.mask_path is not None
        problem, mask_size = _check_readable(sample.mask_path, "mask")
        if problem:
            problems.append(problem)
            continue
        _, image_size = _check_readable(sample.image_path, "image")
        if image_size is not None and mask_size != image_size:
            problems.append(f"mask '{sample.mask_path}' is {mask_size} but its image '{sample.image_path}' is {image_size}")
    if problems:
        raise DataValidationError(problems, where="labeled training masks")


# ----------------------------------------------------------------------------------------------- EPI


class PseudoLabelBank:
    """EPI pseudo-labels of the unlabeled images, at model resolution, on the CPU.

    labels: float16 (N, S, S) in [0, 1]; seen: bool (N,), whether an image has a pseudo-label yet.
    """

    def __init__(self, names: Sequence[str], img_size: int, beta: float = 0.8) -> None:
        if not 0.0 <= beta < 1.0:
            raise LvsegError(f"--epi-beta {beta} is not in [0, 1)")
        self.names = list(names)
        self.img_size = int(img_size)
        self.beta = float(beta)
        self.labels = torch.zeros((len(self.names), self.img_size, self.img_size), dtype=torch.float16)
        self.seen = torch.zeros(len(self.names), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.names)

    def targets(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (K,) -> (binary pseudo-label masks float32 (K, 1, S, S), seen bool (K,)), on the CPU.

        The EMA P_t stays soft in the bank; the training target is the mask P_t >= 0.5. Soft targets near
        0.5 would pull the Dice term toward blurred predictions, which the 0.5 threshold then cuts.
        """
        indices = indices.detach().cpu().long()
        return (self.labels[indices] >= 0.5).float().unsqueeze(1), self.seen[indices].clone()

    @torch.no_grad()
    def update(self, indices: torch.Tensor, probabilities: torch.Tensor) -> None:
        """EPI step for images ``indices`` (K,) with predictions ``probabilities`` (K, 1, S, S) in [0, 1].

        P_t = beta * P_(t-1) + (1 - beta) * p_t; an image seen for the first time gets P_1 = p_t.
        """
        indices = indices.detach().cpu().long()
        new = probabilities.detach().float().cpu().reshape(len(indices), self.img_size, self.img_size)
        old = self.labels[indices].float()
        seen = self.seen[indices].view(-1, 1, 1)
        updated = torch.where(seen, self.beta * old + (1.0 - self.beta) * new, new)
        self.labels[indices] = updated.clamp(0.0, 1.0).to(torch.float16)
        self.seen[indices] = True

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "img_size": self.img_size, "beta": self.beta,
                "labels": self.labels, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("names", [])) != self.names or int(state.get("img_size", -1)) != self.img_size:
            raise LvsegError(
                "the stored pseudo-labels belong to other unlabeled images or another --img-size; "
                "resume with the same data, split and --img-size"
            )
        self.labels = state["labels"].to(torch.float16).clone()
        self.seen = state["seen"].to(torch.bool).clone()

    def save(self, path: str | Path, global_step: int, epoch: int) -> Path:
        """Write the bank atomically (torch.save of tensors, lists and numbers: weights_only-safe)."""
        state = self.state_dict() | {"global_step": int(global_step), "epoch": int(epoch)}
        return atomic_write(path, lambda handle: torch.save(state, handle))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Load a bank written by :meth:`save`; returns the file's dict (``global_step``, ``epoch``...)."""
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as error:  # damaged file: many exception types
            raise LvsegError(f"cannot read pseudo-labels '{path}': {type(error).__name__}: {error}") from None
        self.load_state_dict(state)
        return state


def rampup_weight(progress: float, rampup_epochs: float) -> float:
    """exp(-5 (1 - progress / rampup_epochs)^2) while progress < rampup_epochs, then 1 (progress in epochs)."""
    if rampup_epochs <= 0 or progress >= rampup_epochs:
        return 1.0
    phase = 1.0 - max(progress, 0.0) / rampup_epochs
    return float(math.exp(-5.0 * phase * phase))


class EmaTeacher:
    """Mean teacher: an exponential moving average of the student's trainable modules, used without gradients.

    ``modules`` maps names to the student's modules (e.g. ``{"net": ..., "text": ...}``); the teacher holds
    a copy (``torch.optim.swa_utils.AveragedModel`` with an EMA of parameters and buffers), kept in eval
    mode. :meth:`update` after each optimizer step: W_teacher = decay * W_teacher + (1 - decay) * W_student.
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise LvsegError(f"--teacher-decay {decay} is not in [0, 1)")
        self.student = nn.ModuleDict(modules)
        self.averaged = AveragedModel(self.student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.eval()
        self.averaged.requires_grad_(False)

    def __getitem__(self, name: str) -> nn.Module:
        return self.averaged.module[name]

    def __contains__(self, name: str) -> bool:
        return name in self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        self.averaged.update_parameters(self.student)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: value.detach().cpu() for key, value in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------- task


class BalancedSemiSampler(Sampler[int]):
    """Indices into ``ConcatDataset([labeled, unlabeled])`` alternating labeled and unlabeled images.

    Every epoch visits each unlabeled image exactly once (the EPI update needs one prediction per image
    per epoch) in a fresh seeded order, and pairs it with a labeled image, cycling through reshuffled
    labeled images as often as needed. A batch is thus half labeled, however few the labels: the
    supervised signal is not diluted by the unlabeled majority. Epoch length: 2 x n_unlabeled.
    """

    def __init__(self, n_labeled: int, n_unlabeled: int, seed: int = 0) -> None:
        if n_labeled < 1 or n_unlabeled < 1:
            raise ValueError(f"need labeled and unlabeled images, got {n_labeled} and {n_unlabeled}")
        self.n_labeled, self.n_unlabeled, self.seed = n_labeled, n_unlabeled, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 2 * self.n_unlabeled

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        unlabeled = (torch.randperm(self.n_unlabeled, generator=generator) + self.n_labeled).tolist()
        cycles = -(-self.n_unlabeled // self.n_labeled)
        labeled = torch.cat([torch.randperm(self.n_labeled, generator=generator) for _ in range(cycles)]).tolist()
        for labeled_index, unlabeled_index in zip(labeled, unlabeled):
            yield labeled_index
            yield unlabeled_index


class SemiSupervisedTask(SegmentationTask):
    """:class:`SegmentationTask` trained on mixed labeled/unlabeled batches with EPI and the LV loss.

    Extra hparams: ``epi_beta``, ``unlabeled_weight``, ``warmup_epochs``, ``rampup_epochs``, ``lv_weight``,
    ``teacher_decay`` and ``strong_view`` (perturb the unlabeled images the student sees). Before fitting,
    :meth:`attach` gives it the pseudo-label bank and the LV references (run-time state, not hparams).
    Logs ``train_sup_loss``, ``train_pseudo_loss``, ``train_lv_loss``, ``train_unlabeled_weight`` and the
    total ``train_loss``.
    """

    def __init__(
        self,
        *args: Any,
        epi_beta: float = 0.8,
        unlabeled_weight: float = 1.0,
        warmup_epochs: float = 3.0,
        rampup_epochs: float = 5.0,
        lv_weight: float = 0.1,
        teacher_decay: float = 0.99,
        strong_view: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, epi_beta=epi_beta, unlabeled_weight=unlabeled_weight, warmup_epochs=warmup_epochs,
                         rampup_epochs=rampup_epochs, lv_weight=lv_weight, teacher_decay=teacher_decay,
                         strong_view=strong_view, **kwargs)
        self.bank: PseudoLabelBank | None = None
        self.lv_masks: torch.Tensor | None = None  # uint8 (R, 1, S, S)
        self.lv_match: torch.Tensor | None = None  # int64 (N_unlabeled,) reference index per unlabeled image
        self.pseudo_label_path: Path | None = None
        self._saved_step: int | None = None
        self.teacher: EmaTeacher | None = None
        self._teacher_state: dict[str, torch.Tensor] | None = None  # from a checkpoint, until the teacher exists
        self.perturbation: StrongPerturbation | None = None

    def attach(
        self,
        bank: PseudoLabelBank,
        lv_masks: torch.Tensor | None = None,
        lv_match: torch.Tensor | None = None,
        pseudo_label_path: Path | None = None,
        seed: int | None = None,
    ) -> None:
        """Set the run-time state: bank (N unlabeled), reference masks (R, 1, S, S), match (N,) into them;
        ``seed`` seeds the strong-view perturbation."""
        if (lv_masks is None) != (lv_match is None):
            raise ValueError("lv_masks and lv_match go together")
        if lv_match is not None and len(lv_match) != len(bank):
            raise ValueError(f"lv_match has {len(lv_match)} entries for {len(bank)} unlabeled images")
        self.bank, self.lv_masks, self.lv_match = bank, lv_masks, lv_match
        self.pseudo_label_path = pseudo_label_path
        self.perturbation = StrongPerturbation(bank.img_size, seed=seed) if self.hparams.get("strong_view", True) else None

    def on_fit_start(self) -> None:
        if self.bank is None:
            raise LvsegError("SemiSupervisedTask.attach() must be called before fitting")
        if self.trainer.world_size > 1:
            raise LvsegError("semi-supervised training runs on one device; use --devices 1")
        self.build_teacher()

    def build_teacher(self) -> EmaTeacher:
        """Create the EMA teacher from the current weights (or the checkpoint's teacher when resuming)."""
        modules: dict[str, nn.Module] = {"net": self.net}
        if self.text_encoder is not None and any(p.requires_grad for p in self.text_encoder.parameters()):
            modules["text"] = self.text_encoder  # a frozen encoder is shared, not copied
        self.teacher = EmaTeacher(modules, decay=self.hparams.get("teacher_decay", 0.99))
        if self._teacher_state is not None:
            self.teacher.load_state_dict(self._teacher_state)
            self._teacher_state = None
        return self.teacher

    @torch.no_grad()
    def teacher_probabilities(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """images (K, C, S, S), K reports -> the teacher's probabilities (K, 1, S, S), float32."""
        teacher = self.teacher or self.build_teacher()
        tokens = None
        if self.text_encoder is not None:
            text_encoder = teacher["text"] if "text" in teacher else self.text_encoder
            tokens = text_encoder(list(texts)).tokens.to(images.device)
        return torch.sigmoid(teacher["net"](images, tokens).float())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is not None:
            self.teacher.update()

    def unlabeled_weight_now(self, batch_idx: int) -> float:
        """The weight w(t) of the unlabeled losses at this step: 0 during the supervised warm-up (the
        model's early predictions would seed the pseudo-labels with noise that the EMA then keeps),
        then ramped up over ``rampup_epochs``."""
        batches = self.trainer.num_training_batches if self._trainer is not None else 0
        fraction = batch_idx / batches if batches and math.isfinite(batches) else 0.0
        progress = self.current_epoch + fraction - self.hparams.get("warmup_epochs", 0.0)
        if progress < 0:
            return 0.0
        return self.hparams.unlabeled_weight * rampup_weight(progress, self.hparams.rampup_epochs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, texts = batch["image"], list(batch["text"])  # (B, C, S, S), B reports
        labeled = batch["labeled"].to(images.device).bool()
        unlabeled = ~labeled
        weight = self.unlabeled_weight_now(batch_idx)
        train_unlabeled = bool(unlabeled.any()) and weight > 0
        if train_unlabeled:
            assert self.bank is not None
            indices = batch["index"].to(images.device)[unlabeled].cpu()
            unlabeled_texts = [text for text, is_labeled in zip(texts, labeled.tolist()) if not is_labeled]
            self.bank.update(indices, self.teacher_probabilities(images[unlabeled], unlabeled_texts))  # EPI
            targets, seen = self.bank.targets(indices)
            targets = targets.to(images.device)
            references = None
            if self.lv_masks is not None and self.lv_match is not None and self.hparams.lv_weight > 0:
                references = self.lv_masks[self.lv_match[indices]].to(images.device).float()
            if self.perturbation is not None:
                strong, targets, references = self.perturbation(images[unlabeled], targets, references)
                images = images.clone()
                images[unlabeled] = strong
        logits = self(images, texts)  # (B, 1, S, S)
        zero = logits.sum() * 0.0
        sup_loss = pseudo_loss = lv_value = zero
        if labeled.any():
            sup_loss = self.loss(logits[labeled], batch["mask"][labeled])
            self.log("train_sup_loss", sup_loss, on_step=False, on_epoch=True, batch_size=int(labeled.sum()))
        if train_unlabeled:
            unlabeled_logits = logits[unlabeled]
            # An empty pseudo-label teaches "predict nothing" and collapses training (a report describes a
            # lesion): supervise only with pseudo-labels that hold some lesion.
            usable = seen.to(images.device) & (targets.flatten(1).amax(1) > 0)
            if usable.any():
                pseudo_loss = self.loss(unlabeled_logits, targets, usable.float())
                self.log("train_pseudo_loss", pseudo_loss, on_step=False, on_epoch=True, batch_size=int(usable.sum()))
            if references is not None:
                lv_value = lv_loss(torch.sigmoid(unlabeled_logits.float()), references).mean()
                self.log("train_lv_loss", lv_value, on_step=False, on_epoch=True, batch_size=len(indices))
        loss = sup_loss + weight * (pseudo_loss + self.hparams.lv_weight * lv_value)
        self.log("train_unlabeled_weight", weight, on_step=False, on_epoch=True, batch_size=len(texts))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(texts))
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.bank is None or self.pseudo_label_path is None or self._trainer is None:
            return
        step = int(self.trainer.global_step)
        if step != self._saved_step and self.trainer.is_global_zero:
            self.bank.save(self.pseudo_label_path, global_step=step, epoch=int(self.current_epoch))
            self._saved_step = step
        checkpoint.setdefault("lvseg", {})["pseudo_labels"] = {"file": PSEUDO_LABEL_FILE, "global_step": step}
        if self.teacher is not None:
            checkpoint[TEACHER_KEY] = self.teacher.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._teacher_state = checkpoint.get(TEACHER_KEY)
        if self._teacher_state is not None and self.teacher is not None:
            self.teacher.load_state_dict(self._teacher_state)
            self._teacher_state = None


# ------------------------------------------------------------------------------------------ fit glue


def is_semi_supervised(config: Any) -> bool:
    """Whether a :class:`~lvseg.training.fit.TrainConfig` trains on part of the masks."""
    fraction = getattr(config, "labeled_fraction", None)
    return getattr(config, "labeled_list", None) is not None or (fraction is not None and fraction < 1.0)


def semi_task_options(config: Any) -> dict[str, Any]:
    """The :class:`SemiSupervisedTask` hparams from a TrainConfig (empty when it is not semi / supervised-only)."""
    if not is_semi_supervised(config) or getattr(config, "supervised_only", False):
        return {}
    return {name: getattr(config, name) for name in SEMI_HPARAMS}


def task_class_for(config: Any) -> type[SegmentationTask]:
    """SemiSupervisedTask when the config trains with unlabeled images, else SegmentationTask."""
    return SemiSupervisedTask if semi_task_options(config) else SegmentationTask


def make_split(config: Any, train_samples: Sequence[Sample]) -> LabeledSplit:
    """The labeled/unlabeled split a TrainConfig asks for (list file first, else fraction and seed)."""
    if config.labeled_list is not None:
        return read_labeled_list(config.labeled_list, train_samples)
    return split_labeled(train_samples, config.labeled_fraction, seed=config.seed)


def _check_saved_split(path: Path, split: LabeledSplit) -> None:
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("labeled") != split.to_json()["labeled"]:
        raise LvsegError(
            f"--resume: this run's labeled images ('{path}') differ from the split of these options; "
            "resume with the same --labeled-fraction/--labeled-list and --seed"
        )


def build_semi_train_loader(
    config: Any,
    task: SegmentationTask,
    train_samples: Sequence[Sample],
    out: Path,
    loader_options: dict[str, Any],
) -> DataLoader:
    """Split the training samples, attach EPI/LV state to a :class:`SemiSupervisedTask`, build the loader.

    ``train_samples`` must come from ``load_split(..., require_masks=False)``. With
    ``config.supervised_only`` the unlabeled images are dropped (the supervised baseline on the same
    labeled subset). Writes ``semi_split.json`` (checked on ``--resume``) and, on resume, reloads
    ``pseudo_labels.pt``.
    """
    from lvseg.data.dataset import SegmentationDataset

    split = make_split(config, train_samples)
    check_labeled_masks(split.labeled)
    split_path = out / SPLIT_FILE
    if config.resume and split_path.is_file():
        _check_saved_split(split_path, split)
    else:
        record = split.to_json() | {"labeled_fraction": config.labeled_fraction, "seed": config.seed,
                                    "labeled_list": None if config.labeled_list is None else str(config.labeled_list)}
        atomic_write_text(split_path, json.dumps(record, indent=1))
    log.info("semi-supervised split: %d labeled, %d unlabeled training images%s", len(split.labeled),
             len(split.unlabeled), " (unlabeled dropped: supervised only)" if config.supervised_only else "")

    labeled_set = SegmentationDataset(split.labeled, config.img_size, augment=config.augment,
                                      channels=config.in_channels, seed=config.seed)
    shuffle_options = {"shuffle": True, **loader_options}
    if config.supervised_only or not split.unlabeled:
        if isinstance(task, SemiSupervisedTask):  # a --labeled-list naming every image: nothing unlabeled
            task.attach(PseudoLabelBank([], config.img_size, beta=config.epi_beta))
        return DataLoader(labeled_set, drop_last=len(labeled_set) > config.batch_size, **shuffle_options)
    if not isinstance(task, SemiSupervisedTask):
        raise LvsegError("a semi-supervised run needs a SemiSupervisedTask")

    unlabeled_set = SegmentationDataset(split.unlabeled, config.img_size, augment=False, channels=config.in_channels)
    bank = PseudoLabelBank([s.name for s in split.unlabeled], config.img_size, beta=config.epi_beta)
    pseudo_path = out / PSEUDO_LABEL_FILE
    if config.resume:
        if pseudo_path.is_file():
            state = bank.load(pseudo_path)
            log.info("resumed %d pseudo-labels (%d set) from %s, step %s", len(bank), int(bank.seen.sum()),
                     pseudo_path, state.get("global_step"))
        else:
            log.warning("--resume: no %s in %s; pseudo-labels start afresh", PSEUDO_LABEL_FILE, out)

    lv_masks = lv_match = None
    if config.lv_weight > 0:
        references: LVReferenceSet = (
            load_template_references(config.lv_templates, config.img_size)
            if config.lv_templates is not None
            else references_from_samples(split.labeled, config.img_size)
        )
        lv_masks = references.masks
        lv_match = torch.from_numpy(references.match([s.text for s in split.unlabeled]))
    task.attach(bank, lv_masks, lv_match, pseudo_label_path=pseudo_path, seed=config.seed)

    mixed = ConcatDataset([labeled_set, unlabeled_set])
    sampler = BalancedSemiSampler(len(labeled_set), len(unlabeled_set), seed=config.seed)
    # No drop_last: every unlabeled image must get its one EPI update per epoch.
    return DataLoader(mixed, sampler=sampler, drop_last=False, **loader_options)
