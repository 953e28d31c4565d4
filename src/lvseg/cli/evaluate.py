"""``lvseg evaluate``: Dice / IoU / HD95 of a checkpoint on a split, and how much it relies on the report."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from lvseg.inference.backend_choice import BACKEND_HELP, CHECKPOINT_HELP
from lvseg.inference.threshold import THRESHOLD_HELP, check_threshold

if TYPE_CHECKING:  # the evaluation stack (MONAI, Lightning) loads only when a command runs
    from lvseg.evaluation.evaluate import EvaluationReport


class TextModeOption(str, Enum):
    auto = "auto"
    given = "given"
    shuffled = "shuffled"
    empty = "empty"
    all = "all"


def modes_for(option: str, requires_text: bool) -> list[str]:
    """The text modes to run: ``auto`` is given + shuffled for a text model and given alone otherwise."""
    if option == "auto":
        return ["given", "shuffled"] if requires_text else ["given"]
    if option == "all":
        from lvseg.evaluation.evaluate import TEXT_MODES

        return list(TEXT_MODES)
    return [option]


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def results_table(reports: dict[str, EvaluationReport]) -> Table:
    """A rich table with one row per text mode."""
    first = next(iter(reports.values()))
    table = Table(title=f"{first.model_name} on {first.split} ({first.n_images} images, threshold {first.threshold:g})")
    for column in ("text", "Dice", "IoU", "Dice (orig.)", "IoU (orig.)", "HD95 px", "HD95 undefined"):
        table.add_column(column, justify="left" if column == "text" else "right")
    for mode, report in reports.items():
        means = report.means
        table.add_row(
            mode,
            _fmt(means["dice"]),
            _fmt(means["iou"]),
            _fmt(means["dice_original"]),
            _fmt(means["iou_original"]),
            _fmt(means["hd95"]),
            str(report.hd95_undefined),
        )
    return table


def evaluate_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root in the LViT layout (Test_Folder/ ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, per_image.csv and overlays."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    text_mode: TextModeOption = typer.Option(
        TextModeOption.auto,
        "--text-mode",
        help="given, shuffled, empty, all; auto = given and shuffled for a text model, given for an image model.",
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: CUDA if available)."),
    n_overlays: int = typer.Option(4, "--overlays", min=0, help="Best and worst cases to draw per mode."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffled-text permutation."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
) -> None:
    """Evaluate a checkpoint on a dataset split (Dice, IoU, HD95, text reliance)."""
    from lvseg.evaluation.evaluate import evaluate_modes, evaluate_text_reliance
    from lvseg.inference import load_model

    if threshold is not None:
        check_threshold(threshold, "--threshold")
    console = Console()
    segmenter = load_model(checkpoint, device=device, backend=backend)
    modes = modes_for(text_mode.value, segmenter.requires_text)
    options: dict[str, Any] = dict(
        modes=modes,
        split=split,
        out=out,
        batch_size=batch_size,
        seed=seed,
        n_overlays=n_overlays,
        model=segmenter,
        threshold=threshold,
    )
    if "given" in modes and "shuffled" in modes:
        combined = evaluate_text_reliance(checkpoint, data, **options)
        reports = combined.reports
        console.print(results_table(reports))
        console.print(f"text reliance = Dice(given) - Dice(shuffled) = [bold]{_fmt(combined.text_reliance)}[/]")
    else:
        reports = evaluate_modes(checkpoint, data, **options)
        console.print(results_table(reports))
    console.print(f"metrics: {out / 'metrics.json'}", highlight=False)
    for mode, report in reports.items():
        where = report.files["per_image"].parent
        console.print(f"{mode}: per-image metrics and overlays in {where}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
