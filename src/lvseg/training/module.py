"""The Lightning module that trains any registered network with any text encoder."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from lvseg.evaluation.metrics import binarize, dice_iou_per_image
from lvseg.models import create_model
from lvseg.training.checkpoint import FORMAT_VERSION
from lvseg.training.losses import DiceBCELoss


class SegmentationTask(L.LightningModule):
    """Supervised training of ``create_model(model_name, **model_options)``.

    Batches are dicts from :class:`lvseg.data.dataset.SegmentationDataset`: ``image`` (B, C, H, W),
    ``mask`` (B, 1, H, W), ``text`` (list of B strings). Logged: ``train_loss``, ``val_loss``,
    ``val_dice`` and ``val_iou`` (per-image means at threshold 0.5, the LViT paper's metric).
    """

    def __init__(
        self,
        model_name: str,
        model_options: dict[str, Any],
        text_encoder: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        restart_epochs: int = 10,
        min_lr: float = 1e-4,
        **extra: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = create_model(model_name, **model_options)
        self.text_encoder: nn.Module | None = None
        if text_encoder is not None and getattr(self.net, "requires_text", False):
            from lvseg.text import text_encoder_from_config

            self.text_encoder = text_encoder_from_config(text_encoder)
        self.loss = DiceBCELoss()
        self.best_val_dice: float | None = None
        self.last_val_dice: float | None = None

    def encode_text(self, texts: list[str]) -> torch.Tensor | None:
        """Reports -> (B, L, D) token features on this module's device, or None for image-only models."""
        if self.text_encoder is None:
            return None
        return self.text_encoder(list(texts)).tokens.to(self.device)

    def forward(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """images (B, C, H, W), texts: B strings -> logits (B, n_classes, H, W)."""
        return self.net(images, self.encode_text(texts))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"], batch["text"])
        loss = self.loss(logits, batch["mask"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["text"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"], batch["text"])
        batch_size = len(batch["text"])
        dice, iou = dice_iou_per_image(binarize(torch.sigmoid(logits.float())), batch["mask"])
        self.log("val_loss", self.loss(logits, batch["mask"]), batch_size=batch_size, sync_dist=True)
        self.log("val_dice", dice.mean(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val_iou", iou.mean(), batch_size=batch_size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val_dice")
        if value is not None and not self.trainer.sanity_checking:
            value = float(value)
            self.last_val_dice = value
            if self.best_val_dice is None or value > self.best_val_dice:
                self.best_val_dice = value

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(
            (p for p in self.parameters() if p.requires_grad),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=self.hparams.restart_epochs, eta_min=min(self.hparams.min_lr, self.hparams.lr)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = dict(self.hparams)
        # val_dice: this checkpoint's own epoch (best.ckpt: the best one); best_val_dice: the run's best so far.
        metrics = {}
        if self.last_val_dice is not None:
            metrics["val_dice"] = self.last_val_dice
        if self.best_val_dice is not None:
            metrics["best_val_dice"] = self.best_val_dice
        checkpoint["lvseg"] = {"format": FORMAT_VERSION, "metrics": metrics}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        metrics = checkpoint.get("lvseg", {}).get("metrics", {})
        self.best_val_dice = metrics.get("best_val_dice", metrics.get("val_dice"))
        self.last_val_dice = metrics.get("val_dice")
