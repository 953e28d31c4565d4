"""``lvseg evaluate``: Dice / IoU / HD95 of a checkpoint on a split, and how much it relies on the report."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from lvseg.cli import data_options
from lvseg.cli.limits import check_inference_memory
from lvseg.cli.output import console as make_console
from lvseg.cli.output import count
from lvseg.errors import LvsegError
from lvseg.files import check_output
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


def modes_for(option: str, requires_text: bool, model_name: str = "") -> list[str]:
    """The text modes to run: ``auto`` is given + shuffled for a text model and given alone otherwise. A single
    mode that changes the reports is refused for a model that reads none (it would measure nothing under another
    name); ``all`` runs, and the report says that text reliance does not apply."""
    if not requires_text and option not in ("auto", "given", "all"):
        raise LvsegError(
            f"model '{model_name}' is image-only: it reads no reports, so --text-mode {option} would give the same "
            "masks as the given reports; leave --text-mode out"
        )
    if option == "auto":
        return ["given", "shuffled"] if requires_text else ["given"]
    if option == "all":
        from lvseg.evaluation.evaluate import TEXT_MODES

        return list(TEXT_MODES)
    return [option]


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def results_table(reports: dict[str, EvaluationReport]) -> Table:
    """A rich table with one row per text mode."""
    first = next(iter(reports.values()))
    table = Table(
        title=f"{first.model_name} on {first.split} ({count(first.n_images, 'image')}, threshold {first.threshold:g})"
    )
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


def class_table(reports: dict[str, EvaluationReport]) -> Table:
    """A rich table with one row per class (and the mean over classes): Dice per text mode, IoU and HD95 given."""
    from lvseg.evaluation.classes import class_mean

    modes = list(reports)
    table = Table(title="per class")
    for column in ("class", "n", *(f"Dice ({mode})" for mode in modes), "IoU", "HD95 px"):
        table.add_column(column, justify="left" if column == "class" else "right")
    main = reports.get("given", reports[modes[0]])
    rows = [(name, str(int(values["n"]))) for name, values in main.per_class.items()]
    for name, n in rows:
        dice = [_fmt(reports[mode].per_class.get(name, {}).get("dice")) for mode in modes]
        values = main.per_class[name]
        table.add_row(name, n, *dice, _fmt(values["iou"]), _fmt(values["hd95"]))
    mean = {mode: class_mean(reports[mode].per_class) for mode in modes}
    means = mean[modes[0] if "given" not in mean else "given"]
    table.add_row("mean", "", *(_fmt(mean[mode]["dice"]) for mode in modes), _fmt(means["iou"]), _fmt(means["hd95"]))
    return table


def evaluate_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    data: Path = typer.Option(
        ..., "--data", "-d", help="Dataset root: LViT layout (Test_Folder/ ...) or the VLSM study's (anns/ ...)."
    ),
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
    classes: Optional[str] = data_options.CLASSES,
    negative_ratio: float = data_options.NEGATIVE_RATIO,
    prompt_type: Optional[str] = data_options.PROMPT_TYPE_OR_RECORDED,
    modality: Optional[str] = data_options.MODALITY_OR_RECORDED,
    split_image_folders: Optional[bool] = data_options.SPLIT_IMAGE_FOLDERS_OR_RECORDED,
    class_swap: Optional[bool] = typer.Option(
        None,
        "--class-swap/--no-class-swap",
        help="Multi-class data: also run each image with another present class's prompt (default: on for a text "
        "model on multi-class data).",
    ),
) -> None:
    """Evaluate a checkpoint on a dataset split (Dice, IoU, HD95, text reliance; per class on multi-class data,
    where an empty prediction on an empty mask scores Dice 1)."""
    from lvseg.data.formats import DataOptions, recorded_data_options
    from lvseg.evaluation.evaluate import evaluate_modes, evaluate_text_reliance
    from lvseg.inference import load_model

    if threshold is not None:
        check_threshold(threshold, "--threshold")
    check_output(out, "--out", "folder", "for metrics.json, per_image.csv and overlays")
    check_inference_memory(checkpoint, batch_size, device, "--batch-size")
    console = make_console()
    segmenter = load_model(checkpoint, device=device, backend=backend)
    modes = modes_for(text_mode.value, segmenter.requires_text, segmenter.model_name)
    options: dict[str, Any] = dict(
        modes=modes,
        split=split,
        out=out,
        batch_size=batch_size,
        seed=seed,
        n_overlays=n_overlays,
        model=segmenter,
        threshold=threshold,
        data_options=DataOptions.given_or_recorded(
            recorded_data_options(segmenter.hparams),
            classes=classes,
            negative_ratio=negative_ratio,
            prompt_type=prompt_type,
            modality=modality,
            split_image_folders=split_image_folders,
            seed=seed,
        ),
    )
    if "given" in modes and "shuffled" in modes:
        combined = evaluate_text_reliance(checkpoint, data, **options)
        reports = combined.reports
        console.print(results_table(reports))
        if combined.text_reliance is None:
            console.print(
                f"text reliance: not applicable (model '{segmenter.model_name}' reads no text: every text mode "
                "gives the same masks)",
                highlight=False,
            )
        else:
            console.print(f"text reliance = Dice(given) - Dice(shuffled) = [bold]{_fmt(combined.text_reliance)}[/]")
    else:
        reports = evaluate_modes(checkpoint, data, **options)
        console.print(results_table(reports))
    first = next(iter(reports.values()))
    if first.per_class:
        console.print(class_table(reports))
        console.print("an empty prediction on an empty mask (a class correctly absent) scores Dice 1", highlight=False)
        if class_swap is None:
            class_swap = segmenter.requires_text
        if not segmenter.requires_text:
            console.print(
                f"class swap: not applicable (model '{segmenter.model_name}' reads no text: no prompt chooses "
                "the class" + (", it has one output channel per class)" if segmenter.output_classes > 1 else ")"),
                highlight=False,
            )
            class_swap = False
    if class_swap:
        from lvseg.evaluation.class_swap import evaluate_class_swap

        swap_options = {key: options[key] for key in ("split", "out", "batch_size", "seed", "model", "threshold")}
        swap = evaluate_class_swap(checkpoint, data, data_options=options["data_options"], **swap_options)
        console.print(
            f"class swap ({count(swap.n_pairs, 'pair')}): Dice with the swapped class {_fmt(swap.follows)}, with the "
            f"original class {_fmt(swap.stays)}; reliance = [bold]{_fmt(swap.class_swap_reliance)}[/] "
            f"({out / 'class_swap.json'})"
        )
    console.print(f"metrics: {out / 'metrics.json'}", highlight=False)
    for mode, report in reports.items():
        where = report.files["per_image"].parent
        console.print(f"{mode}: per-image metrics and overlays in {where}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
