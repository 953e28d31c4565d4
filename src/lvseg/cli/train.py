"""``lvseg train``: its options are the fields of :class:`lvseg.training.options.TrainConfig`."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from lvseg.training.options import TrainConfig, cli_flag, parse_lr_scales, parse_model_options


def _cli_parameters() -> list[inspect.Parameter]:
    """One typer option per CLI field of TrainConfig, with its flag, help and default."""
    hints = typing.get_type_hints(TrainConfig)
    parameters = []
    for field_ in dataclasses.fields(TrainConfig):
        meta = field_.metadata
        if not meta["cli"]:
            continue
        annotation = meta["cli_type"] or hints[field_.name]
        required = field_.default is dataclasses.MISSING and field_.default_factory is dataclasses.MISSING
        default = ... if required else (None if field_.default is dataclasses.MISSING else field_.default)
        if not required and default is None and typing.get_origin(annotation) is not list:
            annotation = Optional[meta["cli_type"] or typing.get_args(hints[field_.name])[0]]
        parameters.append(inspect.Parameter(
            field_.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
            default=typer.Option(default, *cli_flag(field_).split(" "), help=meta["help"], show_default=not required),
        ))
    return parameters


def train_command(**options: Any) -> None:
    """Train a segmentation model on a dataset in the LViT folder layout."""
    from lvseg.training.fit import train

    devices = str(options.pop("devices"))
    options["model_options"] = parse_model_options(options.pop("model_options"))
    options["lr_scales"] = parse_lr_scales(options.pop("lr_scales"))
    config = TrainConfig(**options, devices=int(devices) if devices.isdigit() else devices)
    result = train(config)
    if result.global_rank != 0:  # DDP: the other processes stay quiet
        return
    console = Console()
    dice = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    console.print(f"best validation Dice {dice} after {result.epochs} epochs")
    console.print(f"checkpoints: {result.best_checkpoint}, {result.last_checkpoint}")
    console.print(f"next: lvseg evaluate --checkpoint {result.best_checkpoint} --data {config.data} "
                  f"--out {Path(config.out) / 'eval'}")


train_command.__signature__ = inspect.Signature(_cli_parameters())  # type: ignore[attr-defined]
train_command.__annotations__ = {p.name: p.annotation for p in _cli_parameters()}


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
