"""Model verbs: ``lvseg info`` (size and cost of models) and ``lvseg import-<family>`` (official weights, one
verb per registered importer)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from lvseg.cli.output import console as make_console
from lvseg.cli.output import count
from lvseg.errors import LvsegError
from lvseg.files import check_output


def _print_one(report: dict[str, Any]) -> None:
    table = Table(title=f"model {report['model']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("parameters", f"{report['parameters']:,} ({report['parameters'] / 1e6:.2f} M)")
    table.add_row("trainable", f"{report['trainable_parameters']:,}")
    table.add_row("frozen (pretrained)", f"{report['frozen_parameters']:,}")
    table.add_row("training-only", f"{report['training_only_parameters']:,}")
    table.add_row("inference (without training-only modules)", f"{report['inference_parameters']:,}")
    table.add_row("inference, learned", f"{report['inference_learned_parameters']:,}")
    table.add_row("GFLOPs (batch 1)", f"{report['gflops']:.2f} ({report['gflops'] / 2:.2f} GMACs)")
    text_gflops = report["text_encoder_gflops"]
    if report["text_tower_in_network"]:
        text_row = "included in GFLOPs (the model runs its own text tower)"
    else:
        text_row = "not counted (give --text-encoder)" if text_gflops is None else f"{text_gflops:.2f}"
    table.add_row("text encoder GFLOPs", text_row)
    table.add_row("image input", "x".join(map(str, report["image_shape"])))
    table.add_row("text input", "x".join(map(str, report["text_shape"])) if report["text_shape"] else "none")
    for key, value in report["options"].items():
        table.add_row(f"option {key}", str(value))
    make_console().print(table)


def _print_all(reports: list[dict[str, Any]]) -> None:
    table = Table(title="registered models (text encoders not included, except a model's own text tower: *)")
    for column in ("model", "parameters (M)", "trainable (M)", "inference (M)", "GFLOPs", "reads text"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
    for report in reports:
        own_tower = "*" if report["text_tower_in_network"] else ""
        table.add_row(
            report["model"],
            f"{report['parameters'] / 1e6:.2f}",
            f"{report['trainable_parameters'] / 1e6:.2f}",
            f"{report['inference_parameters'] / 1e6:.2f}",
            f"{report['gflops']:.2f}{own_tower}",
            "yes" if report["requires_text"] else "no",
        )
    make_console().print(table)


def _print_checkpoint(path: Path, as_json: bool) -> None:
    """``lvseg info --checkpoint``: the model, its metrics and its backend record."""
    from lvseg.cli.tune import print_backend_record
    from lvseg.inference.loading import load_checkpoint_explained

    loaded = load_checkpoint_explained(path)
    record = loaded.backend_record
    if as_json:
        summary = {
            "model": loaded.model_name,
            "model_config": loaded.model.config_summary(),
            "metrics": loaded.metrics,
            "backend_record": record.to_dict() if record is not None else None,
        }
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    out = make_console()
    metrics = ", ".join(f"{key} {value:.4f}" for key, value in loaded.metrics.items()) or "none recorded"
    out.print(f"{path}: a '{loaded.model_name}' model; metrics: {metrics}", highlight=False)
    if record is None:
        out.print(
            "backends: not tuned (auto takes the default choice); run `lvseg tune-backend --checkpoint "
            f"{path} --data DATA` to measure them on its images",
            highlight=False,
        )
        return
    print_backend_record(record)
    here = "applies on this machine" if record.applies_here("cpu") else "measured on other hardware (not used here)"
    out.print(f"auto runs the fastest that passed: {', '.join(record.passed())} ({here})", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Registered model name (lvit, unet, ...)."),
        all_models: bool = typer.Option(False, "--all", help="Describe every registered model."),
        img_size: Optional[int] = typer.Option(
            None,
            help="Input size S (images are S x S), a multiple of 32 (default: each model's own, e.g. 224; "
            "352 for clipseg).",
        ),
        base_channels: Optional[int] = typer.Option(None, help="Width of the first level (default: the model's)."),
        in_channels: int = typer.Option(3, help="Image channels."),
        text_len: Optional[int] = typer.Option(
            None, "--text-length", help="Text tokens L, tokens per report (text models; default: the model's)."
        ),
        text_len_alias: Optional[int] = typer.Option(
            None, "--text-len", hidden=True, help="Old spelling of --text-length."
        ),
        text_dim: Optional[int] = typer.Option(None, help="Text feature size D (text models; default: the model's)."),
        text_encoder: Optional[str] = typer.Option(
            None,
            "--text-encoder",
            help="A pretrained text encoder (clip:..., hf:...) to load and count as frozen "
            "parameters (default: the text front end is left out).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        checkpoint: Optional[Path] = typer.Option(
            None,
            "--checkpoint",
            "-c",
            help="An lvseg checkpoint: its model, metrics and backend record (which backends passed its guard).",
        ),
    ) -> None:
        """Parameters (total, trainable, inference) and GFLOPs of one forward pass (batch 1) of a model or all;
        with --checkpoint, what a trained checkpoint holds and which inference backends passed its guard."""
        from lvseg.models import model_options
        from lvseg.models.describe import describe_all, describe_model

        if checkpoint is not None:
            _print_checkpoint(checkpoint, as_json)
            return

        if (model is None) == (not all_models):
            raise LvsegError("give --model NAME or --all")
        if text_len_alias is not None and text_len is not None and text_len_alias != text_len:
            raise LvsegError(f"--text-length {text_len} and --text-len {text_len_alias} disagree; give one")
        text_len = text_len if text_len is not None else text_len_alias
        options = {
            key: value
            for key, value in (
                ("img_size", img_size),
                ("base_channels", base_channels),
                ("in_channels", in_channels),
                ("text_len", text_len),
                ("text_dim", text_dim),
                ("text_encoder", text_encoder),
            )
            if value is not None
        }
        if all_models:
            if text_encoder is not None:
                raise LvsegError("--text-encoder describes one model: give it with --model")
            reports = describe_all(**options)
            typer.echo(json.dumps(reports, indent=2)) if as_json else _print_all(reports)
            return
        assert model is not None
        unknown = [key for key in options if key not in model_options(model) and key not in ("img_size", "in_channels")]
        if unknown:
            raise LvsegError(f"model {model!r} does not take option(s) {', '.join(unknown)}")
        report = describe_model(model, **options)
        typer.echo(json.dumps(report, indent=2)) if as_json else _print_one(report)

    register_import_verbs(app)


def _import_command(importer: Any) -> Callable[..., None]:
    """The ``lvseg import-<family>`` command of ``importer``: its source file, ``--out`` and its declared options."""

    def command(official: Path, out: Path, **options: Any) -> None:
        check_output(out, "--out", "file", "the lvseg checkpoint to write, e.g. model.ckpt")
        result = importer.convert(official, out, **options)
        console = make_console()
        console.print(f"wrote [bold]{result.output}[/] ({count(result.n_parameters, 'parameter')})")
        console.print(
            "config: "
            + json.dumps(
                {
                    key: value
                    for key, value in result.model_options.items()
                    if key != "text_encoder" or not isinstance(value, dict) or "vocab" not in value
                }
            ),
            highlight=False,
        )
        for line in [*importer.result_lines(result), *result.notes]:
            console.print(line, highlight=False)

    parameters = [
        inspect.Parameter(
            "official",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Path,
            default=typer.Argument(..., help=f"The {importer.source_description}."),
        ),
        inspect.Parameter(
            "out",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Path,
            default=typer.Option(..., "--out", "-o", help="Where to write the lvseg checkpoint."),
        ),
    ]
    for option in importer.options:
        annotation = option.type if option.default is not None else Optional[option.type]
        parameters.append(
            inspect.Parameter(
                option.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=annotation,
                default=typer.Option(option.default, option.cli_flag, help=option.help, min=option.minimum),
            )
        )
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # the options typer reads
    command.__doc__ = importer.summary
    command.__name__ = importer.verb.replace("-", "_")
    return command


def register_import_verbs(app: typer.Typer) -> None:
    """``lvseg import-<family>`` for every registered importer (:func:`lvseg.importers.list_importers`)."""
    from lvseg.importers import list_importers

    for importer in list_importers().values():
        app.command(importer.verb)(_import_command(importer))
