"""The command-line options of multi-class data (:class:`lvseg.data.formats.DataOptions`), shared by the
verbs that read a dataset without a training config (``lvseg data check``, ``lvseg evaluate``; ``lvseg train``
generates its own from :class:`~lvseg.training.options.TrainConfig`)."""

from __future__ import annotations

import typer

CLASSES = typer.Option(
    None, "--classes", help="Label maps: VALUE=NAME,... (default: classes.csv at the data root when present)."
)
NEGATIVE_RATIO = typer.Option(
    1.0, "--negative-ratio", min=0.0, max=1.0, help="Label maps: share of absent (image, class) pairs used."
)
PROMPT_TYPE = typer.Option("random", "--prompt-type", help="Multi-class prompts: p0 ... p9 or random.")
MODALITY = typer.Option("image", "--modality", help="Label maps: the modality in written prompts.")
SPLIT_IMAGE_FOLDERS = typer.Option(
    None, "--split-image-folders/--no-split-image-folders", help="VLSM layout: images/<split>/ (default: auto)."
)

# The same options for the verbs that read a checkpoint's data (lvseg evaluate, lvseg tune-backend): unset, they
# are what training recorded (lvseg.data.formats.RECORDED_DATA_OPTIONS).
PROMPT_TYPE_OR_RECORDED = typer.Option(
    None, "--prompt-type", help="Multi-class prompts: p0 ... p9 or random (default: training's, else random)."
)
MODALITY_OR_RECORDED = typer.Option(
    None, "--modality", help="Label maps: the modality in written prompts (default: training's, else image)."
)
SPLIT_IMAGE_FOLDERS_OR_RECORDED = typer.Option(
    None,
    "--split-image-folders/--no-split-image-folders",
    help="VLSM layout: images/<split>/ (default: training's, else auto).",
)
