"""``lvseg tune-backend``: measure a checkpoint's inference backends on its own images and record which pass."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lvseg.cli import data_options
from lvseg.cli.output import console


def tune_backend_command(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", "-c", help="An lvseg checkpoint (.ckpt); the record is written into it."
    ),
    data: Path = typer.Option(
        ..., "--data", "-d", help="The dataset the checkpoint was trained on (any layout lvseg reads)."
    ),
    split: str = typer.Option("val", help="The split the guard runs on."),
    calibration_split: str = typer.Option("train", help="The split openvino-int8 calibrates on."),
    backends: Optional[str] = typer.Option(
        None, help="Comma-separated backends to try (default: every installed one except compile and openvino-int8)."
    ),
    int8: bool = typer.Option(False, "--int8/--no-int8", help="Also quantise to int8 with NNCF (minutes)."),
    max_images: int = typer.Option(100, min=1, help="Guard images (spread over the split)."),
    calibration_images: int = typer.Option(100, min=1, help="int8 calibration images."),
    repeats: int = typer.Option(10, min=1, help="Timed batch-1 calls per backend (median)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1."),
    classes: Optional[str] = data_options.CLASSES,
    negative_ratio: float = data_options.NEGATIVE_RATIO,
    prompt_type: Optional[str] = data_options.PROMPT_TYPE_OR_RECORDED,
    modality: Optional[str] = data_options.MODALITY_OR_RECORDED,
    split_image_folders: Optional[bool] = data_options.SPLIT_IMAGE_FOLDERS_OR_RECORDED,
) -> None:
    """Measure every backend's masks against fp32 eager on the checkpoint's own images, and its speed; record
    the result in the checkpoint, where `auto` reads it (fastest that passed)."""
    from lvseg.checkpoint import read_checkpoint_dict
    from lvseg.data.formats import DataOptions, recorded_data_options
    from lvseg.inference.tuning import tune_checkpoint

    record = tune_checkpoint(
        checkpoint,
        data,
        split=split,
        calibration_split=calibration_split,
        backends=[name.strip() for name in backends.split(",") if name.strip()] if backends else None,
        int8=int8,
        max_images=max_images,
        calibration_images=calibration_images,
        device=device,
        repeats=repeats,
        data_options=DataOptions.given_or_recorded(
            recorded_data_options(read_checkpoint_dict(checkpoint).get("hyper_parameters", {})),
            classes=classes,
            negative_ratio=negative_ratio,
            prompt_type=prompt_type,
            modality=modality,
            split_image_folders=split_image_folders,
        ),
    )
    print_backend_record(record)
    console().print(f"recorded in {checkpoint}; auto now runs {record.passed()[0]}", highlight=False)


def print_backend_record(record: object) -> None:
    """The record's table: one row per backend (guard, lowest Dice, speed, notes)."""
    from rich.table import Table

    from lvseg.backend_record import BackendRecord

    assert isinstance(record, BackendRecord)
    table = Table(title=f"Backends on {record.data} ({record.rule}), {record.measured_at}")
    rows = record.summary_rows()
    for column in rows[0] if rows else ():
        table.add_column(column, no_wrap=column != "notes")
    for row in rows:
        table.add_row(*row.values())
    out = console()
    if not out.is_terminal:
        out.width = 160  # a log file: whole backend names and notes rather than the 80 columns of no terminal
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("tune-backend")(tune_backend_command)
