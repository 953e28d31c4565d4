"""``lvseg train``: its options are the fields of :class:`lvseg.training.options.TrainConfig`.

The text-encoder kinds and their options (the registry of :mod:`lvseg.text`) are the epilog of ``--help``. Old
spellings of a flag (:data:`HIDDEN_ALIASES`) keep working, hidden from the help.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from lvseg.cli.output import console as make_console
from lvseg.cli.output import count, lvseg_command
from lvseg.errors import LvsegError
from lvseg.text import parse_option_items, text_encoder_help
from lvseg.training.options import TrainConfig, check_train_config, cli_flag, parse_lr_scales, parse_model_options

if TYPE_CHECKING:  # Lightning loads only when a run starts
    from lvseg.training.fit import TrainResult

#: Old flags still accepted, hidden from ``--help``: {TrainConfig field: (parameter name, old flag)}.
HIDDEN_ALIASES: dict[str, tuple[str, str]] = {"text_length": ("text_len_alias", "--text-len")}


def _cli_parameters() -> list[inspect.Parameter]:
    """One typer option per CLI field of TrainConfig, with its flag, help and default, plus the hidden aliases."""
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
            inner = meta["cli_type"] or typing.get_args(hints[field_.name])[0]
            annotation = Optional[inner]  # typer reads it at runtime: Optional, not `X | None`
        parameters.append(
            inspect.Parameter(
                field_.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=typer.Option(
                    default, *cli_flag(field_).split(" "), help=meta["help"], show_default=not required
                ),
            )
        )
        if field_.name in HIDDEN_ALIASES:
            parameters.append(_alias_parameter(field_, annotation))
    return parameters


def _alias_parameter(field_: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The hidden option of ``field_``'s old flag (no default of its own: an unset alias is None)."""
    name, flag = HIDDEN_ALIASES[field_.name]
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=typer.Option(None, flag, hidden=True, help=f"Old spelling of {cli_flag(field_)}."),
    )


def merge_aliases(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with each hidden alias's value moved to its field; both given with different values is an
    error naming both flags."""
    by_name = {field_.name: field_ for field_ in dataclasses.fields(TrainConfig)}
    for field_name, (name, flag) in HIDDEN_ALIASES.items():
        value = options.pop(name, None)
        if value is None:
            continue
        current = options.get(field_name)
        if current is not None and current != value:
            raise LvsegError(
                f"{cli_flag(by_name[field_name])} {current} and {flag} {value} disagree; give one "
                f"(both spell the same option)"
            )
        options[field_name] = value
    return options


def train_command(**options: Any) -> None:
    """Train a segmentation model on a dataset in the LViT folder layout."""
    from lvseg.training.fit import train

    options = merge_aliases(options)
    devices = str(options.pop("devices"))
    options["model_options"] = parse_model_options(options.pop("model_options"))
    options["text_options"] = parse_option_items(options.pop("text_options"), flag="--text-option")
    options["lr_scales"] = parse_lr_scales(options.pop("lr_scales"))
    config = TrainConfig(**options, devices=int(devices) if devices.isdigit() else devices)
    check_train_config(config, refuse_unused_text_options=True)
    result = train(config)
    if result.global_rank != 0:  # DDP: the other processes stay quiet
        return
    console = make_console()
    dice = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    console.print(f"best validation Dice {dice} after {count(result.epochs, 'epoch')}", highlight=False)
    if result.phases is not None:
        phases = result.phases

        def _dice(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        console.print(
            f"supervised phase best {_dice(phases['supervised_best_val_dice'])}, semi-supervised phase best "
            f"{_dice(phases['semi_best_val_dice'])}: best.ckpt is from the {phases['best_checkpoint_phase']} phase"
        )
    checkpoints = written_checkpoints(config, result)
    console.print(f"checkpoints: {', '.join(map(str, checkpoints))}", highlight=False)
    console.print(
        f"next: {lvseg_command()} evaluate --checkpoint {checkpoints[0]} --data {config.data} "
        f"--out {Path(config.out) / 'eval'}",
        highlight=False,
    )


def written_checkpoints(config: TrainConfig, result: TrainResult) -> list[Path]:
    """The run's checkpoints that exist, best first, each once and named under ``--out`` as the user gave it;
    none written (training stopped before its first validation) is an :class:`LvsegError`."""
    out = Path(config.out)
    named = [out / Path(path).name for path in (result.best_checkpoint, result.last_checkpoint)]
    existing = [path for path in dict.fromkeys(named) if path.is_file()]
    if not existing:
        if config.max_time:
            why = f"--max-time {config.max_time} ran out before the first epoch was validated; give a longer --max-time"
        else:
            why = "training stopped before the first epoch was validated"
        raise LvsegError(f"no checkpoint was written in '{out}': {why}")
    return existing


train_command.__signature__ = inspect.Signature(_cli_parameters())  # type: ignore[attr-defined]
train_command.__annotations__ = {p.name: p.annotation for p in _cli_parameters()}


def register(app: typer.Typer) -> None:
    """Add ``lvseg train``; its epilog lists the text-encoder kinds registered by then."""
    app.command("train", epilog=text_encoder_help())(train_command)
