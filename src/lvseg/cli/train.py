"""``lvseg train``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def train_command(
    data: Path = typer.Option(..., "--data", help="Dataset root in the LViT layout (Train_Folder, Val_Folder, ...)."),
    out: Path = typer.Option(..., "--out", help="Run folder: best.ckpt, last.ckpt and logs are written here."),
    model: str = typer.Option("lvit", "--model", help="Registered model name (see `lvseg info`)."),
    text_encoder: str = typer.Option("learned", "--text-encoder", help="'learned' or 'hf:<model id or local path>'."),
    text_length: Optional[int] = typer.Option(None, "--text-length", help="Tokens per report (padded/truncated)."),
    img_size: int = typer.Option(224, "--img-size", help="Model input size, a multiple of 32."),
    base_channels: Optional[int] = typer.Option(None, "--base-channels", help="Width of the first level (paper: 64)."),
    batch_size: int = typer.Option(2, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (cosine annealing with warm restarts)."),
    max_epochs: int = typer.Option(2000, "--max-epochs"),
    max_time: Optional[str] = typer.Option(None, "--max-time", help="Training time budget: minutes ('40'), '2h' or DD:HH:MM:SS."),
    patience: int = typer.Option(50, "--patience", help="Early stopping: epochs without a better validation Dice."),
    seed: int = typer.Option(0, "--seed"),
    devices: str = typer.Option("1", "--devices", help="Number of devices (processes with --strategy ddp) or 'auto'."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ..."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto (CUDA when present), cpu or gpu."),
    num_workers: int = typer.Option(0, "--num-workers", help="Data-loading worker processes."),
    augment: str = typer.Option(
        "paper", "--augment",
        help="paper (rot90 + flip or rotation, as LViT), rotate (keeps left/right and upper/lower: use it when "
        "reports name locations) or none.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from last.ckpt."),
    labeled_fraction: Optional[float] = typer.Option(
        None, "--labeled-fraction",
        help="Semi-supervised: use the masks of this seeded fraction of the training images (e.g. 0.25); "
        "the others are trained with EPI pseudo-labels and the LV loss, their masks never read.",
    ),
    labeled_list: Optional[Path] = typer.Option(
        None, "--labeled-list", help="Semi-supervised: a file naming the labeled training images, one per line."
    ),
    supervised_only: bool = typer.Option(
        False, "--supervised-only", help="With --labeled-fraction/--labeled-list: drop the unlabeled images (baseline)."
    ),
    lv_templates: Optional[Path] = typer.Option(
        None, "--lv-templates",
        help="LV-loss templates folder (LV_loss.xlsx + figN.png); default: the labeled training images.",
    ),
    epi_beta: float = typer.Option(0.8, "--epi-beta", help="EPI: P_t = beta * P_(t-1) + (1 - beta) * prediction_t."),
    unlabeled_weight: float = typer.Option(1.0, "--unlabeled-weight", help="Weight of the unlabeled losses after ramp-up."),
    warmup_epochs: float = typer.Option(
        3.0, "--warmup-epochs", help="Supervised epochs before pseudo-labels and the LV loss start (semi-supervised)."
    ),
    rampup_epochs: float = typer.Option(5.0, "--rampup-epochs", help="Epochs of sigmoid ramp-up of the unlabeled weight."),
    lv_weight: float = typer.Option(0.1, "--lv-weight", help="Weight of the LV loss in the unlabeled loss (0: off)."),
    teacher_decay: float = typer.Option(
        0.99, "--teacher-decay", help="Semi-supervised: per-step EMA decay of the teacher that predicts pseudo-labels."
    ),
    strong_view: bool = typer.Option(
        True, "--strong-view/--no-strong-view", help="Semi-supervised: perturb the unlabeled images the student sees."
    ),
) -> None:
    """Train a segmentation model on a dataset in the LViT folder layout."""
    from lvseg.training.fit import TrainConfig, train

    config = TrainConfig(
        data=data, out=out, model=model, text_encoder=text_encoder, text_length=text_length,
        img_size=img_size, base_channels=base_channels, batch_size=batch_size, lr=lr,
        max_epochs=max_epochs, max_time=max_time, patience=patience, seed=seed,
        devices=int(devices) if devices.isdigit() else devices, strategy=strategy,
        accelerator=accelerator, num_workers=num_workers, augment=augment, resume=resume,
        labeled_fraction=labeled_fraction, labeled_list=labeled_list, supervised_only=supervised_only,
        lv_templates=lv_templates, epi_beta=epi_beta, unlabeled_weight=unlabeled_weight,
        warmup_epochs=warmup_epochs, rampup_epochs=rampup_epochs, lv_weight=lv_weight,
        teacher_decay=teacher_decay, strong_view=strong_view,
    )
    result = train(config)
    if result.global_rank != 0:  # DDP: the other processes stay quiet
        return
    console = Console()
    dice = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    console.print(f"best validation Dice {dice} after {result.epochs} epochs")
    console.print(f"checkpoints: {result.best_checkpoint}, {result.last_checkpoint}")
    console.print(f"next: lvseg evaluate --checkpoint {result.best_checkpoint} --data {data} --out {out / 'eval'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
