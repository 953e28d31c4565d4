"""``lvseg data``: create the embedded synthetic dataset and check dataset folders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from lvseg.cli import data_options
from lvseg.cli.output import console as make_console
from lvseg.cli.output import count, lvseg_command
from lvseg.errors import DataValidationError, LvsegError

logger = logging.getLogger(__name__)

data_app = typer.Typer(
    rich_markup_mode=None,
    name="data",
    help="Datasets: generate the synthetic sets, check a dataset folder (LViT or VLSM-study layout).",
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
    console = make_console()
    counts = ", ".join(f"{folder} {number}" for folder, number in manifest["counts"].items())
    stats = manifest["stats"]
    console.print(
        f"wrote {count(n, 'synthetic image')} ({size}x{size}, seed {seed}) to {out}: {counts}", highlight=False
    )
    console.print(
        f"target share of opacity pixels {stats['target_pixel_fraction']:.2f}; "
        f"Dice of segmenting every opacity (image-only ceiling) {stats['all_opacities_dice']:.2f}",
        highlight=False,
    )


@data_app.command("synth-classes")
def synth_classes(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset into (new or empty)."),
    n: int = typer.Option(300, "--n", min=3, help="Number of images (70/10/20 % train/val/test)."),
    size: int = typer.Option(224, "--size", min=32, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    layout: str = typer.Option("lvit", "--layout", help="lvit (label maps + classes.csv) or vlsm (the study's)."),
) -> None:
    """Generate the synthetic multi-class set (disc, ring, bar: alike but for shape; the prompt must choose)."""
    from lvseg.data.synth_classes import MODALITY, generate_multiclass_dataset

    manifest = generate_multiclass_dataset(out, n=n, size=size, seed=seed, layout=layout)
    console = make_console()
    counts = ", ".join(f"{split} {number}" for split, number in manifest["counts"].items())
    console.print(f"wrote {count(n, 'synthetic image')} ({layout} layout) to {out}: {counts}", highlight=False)
    console.print(
        f"next: {lvseg_command()} train --data {out} --modality '{MODALITY}' --out runs/classes", highlight=False
    )


@data_app.command("check")
def check(
    root: Path = typer.Argument(
        ..., help="Dataset root: Train_Folder, Val_Folder, Test_Folder (LViT) or images/, masks/, anns/ (VLSM study)."
    ),
    split: Optional[list[str]] = typer.Option(
        None, "--split", help="Split(s) to check (train/val/test); default: all present."
    ),
    allow_unlabeled: bool = typer.Option(False, "--allow-unlabeled", help="Accept images without a mask."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Also check that this model can read every report (e.g. c2fvl's report grammar)."
    ),
    classes: Optional[str] = data_options.CLASSES,
    negative_ratio: float = data_options.NEGATIVE_RATIO,
    prompt_type: str = data_options.PROMPT_TYPE,
    modality: str = data_options.MODALITY,
    split_image_folders: Optional[bool] = data_options.SPLIT_IMAGE_FOLDERS,
) -> None:
    """Validate a dataset folder (either layout; label maps with their class table) and report every problem
    at once."""
    from lvseg.data.formats import DataOptions, class_names, detect_layout, load_dataset_split
    from lvseg.data.layout import TRAINING_SPLITS, unreadable_reports

    layout = detect_layout(root)
    present = layout.list_splits(root)
    # Without --split, the dataset is checked as `lvseg train` reads it: its training splits must exist.
    splits = list(split) if split else [*TRAINING_SPLITS, *(name for name in present if name not in TRAINING_SPLITS)]
    if not present and not split:
        raise LvsegError(f"no split found under '{root}' ({layout.name} layout: {layout.description})")
    options = DataOptions(classes, negative_ratio, prompt_type, modality, split_image_folders)
    console = make_console()
    console.print(f"{root}: {layout.name} layout", highlight=False)
    problems: list[str] = []
    reader = _report_reader(model) if model else None
    for name in splits:
        try:
            samples = load_dataset_split(root, name, options, require_masks=not allow_unlabeled)
        except DataValidationError as error:
            needed = (
                f" (lvseg train needs the {' and '.join(TRAINING_SPLITS)} splits; check the others alone with "
                f"--split {' --split '.join(present)})"
                if name not in present and not split and present
                else ""
            )
            problems.extend(f"{name}: {problem}{needed}" for problem in error.problems)
            continue
        labeled = sum(1 for sample in samples if sample.mask_path is not None)
        names = class_names(samples)
        if names:
            images = len({sample.image_path for sample in samples})
            per_class = ", ".join(f"{cls} {sum(1 for sample in samples if sample.class_name == cls)}" for cls in names)
            console.print(
                f"{name}: {count(len(samples), 'sample')} of {count(images, 'image')} ({per_class})", highlight=False
            )
        else:
            console.print(f"{name}: {count(len(samples), 'image')}, {labeled} with masks", highlight=False)
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
    console = make_console()
    for split, number in counts.items():
        console.print(f"{split}: {count(number, 'report')} written", highlight=False)
    console.print(f"next: {lvseg_command()} data check {data}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group and ``lvseg prompts`` to the root app."""
    app.add_typer(data_app, name="data")
    app.command("prompts")(prompts)
