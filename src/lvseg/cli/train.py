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
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable rotation/flip augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from last.ckpt."),
) -> None:
    """Train a segmentation model on a dataset in the LViT folder layout."""
    from lvseg.training.fit import TrainConfig, train

    config = TrainConfig(
        data=data, out=out, model=model, text_encoder=text_encoder, text_length=text_length,
        img_size=img_size, base_channels=base_channels, batch_size=batch_size, lr=lr,
        max_epochs=max_epochs, max_time=max_time, patience=patience, seed=seed,
        devices=int(devices) if devices.isdigit() else devices, strategy=strategy,
        accelerator=accelerator, num_workers=num_workers, augment=not no_augment, resume=resume,
    )
    result = train(config)
    console = Console()
    dice = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    console.print(f"best validation Dice {dice} after {result.epochs} epochs")
    console.print(f"checkpoints: {result.best_checkpoint}, {result.last_checkpoint}")
    console.print(f"next: lvseg evaluate --checkpoint {result.best_checkpoint} --data {data} --out {out / 'eval'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
