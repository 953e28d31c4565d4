"""Semi-supervised training of any model: a labeled/unlabeled split, EPI pseudo-labels and the LV loss.

``lvseg train --labeled-fraction 0.25`` (or ``--labeled-list FILE``) keeps the masks of a seeded quarter of
the training images; the other images keep their image and report but their masks are never opened
(their samples carry ``mask_path=None`` and :func:`lvseg.data.layout.load_split` is called with
``require_masks=False``, which matches masks by name without reading them).

Each training batch mixes labeled and unlabeled samples (``batch["labeled"]`` (B,) bool,
``batch["index"]`` (B,) the position in the labeled or unlabeled set). The loss of a batch is

    loss = L_model + w(t) * (L_pseudo + lv_weight * L_LV)

* ``L_model``: the model's own loss terms (:meth:`~lvseg.models.SegmentationModel.compute_losses`, e.g.
  ``dice`` and ``bce``) on the labeled images, logged under their names;
* ``L_pseudo`` (term ``pseudo``): the sum of the model's terms between the prediction for an unlabeled
  image's strong view and its pseudo-label (moved with the view);
* ``L_LV`` (term ``lv``): :func:`lvseg.training.lv_loss.lv_loss` against the mask of the most similar
  reference report;
* ``w(t) = unlabeled_weight * exp(-5 (1 - t / rampup_epochs)^2)`` for ``t < rampup_epochs`` (t in
  fractional epochs), then ``unlabeled_weight`` (the sigmoid ramp-up of Laine & Aila).

The task only overrides the two hooks of :class:`~lvseg.training.module.SegmentationTask`
(``prepare_batch``: EPI update and strong view; ``loss_terms``: the terms above).

Exponential Pseudo-label Iteration (EPI, :class:`~lvseg.training.pseudo_labels.PseudoLabelBank`): every time an unlabeled image is
trained on (once per epoch, after the supervised warm-up), its pseudo-label becomes
``P_t = beta * P_(t-1) + (1 - beta) * p_t`` (the first prediction initialises it). ``p_t`` comes from a
*teacher* (:class:`~lvseg.training.teacher.EmaTeacher`): an exponential moving average of the student's weights
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

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader

from lvseg.data.layout import Sample
from lvseg.data.split import BalancedSemiSampler, LabeledSplit, check_labeled_masks, read_labeled_list, split_labeled
from lvseg.errors import LvsegError
from lvseg.files import atomic_write_text
from lvseg.models import ModelOutput
from lvseg.training.lv_loss import LVReferenceSet, load_template_references, lv_loss, references_from_samples
from lvseg.training.module import TASKS, SegmentationTask, register_task
from lvseg.training.options import SEMI_OPTIONS, is_semi_supervised, option_defaults
from lvseg.training.perturb import StrongPerturbation
from lvseg.training.pseudo_labels import PseudoLabelBank
from lvseg.training.teacher import EmaTeacher

log = logging.getLogger(__name__)

PSEUDO_LABEL_FILE = "pseudo_labels.pt"
SPLIT_FILE = "semi_split.json"
TEACHER_KEY = "lvseg_teacher"


def rampup_weight(progress: float, rampup_epochs: float) -> float:
    """exp(-5 (1 - progress / rampup_epochs)^2) while progress < rampup_epochs, then 1 (progress in epochs)."""
    if rampup_epochs <= 0 or progress >= rampup_epochs:
        return 1.0
    phase = 1.0 - max(progress, 0.0) / rampup_epochs
    return float(math.exp(-5.0 * phase * phase))


@register_task
class SemiSupervisedTask(SegmentationTask):
    """:class:`SegmentationTask` trained on mixed labeled/unlabeled batches with EPI and the LV loss.

    Extra hparams: the ``"semi"`` options of :class:`~lvseg.training.options.TrainConfig` (``epi_beta``,
    ``unlabeled_weight``, ``warmup_epochs``, ``rampup_epochs``, ``lv_weight``, ``teacher_decay``,
    ``strong_view``). Before fitting, :meth:`attach` gives it the pseudo-label bank and the LV references
    (run-time state, not hparams). Logs the model's terms (``train_dice``, ``train_bce``, ...),
    ``train_pseudo``, ``train_lv``, ``train_unlabeled_weight`` and the total ``train_loss``.
    """

    task_name = "semi-supervised"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        semi = option_defaults(SEMI_OPTIONS) | {name: kwargs.pop(name) for name in SEMI_OPTIONS if name in kwargs}
        super().__init__(*args, **semi, **kwargs)
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
        self.perturbation = StrongPerturbation(bank.img_size, seed=seed) if self.hparams.strong_view else None

    def on_fit_start(self) -> None:
        if self.bank is None:
            raise LvsegError("SemiSupervisedTask.attach() must be called before fitting")
        if self.trainer.world_size > 1:
            raise LvsegError("semi-supervised training runs on one device; use --devices 1")
        self.build_teacher()

    def build_teacher(self) -> EmaTeacher:
        """Create the EMA teacher from the current weights (or the checkpoint's teacher when resuming)."""
        self.teacher = EmaTeacher(self.model, decay=self.hparams.teacher_decay)
        if self._teacher_state is not None:
            self.teacher.load_state_dict(self._teacher_state)
            self._teacher_state = None
        return self.teacher

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is not None:
            self.teacher.update()

    def unlabeled_weight_now(self, batch_idx: int) -> float:
        """The weight w(t) of the unlabeled losses at this step: 0 during the supervised warm-up (the
        model's early predictions would seed the pseudo-labels with noise that the EMA then keeps),
        then ramped up over ``rampup_epochs``."""
        batches = self.trainer.num_training_batches if self._trainer is not None else 0
        fraction = batch_idx / batches if batches and math.isfinite(batches) else 0.0
        progress = self.current_epoch + fraction - self.hparams.warmup_epochs
        if progress < 0:
            return 0.0
        return self.hparams.unlabeled_weight * rampup_weight(progress, self.hparams.rampup_epochs)

    def prepare_batch(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """EPI: the teacher updates the unlabeled images' pseudo-labels; the student gets their strong view.

        Adds ``unlabeled_weight`` (float) and, when the unlabeled images train at this step,
        ``pseudo_target`` (K, 1, S, S), ``pseudo_seen`` (K,) and ``lv_reference`` (K, 1, S, S) or None.
        """
        images, texts = batch["image"], list(batch["text"])  # (B, C, S, S), B reports
        unlabeled = ~batch["labeled"].to(images.device).bool()
        weight = self.unlabeled_weight_now(batch_idx)
        batch = {**batch, "unlabeled_weight": weight}
        if not bool(unlabeled.any()) or weight <= 0:
            return batch
        assert self.bank is not None
        teacher = self.teacher or self.build_teacher()
        indices = batch["index"].to(images.device)[unlabeled].cpu()
        unlabeled_texts = [text for text, is_unlabeled in zip(texts, unlabeled.tolist()) if is_unlabeled]
        self.bank.update(indices, teacher.predict_proba(images[unlabeled], unlabeled_texts))  # EPI
        targets, seen = self.bank.targets(indices)
        targets = targets.to(images.device)
        references = None
        if self.lv_masks is not None and self.lv_match is not None and self.hparams.lv_weight > 0:
            references = self.lv_masks[self.lv_match[indices]].to(images.device).float()
        if self.perturbation is not None:
            strong, targets, references = self.perturbation(images[unlabeled], targets, references)
            images = images.clone()
            images[unlabeled] = strong
        return {**batch, "image": images, "pseudo_target": targets, "pseudo_seen": seen.to(images.device),
                "lv_reference": references}

    def loss_terms(self, output: ModelOutput, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"].to(output.logits.device).bool()
        unlabeled = ~labeled
        weight = batch["unlabeled_weight"]
        self.log("train_unlabeled_weight", weight, on_step=False, on_epoch=True, batch_size=len(labeled))
        terms: dict[str, torch.Tensor] = {}
        if labeled.any():
            terms.update(self.model.compute_losses(output.select(labeled), batch["mask"][labeled]))
        if "pseudo_target" in batch:
            targets = batch["pseudo_target"]
            unlabeled_output = output.select(unlabeled)
            # An empty pseudo-label teaches "predict nothing" and collapses training (a report describes a
            # lesion): supervise only with pseudo-labels that hold some lesion.
            usable = batch["pseudo_seen"] & (targets.flatten(1).amax(1) > 0)
            if usable.any():
                pseudo = self.model.compute_losses(unlabeled_output, targets, usable.float())
                terms["pseudo"] = weight * torch.stack(list(pseudo.values())).sum()
            if batch["lv_reference"] is not None:
                lv_value = lv_loss(torch.sigmoid(unlabeled_output.logits.float()), batch["lv_reference"]).mean()
                terms["lv"] = weight * self.hparams.lv_weight * lv_value
        return terms

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


def semi_task_options(config: Any) -> dict[str, Any]:
    """The :class:`SemiSupervisedTask` hparams from a TrainConfig (empty when it is not semi / supervised-only)."""
    if not is_semi_supervised(config) or getattr(config, "supervised_only", False):
        return {}
    return {name: getattr(config, name) for name in SEMI_OPTIONS}


def task_class_for(config: Any) -> type[SegmentationTask]:
    """The registered task a TrainConfig asks for: ``semi-supervised`` when it trains with unlabeled images,
    else ``supervised``."""
    return TASKS[SemiSupervisedTask.task_name if semi_task_options(config) else SegmentationTask.task_name]


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
