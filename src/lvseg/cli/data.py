"""``lvseg data``: create the embedded synthetic dataset and check dataset folders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lvseg.errors import DataValidationError, LvsegError

logger = logging.getLogger(__name__)

data_app = typer.Typer(
    rich_markup_mode=None,
    name="data",
    help="Datasets: generate the synthetic default dataset, check an LViT-layout folder.",
    no_args_is_help=True,
)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(
        ..., "--out", help="Folder to write the dataset into (empty, new, or a previous synthetic dataset)."
    ),
    n: int = typer.Option(1000, "--n", min=1, help="Number of images (70/10/20 % train/val/test)."),
    size: int = typer.Option(224, "--size", min=32, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into a non-empty folder that is not a previous synthetic dataset "
        "(its Train/Val/Test_Folder are replaced).",
    ),
) -> None:
    """Generate the synthetic chest dataset where only the report tells target opacities from distractors."""
    from lvseg.data.synth import generate_synthetic_dataset

    manifest = generate_synthetic_dataset(out, n=n, size=size, seed=seed, force=force)
    console = Console()
    counts = ", ".join(f"{folder} {count}" for folder, count in manifest["counts"].items())
    stats = manifest["stats"]
    console.print(f"wrote {n} synthetic images ({size}x{size}, seed {seed}) to {out}: {counts}", highlight=False)
    console.print(
        f"target share of opacity pixels {stats['target_pixel_fraction']:.2f}; "
        f"Dice of segmenting every opacity (image-only ceiling) {stats['all_opacities_dice']:.2f}",
        highlight=False,
    )


@data_app.command("check")
def check(
    root: Path = typer.Argument(..., help="Dataset root holding Train_Folder, Val_Folder, Test_Folder."),
    split: Optional[list[str]] = typer.Option(
        None, "--split", help="Split(s) to check (train/val/test); default: all present."
    ),
    allow_unlabeled: bool = typer.Option(False, "--allow-unlabeled", help="Accept images without a mask."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Also check that this model can read every report (e.g. c2fvl's report grammar)."
    ),
) -> None:
    """Validate an LViT-layout dataset folder and report every problem at once."""
    from lvseg.data.layout import list_splits, load_split, unreadable_reports

    splits = list(split) if split else list_splits(root)
    if not splits:
        raise LvsegError(f"no Train_Folder, Val_Folder or Test_Folder found under '{root}'")
    console = Console()
    problems: list[str] = []
    reader = _report_reader(model) if model else None
    for name in splits:
        try:
            samples = load_split(root, name, require_masks=not allow_unlabeled)
        except DataValidationError as error:
            problems.extend(f"{name}: {problem}" for problem in error.problems)
            continue
        labeled = sum(1 for sample in samples if sample.mask_path is not None)
        console.print(f"{name}: {len(samples)} images, {labeled} with masks", highlight=False)
        if reader is not None:
            problems.extend(unreadable_reports(reader, {name: samples}))
    if problems:
        raise DataValidationError(problems, where=str(root))
    console.print(f"ok: {root}", highlight=False)


def _report_reader(name: str) -> object:
    """Model ``name`` with its default options, built on the meta device: only its text front end is used."""
    import torch

    from lvseg.models import create_model
    from lvseg.models.pretrained import weights_from

    with torch.device("meta"), weights_from("nowhere"):  # no pretrained weights are read to check reports
        return create_model(name)


def prompts(
    data: Path = typer.Option(
        ..., "--data", help="Dataset root in the LViT layout, with img/ and labelcol/ per split."
    ),
    class_name: str = typer.Option(..., "--class-name", help="The target's name, e.g. polyp."),
    modality: str = typer.Option(..., "--modality", help="The images' modality, e.g. 'endoscopy image'."),
    style: str = typer.Option("p6", "--style", help="p1 (class) ... p6 (count, size, location), or random."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random style's per-image choice."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing text tables."),
) -> None:
    """Write a report for every image from its mask (count, size, location), into each split's text table."""
    from lvseg.data.prompts import write_prompts

    counts = write_prompts(data, class_name, modality, style=style, seed=seed, overwrite=overwrite)
    console = Console()
    for split, count in counts.items():
        console.print(f"{split}: {count} reports written", highlight=False)
    console.print(f"next: lvseg data check {data}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group and ``lvseg prompts`` to the root app."""
    app.add_typer(data_app, name="data")
    app.command("prompts")(prompts)
