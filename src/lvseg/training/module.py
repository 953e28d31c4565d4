"""The Lightning module that trains any registered model through the model contract."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch

from lvseg.checkpoint import lvseg_record
from lvseg.errors import LvsegError
from lvseg.evaluation.metrics import binarize, dice_iou_per_image
from lvseg.models import ModelOutput, create_model
from lvseg.models.base import as_output
from lvseg.training.optim import LR_SCHEDULES, OPTIMIZERS, optimizer_groups
from lvseg.training.options import OPTIM_OPTIONS, option_defaults

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

#: Training tasks by name; a run's checkpoint records its task (``checkpoint["lvseg"]["task"]``) and
#: ``--resume`` rebuilds that one.
TASKS: dict[str, type[SegmentationTask]] = {}


def register_task(cls: type[SegmentationTask]) -> type[SegmentationTask]:
    """Class decorator: make a :class:`SegmentationTask` subclass available as ``TASKS[cls.task_name]``."""
    if cls.task_name in TASKS:
        raise ValueError(f"training task {cls.task_name!r} is registered twice")
    TASKS[cls.task_name] = cls
    return cls


class SegmentationTask(L.LightningModule):
    """Supervised training of ``create_model(model_name, **model_config)``.

    Batches are dicts from :class:`lvseg.data.dataset.SegmentationDataset`: ``image`` (B, C, H, W),
    ``mask`` (B, 1, H, W), ``text`` (list of B strings). A training step is::

        batch  = self.prepare_batch(batch, batch_idx)                   # hook (semi-supervised views)
        output = self.model(images, self.model.encode_text(texts))      # ModelOutput (training mode)
        terms  = self.loss_terms(output, batch, batch_idx)              # hook; default: the model's terms
        loss   = sum(terms.values())

    and logs ``train_<name>`` for every term plus ``train_loss``; variants override a hook, never the
    step. Validation logs ``val_loss``, ``val_dice`` and ``val_iou`` (per-image means, the LViT paper's metric,
    at the model's declared ``decision_threshold``, 0.5 for most, so checkpoints are selected at the threshold
    they predict with) from :meth:`SegmentationModel.predict_logits`.

    ``task_name`` (class attribute) names the task in the task registry and in its checkpoints.

    ``model_texts``: the training reports, only used to build a ``learned`` vocabulary when the model
    config asks for one by name (a resumed run's config carries the vocabulary itself). The optimiser
    settings (``optimizer``, ``lr``, ``weight_decay``, ``lr_schedule``, ``restart_epochs``, ``min_lr``,
    ``lr_scales``) default to the ``lvit`` recipe's (:data:`lvseg.recipes.RECIPES`).
    """

    task_name: ClassVar[str] = "supervised"

    def __init__(
        self,
        model_name: str,
        model_config: dict[str, Any],
        model_texts: list[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        options = option_defaults(OPTIM_OPTIONS) | options
        self.model = create_model(model_name, texts=model_texts, **model_config)
        # The built model's config replaces the request ("learned" -> its vocabulary), so the
        # checkpoint's hparams rebuild it; the reports themselves are not kept.
        self.save_hyperparameters({"model_name": model_name, "model_config": dict(self.model.config), **options})
        groups = {group.name for group in self.model.parameter_groups()}
        unknown = sorted(set(options.get("lr_scales") or {}) - groups)
        if unknown:
            raise LvsegError(
                f"--lr-scale names parameter group(s) {', '.join(unknown)} that model '{model_name}' "
                f"does not have; its groups: {', '.join(sorted(groups))}"
            )
        self.best_val_dice: float | None = None
        self.last_val_dice: float | None = None

    if TYPE_CHECKING:  # save_hyperparameters(a dict) stores an AttributeDict; Lightning types it more loosely

        @property
        def hparams(self) -> AttributeDict: ...

    #: Channels-last memory layout for images (set with the model's by ``lvseg train --channels-last``).
    channels_last: bool = False

    def use_channels_last(self) -> None:
        """Weights and every batch's images in channels-last layout (faster bf16 convolutions)."""
        self.channels_last = True
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format

    def use_compile(self) -> None:
        """``torch.compile`` the network in place (``nn.Module.compile``: parameter names, so checkpoints, are
        unchanged); ``encode_text`` runs outside it, eager. Refused, in one sentence, where torch.compile would
        fail at its first step because it finds no C++ compiler (it searches ``$CXX``, then g++)."""
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            raise LvsegError(
                "--compile needs a C++ compiler that torch.compile can find ($CXX, else g++ on the "
                "PATH): install one (e.g. apt install g++) or train without --compile"
            ) from None
        self.model.compile()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if (
            self.channels_last
            and isinstance(batch, dict)
            and isinstance(batch.get("image"), torch.Tensor)
            and batch["image"].ndim == 4
        ):
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def forward(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor | ModelOutput:
        """images (B, C, H, W), texts: B strings -> the model's output (logits in eval mode)."""
        return self.model(images, self.model.encode_text(list(texts)))

    # ------------------------------------------------------------------------------------ hooks

    def prepare_batch(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """The batch the student trains on (identity; semi-supervised training perturbs unlabeled images)."""
        return batch

    def loss_terms(self, output: ModelOutput, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Named, weighted loss terms of a training batch; their sum is the loss."""
        return self.model.compute_losses(output, batch["mask"])

    # ------------------------------------------------------------------------------------ steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self.prepare_batch(batch, batch_idx)
        output = as_output(self(batch["image"], batch["text"]))
        terms = self.loss_terms(output, batch, batch_idx)
        batch_size = len(batch["text"])
        loss = torch.stack(list(terms.values())).sum() if terms else output.logits.sum() * 0.0
        if not torch.isfinite(loss):  # fail loudly: a NaN would otherwise flow into every weight
            values = ", ".join(f"{name}={float(value):.4g}" for name, value in terms.items())
            raise LvsegError(
                f"the training loss is not finite at epoch {self.current_epoch}, batch {batch_idx} "
                f"({values}); lower --lr or check the data"
            )
        for name, value in terms.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.model.predict_logits(batch["image"], list(batch["text"]))
        batch_size = len(batch["text"])
        masks = binarize(torch.sigmoid(logits.float()), self.model.decision_threshold)  # as predict will cut them
        dice, iou = dice_iou_per_image(masks, batch["mask"])
        val_loss = torch.stack(list(self.model.compute_losses(logits, batch["mask"]).values())).sum()
        self.log("val_loss", val_loss, batch_size=batch_size, sync_dist=True)
        self.log("val_dice", dice.mean(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val_iou", iou.mean(), batch_size=batch_size, sync_dist=True)
        if logits.shape[1] > 1:  # one channel per class: val_dice is the mean over classes, and each is logged
            for name, value in zip(self.channel_names(logits.shape[1]), dice.view(batch_size, -1).mean(0)):
                self.log(f"val_dice_{name}", value, batch_size=batch_size, sync_dist=True)

    def channel_names(self, channels: int) -> list[str]:
        """Metric-name-safe names of the output channels: the recorded class table's (``hparams["class_table"]``),
        else 1 ... K."""
        table = self.hparams.get("class_table") or []
        names = [str(row["name"]) for row in table] if len(table) == channels else [str(k + 1) for k in range(channels)]
        return ["".join(ch if ch.isalnum() else "_" for ch in name) for name in names]

    def on_validation_epoch_end(self) -> None:
        metric = self.trainer.callback_metrics.get("val_dice")
        if metric is not None and not self.trainer.sanity_checking:
            value = float(metric)
            self.last_val_dice = value
            if self.best_val_dice is None or value > self.best_val_dice:
                self.best_val_dice = value

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """``optimizer`` (:data:`~lvseg.training.optim.OPTIMIZERS`) over the model's parameter groups, each at
        ``lr`` times its scale, and ``lr_schedule`` (:data:`~lvseg.training.optim.LR_SCHEDULES`)."""
        groups = optimizer_groups(self.model.parameter_groups(), self.hparams.lr, self.hparams.lr_scales or {})
        optimizer = OPTIMIZERS[self.hparams.optimizer](
            groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        schedule = LR_SCHEDULES[self.hparams.lr_schedule].build(optimizer, self.hparams)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # ------------------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = dict(self.hparams)
        # val_dice: this checkpoint's own epoch (best.ckpt: the best one); best_val_dice: the run's best so far.
        metrics = {}
        if self.last_val_dice is not None:
            metrics["val_dice"] = self.last_val_dice
        if self.best_val_dice is not None:
            metrics["best_val_dice"] = self.best_val_dice
        checkpoint["lvseg"] = lvseg_record(self.model, metrics) | {"task": self.task_name}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        metrics = checkpoint.get("lvseg", {}).get("metrics", {})
        self.best_val_dice = metrics.get("best_val_dice", metrics.get("val_dice"))
        self.last_val_dice = metrics.get("val_dice")


register_task(SegmentationTask)
