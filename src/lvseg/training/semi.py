"""Semi-supervised training of any model: a supervised phase, then EPI pseudo-labels and the LV loss.

``lvseg train --labeled-fraction 0.25`` (or ``--labeled-list FILE``) keeps the masks of a seeded quarter of
the training images; the other images keep their image and report but their masks are never opened
(their samples carry ``mask_path=None`` and :func:`lvseg.data.layout.load_split` is called with
``require_masks=False``, which matches masks by name without reading them).

**Two phases in one run.** The *supervised phase* trains on the labeled images alone, exactly as
``--supervised-only`` does (same loader, same seed, so the same weights), until validation Dice has not
improved for ``--patience`` epochs, or after ``--warmup-epochs`` epochs if that comes first (a fraction
rounds up to the next whole epoch). The *semi-supervised phase* then starts from the best supervised
weights (restored, with a fresh optimiser state; the learning-rate schedule goes on where it was), and the
teacher starts from them too: pseudo-labels are never frozen at the quality of an unconverged model
(confirmation bias, which made the old 3-epoch warm-up worse than ignoring the unlabeled images).
Early stopping then counts the semi phase's epochs without beating the best Dice of *either* phase, and
``best.ckpt`` is chosen by validation Dice over both phases, so the returned model is never worse on
validation than supervised-only training on the same labels. ``warmup_epochs=0`` starts the semi phase at
the first step, from the initialisation.

In the semi phase each training batch mixes labeled and unlabeled samples (``batch["labeled"]`` (B,) bool,
``batch["index"]`` (B,) the position in the labeled or unlabeled set; :class:`BalancedSemiSampler`).
The loss of a batch is

    loss = L_model + w(t) * (L_pseudo + lv_weight * L_LV)

* ``L_model``: the model's own loss terms (:meth:`~lvseg.models.SegmentationModel.compute_losses`, e.g.
  ``dice`` and ``bce``) on the labeled images, logged under their names;
* ``L_pseudo`` (term ``pseudo``): the sum of the model's terms between the prediction for an unlabeled
  image's strong view and its pseudo-label (moved with the view), per pixel weighted by the teacher's
  confidence (below);
* ``L_LV`` (term ``lv``): :func:`lvseg.training.lv_loss.lv_loss` against the mask of the most similar
  reference report;
* ``w(t) = unlabeled_weight * exp(-5 (1 - t / rampup_epochs)^2)`` for ``t < rampup_epochs`` (t in
  fractional epochs since the semi phase started), then ``unlabeled_weight`` (the sigmoid ramp-up of
  Laine & Aila, ICLR 2017).

Exponential Pseudo-label Iteration (EPI, LViT, Li et al., IEEE TMI 2023;
:class:`~lvseg.training.pseudo_labels.PseudoLabelBank`): every time an unlabeled image is trained on
(once per epoch), its pseudo-label becomes ``P_t = beta * P_(t-1) + (1 - beta) * p_t`` (the first
prediction initialises it). ``p_t`` comes from a *teacher* (:class:`~lvseg.training.teacher.EmaTeacher`,
Mean Teacher, Tarvainen & Valpola, NeurIPS 2017): an exponential moving average of the student's weights,
run in eval mode on the un-augmented image. The training target is ``P_t`` binarised at 0.5, and:

* **confidence mask** (``--pseudo-confidence tau``, FixMatch's threshold, Sohn et al. 2020, as UniMatch
  applies it per pixel, Yang et al. 2023): a pixel supervises only where ``P_t >= tau`` or
  ``P_t <= 1 - tau``; the fraction of pixels kept is logged as ``train_pseudo_kept``;
* **report filter** (``--report-filter``, :class:`~lvseg.training.pseudo_labels.ReportFilter`): regions
  of the target in a lung or zone the image's report does not name, or beyond its count of areas, become
  background -- the text guiding the pseudo-labels, as the LViT abstract claims it does;
* an image whose pseudo-label holds no lesion is not supervised (a report describes a lesion).

The student sees a *strong view* of the unlabeled image (:class:`~lvseg.training.perturb.StrongPerturbation`:
a random affine applied alike to the image, its pseudo-label and its LV reference, plus contrast, noise
and blur): a target predicted from the very input it supervises teaches nothing new (FixMatch's
weak/strong views). Labeled images keep the usual augmentation.

**DDP.** The pairs of :class:`~lvseg.data.split.BalancedSemiSampler` are dealt out to the processes; at
every step the teacher's predictions of all processes are gathered and every process applies the same EPI
update, so the pseudo-label banks stay identical; the teacher follows identical student weights, so it is
identical too.

Pseudo-labels are stored at model resolution as float16 in ``<run>/pseudo_labels.pt`` (atomic write,
each time a checkpoint is saved, tagged with the global step) so ``--resume`` continues with them (the
teacher's weights travel in the checkpoint, under ``lvseg_teacher``, and the phase under ``lvseg_semi``);
the split is written to ``<run>/semi_split.json`` and must be the same when resuming. At the end of a run
the best validation Dice of each phase and the phase ``best.ckpt`` comes from are logged and written to
``<run>/semi_phases.json`` (and to the checkpoints' metrics).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import ConcatDataset, DataLoader

from lvseg.checkpoint import read_checkpoint_dict
from lvseg.data.layout import Sample
from lvseg.data.seeding import PERTURBATION_STREAM, EpochClock, EpochSampler, derived_seed
from lvseg.data.split import BalancedSemiSampler, LabeledSplit, check_labeled_masks, read_labeled_list, split_labeled
from lvseg.errors import LvsegError
from lvseg.files import atomic_write_text
from lvseg.models import ModelOutput
from lvseg.training.epoch_seeding import loader_generator
from lvseg.training.lv_loss import LVReferenceSet, load_template_references, lv_loss, references_from_samples
from lvseg.training.module import TASKS, SegmentationTask, register_task
from lvseg.training.options import SEMI_OPTIONS, is_semi_supervised, option_defaults
from lvseg.training.perturb import StrongPerturbation
from lvseg.training.pseudo_labels import PseudoLabelBank, ReportFilter, confidence_weight
from lvseg.training.teacher import EmaTeacher

if TYPE_CHECKING:
    from lvseg.data.dataset import SegmentationDataset

log = logging.getLogger(__name__)

PSEUDO_LABEL_FILE = "pseudo_labels.pt"
SPLIT_FILE = "semi_split.json"
PHASES_FILE = "semi_phases.json"
TEACHER_KEY = "lvseg_teacher"
PHASE_KEY = "lvseg_semi"
SUPERVISED, SEMI = "supervised", "semi-supervised"


def rampup_weight(progress: float, rampup_epochs: float) -> float:
    """exp(-5 (1 - progress / rampup_epochs)^2) while progress < rampup_epochs, then 1 (progress in epochs)."""
    if rampup_epochs <= 0 or progress >= rampup_epochs:
        return 1.0
    phase = 1.0 - max(progress, 0.0) / rampup_epochs
    return float(math.exp(-5.0 * phase * phase))


@register_task
class SemiSupervisedTask(SegmentationTask):
    """:class:`SegmentationTask` with a supervised phase, then mixed labeled/unlabeled batches with EPI and
    the LV loss (module docstring).

    Extra hparams: the ``"semi"`` options of :class:`~lvseg.training.options.TrainConfig` (``epi_beta``,
    ``unlabeled_weight``, ``warmup_epochs``, ``rampup_epochs``, ``lv_weight``, ``teacher_decay``,
    ``strong_view``, ``pseudo_confidence``, ``report_filter``). Before fitting, :meth:`attach` gives it the
    pseudo-label bank and the LV references (run-time state, not hparams). Logs the model's terms
    (``train_dice``, ``train_bce``, ...), ``train_pseudo``, ``train_pseudo_kept``, ``train_lv``,
    ``train_unlabeled_weight`` and the total ``train_loss``.

    ``phase`` is ``"supervised"`` or ``"semi-supervised"``; ``phase_best`` maps each phase to its best
    validation Dice (None before its first validation) and ``phase_best_epoch`` to that epoch.
    """

    task_name = "semi-supervised"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        semi = option_defaults(SEMI_OPTIONS) | {name: kwargs.pop(name) for name in SEMI_OPTIONS if name in kwargs}
        super().__init__(*args, **semi, **kwargs)  # type: ignore[misc]  # mypy cannot tell that *args fills the named parameters
        self.bank: PseudoLabelBank | None = None
        self.lv_masks: torch.Tensor | None = None  # uint8 (R, 1, S, S)
        self.lv_match: torch.Tensor | None = None  # int64 (N_unlabeled,) reference index per unlabeled image
        self.report_filter: ReportFilter | None = None
        self.pseudo_label_path: Path | None = None
        self._saved_step: int | None = None
        self.teacher: EmaTeacher | None = None
        self._teacher_state: dict[str, torch.Tensor] | None = None  # from a checkpoint, until the teacher exists
        self.perturbation: StrongPerturbation | None = None
        self._perturbation_seed: int | None = None
        starts_semi = self.hparams.warmup_epochs is not None and self.hparams.warmup_epochs <= 0
        self.phase = SEMI if starts_semi else SUPERVISED
        self.semi_start_epoch: int | None = 0 if starts_semi else None
        self.phase_best: dict[str, float | None] = {SUPERVISED: None, SEMI: None}
        self.phase_best_epoch: dict[str, int | None] = {SUPERVISED: None, SEMI: None}
        self._best_supervised_state: dict[str, torch.Tensor] | None = None

    def attach(
        self,
        bank: PseudoLabelBank,
        lv_masks: torch.Tensor | None = None,
        lv_match: torch.Tensor | None = None,
        pseudo_label_path: Path | None = None,
        seed: int | None = None,
        reports: Sequence[str] | None = None,
    ) -> None:
        """Set the run-time state: bank (N unlabeled), reference masks (R, 1, S, S), match (N,) into them;
        ``seed`` seeds the strong-view perturbation; ``reports`` (N, bank order) feed the report filter
        when ``report_filter`` is on."""
        if (lv_masks is None) != (lv_match is None):
            raise ValueError("lv_masks and lv_match go together")
        if lv_match is not None and len(lv_match) != len(bank):
            raise ValueError(f"lv_match has {len(lv_match)} entries for {len(bank)} unlabeled images")
        if reports is not None and len(reports) != len(bank):
            raise ValueError(f"{len(reports)} reports for {len(bank)} unlabeled images")
        self.bank, self.lv_masks, self.lv_match = bank, lv_masks, lv_match
        self.pseudo_label_path = pseudo_label_path
        self._perturbation_seed = seed
        self.perturbation = StrongPerturbation(bank.img_size, seed=seed) if self.hparams.strong_view else None
        self.report_filter = None
        if self.hparams.report_filter and reports is not None:
            self.report_filter = ReportFilter(reports)
            log.info(
                "report filter: %d of %d unlabeled reports are in the chest-report grammar",
                self.report_filter.readable,
                len(reports),
            )

    # ------------------------------------------------------------------------------------ phases

    def on_fit_start(self) -> None:
        if self.bank is None:
            raise LvsegError("SemiSupervisedTask.attach() must be called before fitting")
        self.bank.to(self.device)
        if self.perturbation is not None and self._perturbation_seed is not None and self._world_size() > 1:
            # Each process its own random views (the same seed would give every rank the same affines).
            seed = self._perturbation_seed + int(self.trainer.global_rank)
            self.perturbation = StrongPerturbation(self.bank.img_size, seed=seed)
        if self.phase == SEMI:
            self.build_teacher()

    def on_train_epoch_start(self) -> None:
        # The strong views of an epoch are seeded by (seed, rank, epoch), not drawn on from the epochs before:
        # the epoch after a --resume perturbs as the uninterrupted run would have.
        if self.perturbation is not None and self._perturbation_seed is not None and self.bank is not None:
            seed = derived_seed(
                self._perturbation_seed, PERTURBATION_STREAM, int(self.trainer.global_rank), int(self.current_epoch)
            )
            self.perturbation = StrongPerturbation(self.bank.img_size, seed=seed)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or self.last_val_dice is None:
            return
        best = self.phase_best[self.phase]
        if best is None or self.last_val_dice > best:
            self.phase_best[self.phase] = self.last_val_dice
            self.phase_best_epoch[self.phase] = int(self.current_epoch)
            if self.phase == SUPERVISED:
                # On the CPU: a copy on the GPU would double the memory of a large model.
                self._best_supervised_state = {
                    key: value.detach().to("cpu", copy=True) for key, value in self.model.state_dict().items()
                }

    def should_start_semi_phase(self, supervised_phase_stalled: bool) -> bool:
        """After this epoch's validation: end the supervised phase now? (It has unlabeled images, and has
        stopped improving, or has run ``warmup_epochs`` epochs.)"""
        if self.phase != SUPERVISED or self.bank is None or len(self.bank) == 0:
            return False
        warmup = self.hparams.warmup_epochs
        return supervised_phase_stalled or (warmup is not None and self.current_epoch + 1 >= warmup)

    def start_semi_phase(self) -> None:
        """Restore the best supervised weights, reset the optimiser's state, start the teacher from them."""
        state = self._best_supervised_state or self._best_checkpoint_state()
        if state is not None:
            self.model.load_state_dict(state, strict=True)
        if self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()
        self._best_supervised_state = None
        self.phase = SEMI
        self.semi_start_epoch = int(self.current_epoch) + 1
        self.teacher = None
        self._teacher_state = None
        self.build_teacher()
        log.info(
            "supervised phase done after %d epoch%s (best validation Dice %s at epoch %s); the "
            "semi-supervised phase starts from that checkpoint",
            self.current_epoch + 1,
            "" if self.current_epoch == 0 else "s",
            _dice_text(self.phase_best[SUPERVISED]),
            self.phase_best_epoch[SUPERVISED],
        )

    def _best_checkpoint_state(self) -> dict[str, torch.Tensor] | None:
        """The model weights of the run's best checkpoint (a run resumed in its supervised phase keeps no
        copy in memory); None when there is none yet."""
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        path = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not path or not Path(path).is_file():
            return None
        prefix = "model."
        state = read_checkpoint_dict(Path(path))["state_dict"]
        return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}

    def phase_summary(self) -> dict[str, Any]:
        """Best validation Dice and epoch of each phase, the epoch the semi phase began, and the phase the
        run's best checkpoint comes from (ties go to the supervised phase, which reached it first)."""
        supervised, semi = self.phase_best[SUPERVISED], self.phase_best[SEMI]
        source = SEMI if semi is not None and (supervised is None or semi > supervised) else SUPERVISED
        return {
            "supervised_best_val_dice": supervised,
            "supervised_best_epoch": self.phase_best_epoch[SUPERVISED],
            "semi_best_val_dice": semi,
            "semi_best_epoch": self.phase_best_epoch[SEMI],
            "semi_start_epoch": self.semi_start_epoch,
            "best_checkpoint_phase": source,
        }

    # ------------------------------------------------------------------------------------ steps

    def build_teacher(self) -> EmaTeacher:
        """Create the EMA teacher from the current weights (or the checkpoint's teacher when resuming)."""
        self.teacher = EmaTeacher(self.model, decay=self.hparams.teacher_decay)
        if self._teacher_state is not None:
            self.teacher.load_state_dict(self._teacher_state)
            self._teacher_state = None
        return self.teacher

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is not None and self.phase == SEMI:
            self.teacher.update()

    def unlabeled_weight_now(self, batch_idx: int) -> float:
        """The weight w(t) of the unlabeled losses at this step: 0 in the supervised phase, then ramped up
        over ``rampup_epochs`` from the start of the semi phase."""
        if self.phase != SEMI or self.semi_start_epoch is None:
            return 0.0
        batches = self.trainer.num_training_batches if self._trainer is not None else 0
        fraction = batch_idx / batches if batches and math.isfinite(batches) else 0.0
        progress = self.current_epoch + fraction - self.semi_start_epoch
        return self.hparams.unlabeled_weight * rampup_weight(progress, self.hparams.rampup_epochs)

    def prepare_batch(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """EPI: the teacher updates the unlabeled images' pseudo-labels; the student gets their strong view.

        Adds ``unlabeled_weight`` (float) and, when the unlabeled images train at this step,
        ``pseudo_target`` (K, 1, S, S), ``pseudo_weight`` (K, 1, S, S) (confidence mask times "the image's
        pseudo-label holds a lesion"), ``pseudo_kept`` (fraction of pixels kept) and ``lv_reference``
        (K, 1, S, S) or None.
        """
        images, texts = batch["image"], list(batch["text"])  # (B, C, S, S), B reports
        unlabeled = ~batch["labeled"].to(images.device).bool()
        weight = self.unlabeled_weight_now(batch_idx)
        batch = {**batch, "unlabeled_weight": weight}
        if weight <= 0 or (not bool(unlabeled.any()) and self._world_size() == 1):
            return batch
        assert self.bank is not None
        teacher = self.teacher or self.build_teacher()
        indices = batch["index"].to(images.device)[unlabeled]
        unlabeled_texts = [text for text, is_unlabeled in zip(texts, unlabeled.tolist()) if is_unlabeled]
        probabilities = (
            teacher.predict_proba(images[unlabeled], unlabeled_texts)
            if len(indices)
            else images.new_zeros(0, 1, *images.shape[-2:])
        )
        self.bank.update(*self._gather_updates(indices, probabilities, len(texts)))  # EPI, alike on every rank
        if not len(indices):
            return batch
        targets, seen = self.bank.targets(indices)
        soft = self.bank.soft_labels(indices)
        if self.report_filter is not None:
            targets = self.report_filter(indices, targets, soft)
        holds_lesion = seen & (targets.flatten(1).amax(1) > 0)
        pixel_weight = confidence_weight(soft, self.hparams.pseudo_confidence) * holds_lesion.view(-1, 1, 1, 1)
        kept = pixel_weight[holds_lesion].mean() if bool(holds_lesion.any()) else pixel_weight.new_zeros(())
        targets, pixel_weight = targets.to(images.device), pixel_weight.to(images.device)
        references = None
        if self.lv_masks is not None and self.lv_match is not None and self.hparams.lv_weight > 0:
            references = self.lv_masks[self.lv_match[indices.cpu()]].to(images.device).float()
        if self.perturbation is not None:
            # One geometry for image, target, weight and reference: the weight travels as a second target channel.
            strong, moved, references = self.perturbation(
                images[unlabeled], torch.cat([targets, pixel_weight], 1), references
            )
            targets, pixel_weight = moved[:, :1], moved[:, 1:]
            images = images.clone()
            images[unlabeled] = strong
        return {
            **batch,
            "image": images,
            "pseudo_target": targets,
            "pseudo_weight": pixel_weight,
            "pseudo_kept": kept,
            "lv_reference": references,
        }

    def _world_size(self) -> int:
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def _gather_updates(
        self, indices: torch.Tensor, probabilities: torch.Tensor, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's EPI update (K,), (K, 1, S, S) -> every process's (under DDP; padded to the batch size
        for the all-gather, the padding dropped after it)."""
        if self._world_size() == 1:
            return indices, probabilities
        padded_indices = indices.new_full((batch_size,), -1)
        padded_indices[: len(indices)] = indices
        padded = probabilities.new_zeros(batch_size, *probabilities.shape[1:])
        padded[: len(indices)] = probabilities
        all_indices = self.all_gather(padded_indices).reshape(-1)  # type: ignore[union-attr]  # a tensor gathers to a tensor
        all_probabilities = self.all_gather(padded).reshape(-1, *probabilities.shape[1:])  # type: ignore[union-attr]
        # Drop the padding, and keep one update per image (DDP pads the last pairs by repeating images).
        valid = [position for position, index in _first_occurrences(all_indices.tolist()) if index >= 0]
        keep = torch.tensor(valid, dtype=torch.long, device=all_indices.device)
        return all_indices[keep], all_probabilities[keep]

    def loss_terms(self, output: ModelOutput, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"].to(output.logits.device).bool()
        unlabeled = ~labeled
        weight = batch["unlabeled_weight"]
        self.log("train_unlabeled_weight", weight, on_step=False, on_epoch=True, batch_size=len(labeled))
        terms: dict[str, torch.Tensor] = {}
        if labeled.any():
            terms.update(self.model.compute_losses(output.select(labeled), batch["mask"][labeled]))
        if "pseudo_target" in batch:
            unlabeled_output = output.select(unlabeled)
            pixel_weight = batch["pseudo_weight"]
            self.log(
                "train_pseudo_kept", batch["pseudo_kept"], on_step=False, on_epoch=True, batch_size=int(unlabeled.sum())
            )
            if bool((pixel_weight > 0).any()):
                pseudo = self.model.compute_losses(unlabeled_output, batch["pseudo_target"], pixel_weight)
                terms["pseudo"] = weight * torch.stack(list(pseudo.values())).sum()
            if batch["lv_reference"] is not None:
                lv_value = lv_loss(torch.sigmoid(unlabeled_output.logits.float()), batch["lv_reference"]).mean()
                terms["lv"] = weight * self.hparams.lv_weight * lv_value
        return terms

    # ------------------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        summary = self.phase_summary()
        checkpoint[PHASE_KEY] = {"phase": self.phase, **summary}
        metrics = checkpoint["lvseg"].setdefault("metrics", {})
        for key in ("supervised_best_val_dice", "semi_best_val_dice"):
            if summary[key] is not None:
                metrics[key] = summary[key]
        if self.bank is None or self.pseudo_label_path is None or self._trainer is None:
            return
        step = int(self.trainer.global_step)
        if step != self._saved_step and self.trainer.is_global_zero:
            self.bank.save(self.pseudo_label_path, global_step=step, epoch=int(self.current_epoch))
            self._saved_step = step
        checkpoint["lvseg"]["pseudo_labels"] = {"file": PSEUDO_LABEL_FILE, "global_step": step}
        if self.teacher is not None:
            checkpoint[TEACHER_KEY] = self.teacher.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        record = checkpoint.get(PHASE_KEY)
        if isinstance(record, dict):
            self.phase = record.get("phase", self.phase)
            self.semi_start_epoch = record.get("semi_start_epoch", self.semi_start_epoch)
            for phase, prefix in ((SUPERVISED, "supervised"), (SEMI, "semi")):
                self.phase_best[phase] = record.get(f"{prefix}_best_val_dice")
                self.phase_best_epoch[phase] = record.get(f"{prefix}_best_epoch")
        self._teacher_state = checkpoint.get(TEACHER_KEY)
        if self._teacher_state is not None and self.teacher is not None:
            self.teacher.load_state_dict(self._teacher_state)
            self._teacher_state = None


def _first_occurrences(values: list[int]) -> list[tuple[int, int]]:
    """(position, value) of the first occurrence of each value, in order."""
    seen: set[int] = set()
    firsts = []
    for position, value in enumerate(values):
        if value not in seen:
            seen.add(value)
            firsts.append((position, value))
    return firsts


def _dice_text(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


class PhasedEarlyStopping(EarlyStopping):
    """Early stopping on ``val_dice`` that first ends the supervised phase of a :class:`SemiSupervisedTask`.

    Where plain early stopping would stop a run in its supervised phase (``patience`` epochs without a better
    validation Dice), or when the phase has run ``warmup_epochs``, the run goes on with the semi phase
    instead, and the count of epochs without improvement starts again (against the best Dice so far, of
    either phase). Any other task stops as with :class:`~lightning.pytorch.callbacks.EarlyStopping`.
    The check runs after each epoch's validation and before the checkpoints of that epoch are written, so
    ``last.ckpt`` holds the phase that the next epoch trains in.
    """

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        task = trainer.lightning_module
        if not isinstance(task, SemiSupervisedTask) or task.phase != SUPERVISED:
            super()._run_early_stopping_check(trainer)
            return
        already_stopping = trainer.should_stop  # e.g. --max-time: not ours to undo
        super()._run_early_stopping_check(trainer)
        stalled = trainer.should_stop and not already_stopping
        if task.should_start_semi_phase(stalled):
            trainer.should_stop = already_stopping
            self.wait_count = 0
            self.stopped_epoch = 0
            task.start_semi_phase()


def log_phase_summary(task: SemiSupervisedTask, out: Path) -> dict[str, Any]:
    """Log which phase the best checkpoint comes from and write ``<out>/semi_phases.json``; returns the summary."""
    summary = task.phase_summary()
    if summary["semi_start_epoch"] is None:
        log.info(
            "semi-supervised run: the supervised phase (best validation Dice %s at epoch %s) never ended, "
            "so no pseudo-labels were trained on; best.ckpt is supervised",
            _dice_text(summary["supervised_best_val_dice"]),
            summary["supervised_best_epoch"],
        )
    else:
        log.info(
            "semi-supervised run: best validation Dice %s in the supervised phase (epoch %s), %s in the "
            "semi-supervised phase (from epoch %s, best at epoch %s); best.ckpt is from the %s phase",
            _dice_text(summary["supervised_best_val_dice"]),
            summary["supervised_best_epoch"],
            _dice_text(summary["semi_best_val_dice"]),
            summary["semi_start_epoch"],
            summary["semi_best_epoch"],
            summary["best_checkpoint_phase"],
        )
    atomic_write_text(out / PHASES_FILE, json.dumps(summary, indent=1))
    return summary


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


class SemiDataModule(L.LightningDataModule):
    """The loaders of a run with a labeled/unlabeled split; the training loader follows the task's phase.

    Supervised phase (and ``--supervised-only``, and any task without phases): the labeled images alone,
    shuffled, as a supervised run loads them. Semi phase: labeled and unlabeled images through a
    :class:`BalancedSemiSampler` for this process (rank and world size are known only once the trainer
    runs). The trainer reloads the training loader every epoch (``reload_dataloaders_every_n_epochs=1``).
    Both orders are functions of (``seed``, epoch); ``start_epoch``: the first epoch this process trains (a
    resumed run's next one).
    """

    def __init__(
        self,
        task: SegmentationTask,
        labeled: SegmentationDataset,
        unlabeled: SegmentationDataset | None,
        val_loader: DataLoader,
        loader_options: dict[str, Any],
        seed: int,
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.task, self.labeled, self.unlabeled, self.val_loader = task, labeled, unlabeled, val_loader
        self.loader_options, self.seed, self.start_epoch = dict(loader_options), int(seed), int(start_epoch)
        self._labeled_loader: DataLoader | None = None
        self._mixed_loader: DataLoader | None = None

    def labeled_steps(self) -> int:
        """Training steps per epoch of the labeled loader in one process."""
        count, batch_size = len(self.labeled), int(self.loader_options["batch_size"])
        return count // batch_size if count > batch_size else 1

    def train_dataloader(self) -> DataLoader:
        assert self.trainer is not None  # Lightning attaches it before it asks for loaders
        if getattr(self.task, "phase", SUPERVISED) != SEMI or self.unlabeled is None:
            if self._labeled_loader is None:
                # drop_last as a supervised run has it, judged on this process's share of the images.
                share = -(-len(self.labeled) // self.trainer.world_size)
                self._labeled_loader = DataLoader(
                    self.labeled,
                    sampler=EpochSampler(len(self.labeled), self.seed, self._next_epoch()),
                    drop_last=share > int(self.loader_options["batch_size"]),
                    generator=loader_generator(self.seed),
                    **self.loader_options,
                )
            return self._labeled_loader
        if self._mixed_loader is None:
            mixed: ConcatDataset = ConcatDataset([self.labeled, self.unlabeled])
            sampler = BalancedSemiSampler(
                len(self.labeled),
                len(self.unlabeled),
                seed=self.seed,
                num_replicas=self.trainer.world_size,
                rank=self.trainer.global_rank,
            )
            sampler.set_epoch(self._next_epoch())  # with workers, the first epoch's indices precede set_epoch
            # No drop_last: every unlabeled image must get its one EPI update per epoch.
            self._mixed_loader = DataLoader(
                mixed, sampler=sampler, drop_last=False, generator=loader_generator(self.seed), **self.loader_options
            )
        return self._mixed_loader

    def _next_epoch(self) -> int:
        """The epoch a loader built now first serves: the trainer's, not before this process's first."""
        return max(self.start_epoch, int(self.trainer.current_epoch) if self.trainer is not None else 0)

    def val_dataloader(self) -> DataLoader:
        return self.val_loader


def build_semi_data(
    config: Any,
    task: SegmentationTask,
    train_samples: Sequence[Sample],
    out: Path,
    loader_options: dict[str, Any],
    val_loader: DataLoader,
    clock: EpochClock | None = None,
    start_epoch: int = 0,
) -> SemiDataModule:
    """Split the training samples, attach EPI/LV state to a :class:`SemiSupervisedTask`, build its loaders.

    ``train_samples`` must come from ``load_split(..., require_masks=False)``. With
    ``config.supervised_only`` the unlabeled images are dropped (the supervised baseline on the same
    labeled subset, loaded exactly as the supervised phase loads it). Writes ``semi_split.json`` (checked on
    ``--resume``) and, on resume, reloads ``pseudo_labels.pt``. ``clock``: the run's epoch, which seeds each
    labeled image's augmentation by (seed, epoch, index); ``start_epoch``: the first epoch this process trains.
    """
    from lvseg.data.dataset import SegmentationDataset

    split = make_split(config, train_samples)
    check_labeled_masks(split.labeled)
    split_path = out / SPLIT_FILE
    if config.resume and split_path.is_file():
        _check_saved_split(split_path, split)
    else:
        record = split.to_json() | {
            "labeled_fraction": config.labeled_fraction,
            "seed": config.seed,
            "labeled_list": None if config.labeled_list is None else str(config.labeled_list),
        }
        atomic_write_text(split_path, json.dumps(record, indent=1))
    log.info(
        "semi-supervised split: %d labeled, %d unlabeled training images%s",
        len(split.labeled),
        len(split.unlabeled),
        " (unlabeled dropped: supervised only)" if config.supervised_only else "",
    )

    labeled_set = SegmentationDataset(
        split.labeled,
        config.img_size,
        augment=config.augment,
        channels=config.in_channels,
        seed=config.seed,
        epoch_clock=clock,
    )
    if config.supervised_only or not split.unlabeled:
        if isinstance(task, SemiSupervisedTask):  # a --labeled-list naming every image: nothing unlabeled
            task.attach(PseudoLabelBank([], config.img_size, beta=config.epi_beta))
        return SemiDataModule(task, labeled_set, None, val_loader, loader_options, config.seed, start_epoch)
    if not isinstance(task, SemiSupervisedTask):
        raise LvsegError("a semi-supervised run needs a SemiSupervisedTask")

    unlabeled_set = SegmentationDataset(split.unlabeled, config.img_size, augment=False, channels=config.in_channels)
    bank = PseudoLabelBank([s.name for s in split.unlabeled], config.img_size, beta=config.epi_beta)
    pseudo_path = out / PSEUDO_LABEL_FILE
    if config.resume:
        if pseudo_path.is_file():
            state = bank.load(pseudo_path)
            log.info(
                "resumed %d pseudo-labels (%d set) from %s, step %s",
                len(bank),
                int(bank.seen.sum()),
                pseudo_path,
                state.get("global_step"),
            )
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
    task.attach(
        bank,
        lv_masks,
        lv_match,
        pseudo_label_path=pseudo_path,
        seed=config.seed,
        reports=[s.text for s in split.unlabeled],
    )
    return SemiDataModule(task, labeled_set, unlabeled_set, val_loader, loader_options, config.seed, start_epoch)
