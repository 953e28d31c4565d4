"""Every option of a training run, described once: :class:`TrainConfig`.

Each field carries its command-line flag, help line and allowed range in its metadata. ``lvseg train``
builds its options from these fields (:func:`lvseg.cli.train.train_command`), :func:`check_train_config`
validates a config before any work starts (listing every bad option at once), and the semi-supervised
task's hyperparameters are the fields of group ``"semi"`` (:data:`SEMI_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from lvseg.data.formats import PROMPT_TYPES
from lvseg.data.transforms import AUGMENTATION_MODES
from lvseg.errors import LvsegError, first_line
from lvseg.files import output_problems
from lvseg.memory import (
    DEFAULT_FIRST_LEVEL_CHANNELS,
    DEFAULT_TOKEN_FEATURES,
    available_memory,
    exceeds,
    format_bytes,
    image_batch_bytes,
    text_bytes,
)
from lvseg.recipes import DEFAULT_RECIPE, RECIPE_FIELDS, RECIPES, describe_recipe, resolve_recipe
from lvseg.text import expected_specs, text_encoder_problems
from lvseg.training.optim import LR_SCHEDULES, MULTISTEP_NEEDS_MILESTONES, OPTIMIZERS, schedule_help

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    group: str = "train",
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
    cli_type: type | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """A dataclass field with its CLI flag (default ``--field-name``), help line and allowed values.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones; ``cli=False``
    keeps an option out of ``lvseg train`` (library use only); ``cli_type`` is the type the CLI parses
    when the field's own type is a union.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "group": group,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "choices": choices,
        "cli": cli,
        "cli_type": cli_type,
    }
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    if default is _MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every option of a training run; defaults follow the LViT paper (batch 2, Adam 1e-3, ...)."""

    data: Path = option(
        help="Dataset root: the LViT layout (Train_Folder, Val_Folder, ...; label maps with classes.csv or "
        "--classes) or the VLSM study's (images/, masks/, anns/{train,val,test}.json)."
    )
    out: Path = option(help="Run folder: best.ckpt, last.ckpt and logs are written here.")
    model: str = option("lvit", "Registered model name (see `lvseg info --all`).")
    text_encoder: str | None = option(
        None,
        f"Text encoder of text models, KIND[:SOURCE][,NAME=VALUE...]: {expected_specs()}, e.g. "
        "'clip:openai/clip-vit-base-patch32,eof_padding=false' (the kinds and their options are listed below; "
        "default: the model's own, e.g. 'learned' for lvit, 'clip' for reclmis; c2fvl reads its report vector).",
        cli_type=str,
    )
    text_length: int | None = option(
        None, "Tokens per report (padded/truncated; the text encoder's max_length; default: the encoder's).", minimum=1
    )
    text_options: dict[str, Any] = option(
        help="An option of the text encoder as NAME=VALUE (repeatable; added to those of --text-encoder, or of the "
        "model's own encoder), e.g. --text-option eof_padding=false.",
        flag="--text-option",
        cli_type=list[str],
        default_factory=dict,
    )
    img_size: int | None = option(
        None,
        "Model input size, a multiple of 32 (default: the model's own; `lvseg info --all` lists them).",
        cli_type=int,
    )
    in_channels: int = option(3, "Image channels the model reads (gray images are replicated).", minimum=1)
    base_channels: int | None = option(None, "Width of the first level (paper: 64).", minimum=1)
    model_options: dict[str, Any] = option(
        help="A further model option as NAME=VALUE (repeatable; VALUE read as JSON when it is, e.g. 0.2 or true, "
        "else as text), e.g. --model-option unparsable_reports=zero for c2fvl.",
        flag="--model-option",
        cli_type=list[str],
        default_factory=dict,
    )
    recipe: str | None = option(
        None,
        "Training preset: "
        + "; ".join(f"{name} ({describe_recipe(values)})" for name, values in RECIPES.items())
        + ". Default: the model's own. Options given below override it.",
        choices=tuple(RECIPES),
        cli_type=str,
    )
    batch_size: int | None = option(None, "Images per training step (default: the recipe's).", minimum=1)
    optimizer: str | None = option(
        None,
        f"{' or '.join(OPTIMIZERS)} (default: the recipe's).",
        group="optim",
        choices=tuple(OPTIMIZERS),
        cli_type=str,
    )
    lr: float | None = option(None, "Learning rate (default: the recipe's).", group="optim", above=0.0)
    weight_decay: float | None = option(None, "Weight decay (default: the recipe's).", group="optim", minimum=0.0)
    lr_schedule: str | None = option(
        None, f"{schedule_help()}; default: the recipe's.", group="optim", choices=tuple(LR_SCHEDULES), cli_type=str
    )
    lr_scales: dict[str, float] = option(
        help="Learning-rate factor of a parameter group the model declares, as GROUP=FACTOR (repeatable; default: "
        "the recipe's, else the model's), e.g. --lr-scale towers=0.1.",
        flag="--lr-scale",
        group="optim",
        cli_type=list[str],
        default_factory=dict,
    )
    lr_milestones: list[int] = option(
        help="Epoch after which the multistep schedule divides the learning rate by 10 (repeatable; default: the "
        "recipe's), e.g. --lr-milestone 35.",
        flag="--lr-milestone",
        group="optim",
        cli_type=list[int],
        default_factory=list,
    )
    restart_epochs: int = option(
        10, "Epochs of the first cosine-annealing cycle (warm restarts, T_0).", group="optim", minimum=1
    )
    min_lr: float = option(1e-4, "Lowest learning rate of the cosine annealing.", group="optim", minimum=0.0)
    grad_clip: float | None = option(
        None, "Clip the gradient norm to this value (0: off; default: the recipe's).", minimum=0.0
    )
    max_epochs: int = option(2000, "Maximum number of epochs.", minimum=1)
    max_time: str | None = option(None, "Training time budget: minutes ('40'), '2h' or DD:HH:MM:SS.")
    patience: int | None = option(
        None, "Early stopping: epochs without a better validation Dice (default: the recipe's).", minimum=1
    )
    seed: int = option(0, "Random seed (data order, augmentation, initialisation).", minimum=0)
    devices: int | str = option("1", "Number of devices (processes with --strategy ddp) or 'auto'.", cli_type=str)
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_spawn, ...")
    accelerator: str = option("auto", "auto (CUDA when present), cpu or gpu.")
    precision: str | None = option(
        None,
        "Lightning precision (default: bf16/fp16 mixed on CUDA, 32-true on CPU; bf16-mixed uses the bf16 "
        "units of CPUs with AVX-512 bf16 or AMX).",
    )
    channels_last: bool = option(
        False,
        "Channels-last memory layout for images and weights (faster convolutions with bf16 on such CPUs and on GPUs).",
        flag="--channels-last/--no-channels-last",
    )
    compile: bool = option(
        False,
        "torch.compile the network for training (its text front end stays eager; the first steps compile, "
        "which takes minutes on a CPU). Not with semi-supervised training.",
        flag="--compile/--no-compile",
    )
    num_workers: int = option(0, "Data-loading worker processes.", minimum=0)
    augment: str = option(
        "paper",
        "paper (rot90 + flip or rotation, as LViT), rotate (keeps left/right and upper/lower: use it when "
        "reports name locations) or none.",
        choices=AUGMENTATION_MODES,
    )
    # Multi-class data (lvseg.data.formats.DataOptions): one (image, prompt, binary mask) sample per structure.
    classes: str | None = option(
        None,
        "Label maps: the class of each mask value, e.g. '1=liver,2=kidney' (default: classes.csv at the data "
        "root when present; without either, masks are binary).",
        group="data",
        cli_type=str,
    )
    negative_ratio: float = option(
        1.0,
        "Label maps: share of (image, absent class) pairs kept as negative samples (empty mask, the class's prompt).",
        group="data",
        minimum=0.0,
        maximum=1.0,
    )
    prompt_type: str = option(
        "random",
        "Prompt of multi-class samples: p0 (empty) ... p9 of the VLSM study's records, p0-p6 written by lvseg for "
        "label maps, or random (a pK, K >= 1, drawn at each training access).",
        group="data",
        choices=PROMPT_TYPES,
    )
    modality: str = option(
        "image", "Label maps: the modality written in per-class prompts, e.g. 'CT slice'.", group="data"
    )
    split_image_folders: bool | None = option(
        None,
        "VLSM layout: images in images/<split>/ (default: when that folder exists).",
        flag="--split-image-folders/--no-split-image-folders",
        group="data",
        cli_type=bool,
    )
    balance_classes: bool = option(
        False,
        "Multi-class data: draw training samples so that every class is seen equally often.",
        flag="--balance-classes/--no-balance-classes",
        group="data",
    )
    resume: bool = option(False, "Continue the interrupted run in --out from last.ckpt.")
    tune_backends: bool = option(
        True,
        "When training ends, measure the inference backends on the validation images and record in best.ckpt "
        "which pass the accuracy guard (auto then runs the fastest of them; int8: lvseg tune-backend --int8).",
        flag="--tune-backends/--no-tune-backends",
    )
    progress_bar: bool = option(True, "Show Lightning's progress bar.", cli=False)
    limit_train_batches: int | float | None = option(None, "Batches per epoch (Lightning).", cli=False)
    # Semi-supervised training (lvseg.training.semi): active when labeled_fraction < 1 or labeled_list is set.
    labeled_fraction: float | None = option(
        None,
        "Semi-supervised: use the masks of this seeded fraction of the training images (e.g. 0.25); the "
        "others are trained with EPI pseudo-labels and the LV loss, their masks never read.",
        above=0.0,
        maximum=1.0,
    )
    labeled_list: Path | None = option(
        None, "Semi-supervised: a file naming the labeled training images, one per line."
    )
    supervised_only: bool = option(
        False, "With --labeled-fraction/--labeled-list: drop the unlabeled images (the supervised baseline)."
    )
    lv_templates: Path | None = option(
        None, "LV-loss templates folder (LV_loss.xlsx + figN.png); default: the labeled training images."
    )
    epi_beta: float = option(
        0.8, "EPI: P_t = beta * P_(t-1) + (1 - beta) * prediction_t.", group="semi", minimum=0.0, below=1.0
    )
    unlabeled_weight: float = option(1.0, "Weight of the unlabeled losses after ramp-up.", group="semi", minimum=0.0)
    warmup_epochs: float | None = option(
        None,
        "Semi-supervised: epochs of the supervised phase on the labeled images before pseudo-labels and the LV "
        "loss start from its best checkpoint (default: until the supervised phase stops improving for --patience "
        "epochs, which also ends it when that comes first; 0: from the first step).",
        group="semi",
        minimum=0.0,
        cli_type=float,
    )
    rampup_epochs: float = option(5.0, "Epochs of sigmoid ramp-up of the unlabeled weight.", group="semi", minimum=0.0)
    pseudo_confidence: float = option(
        0.9,
        "Semi-supervised: pseudo-label pixels supervise only where the teacher's averaged probability is >= this "
        "or <= 1 - this (0.5: every pixel).",
        group="semi",
        minimum=0.5,
        below=1.0,
    )
    report_filter: bool = option(
        True,
        "Semi-supervised: drop pseudo-label regions in a lung or zone the image's report does not name, and "
        "beyond the report's count of areas (chest reports in the QaTa-COV19 grammar; other reports filter nothing). "
        "On by default: it lifted semi-supervised test Dice by 16 points (n=200, 3 seeds) on the synthetic chest set "
        "(benchmarks/RESULTS.md).",
        flag="--report-filter/--no-report-filter",
        group="semi",
    )
    lv_weight: float = option(0.1, "Weight of the LV loss in the unlabeled loss (0: off).", group="semi", minimum=0.0)
    teacher_decay: float = option(
        0.99,
        "Semi-supervised: per-step EMA decay of the teacher that predicts pseudo-labels.",
        group="semi",
        minimum=0.0,
        below=1.0,
    )
    strong_view: bool = option(
        True,
        "Semi-supervised: perturb the unlabeled images the student sees.",
        flag="--strong-view/--no-strong-view",
        group="semi",
    )


#: What an unset recipe field becomes when neither ``--recipe`` nor the model says otherwise.
RECIPE_DEFAULTS: dict[str, Any] = dict(RECIPES[DEFAULT_RECIPE])


def model_recipe(model: str) -> dict[str, Any]:
    """The full recipe of a registered model (its declared ``recipe``, :func:`lvseg.recipes.resolve_recipe`)."""
    from lvseg.models import model_class

    return resolve_recipe(model_class(model).recipe)


def with_model_recipe(config: TrainConfig) -> TrainConfig:
    """``config`` with every unset recipe field (``None``) taken from ``--recipe``, else the model's recipe, and an
    unset ``img_size`` from the model's own default."""
    from lvseg.models import model_class

    recipe = resolve_recipe(config.recipe) if config.recipe else model_recipe(config.model)
    unset = {name: recipe[name] for name in RECIPE_FIELDS if getattr(config, name) is None}
    if config.img_size is None:
        unset["img_size"] = model_class(config.model).default_img_size
    if not config.lr_scales and recipe.get("lr_scales"):
        unset["lr_scales"] = dict(recipe["lr_scales"])
    milestones = list(config.lr_milestones or recipe.get("lr_milestones") or [])
    schedule = config.lr_schedule if config.lr_schedule is not None else recipe["lr_schedule"]
    if schedule == "multistep" and not milestones:
        raise LvsegError(MULTISTEP_NEEDS_MILESTONES)
    return dataclasses.replace(config, **unset, lr_milestones=milestones)


#: Fields of :class:`TrainConfig` that are hyperparameters of the optimiser and of the semi-supervised task.
OPTIM_OPTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == "optim"
)
SEMI_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == "semi")


def option_defaults(names: tuple[str, ...]) -> dict[str, Any]:
    """The defaults of the named :class:`TrainConfig` fields (a recipe field's: :data:`RECIPE_DEFAULTS`)."""
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}

    def default(field_: dataclasses.Field) -> Any:
        return field_.default_factory() if field_.default_factory is not _MISSING else field_.default

    return {name: RECIPE_DEFAULTS[name] if name in RECIPE_DEFAULTS else default(by_name[name]) for name in names}


def parse_lr_scales(items: list[str] | None) -> dict[str, float]:
    """``["towers=0.1", ...]`` from ``--lr-scale`` -> {group: factor}; every bad item is named at once."""
    scales: dict[str, float] = {}
    problems = []
    for item in items or []:
        name, separator, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not separator or not name.strip() or not math.isfinite(factor) or factor < 0:
            problems.append(f"--lr-scale {item!r} is not GROUP=FACTOR with a factor >= 0")
        else:
            scales[name.strip()] = factor
    if problems:
        raise LvsegError("; ".join(problems))
    return scales


def parse_model_options(items: list[str] | None) -> dict[str, Any]:
    """``["name=value", ...]`` from ``--model-option`` -> {name: value}; values are JSON when they parse."""
    import json

    options: dict[str, Any] = {}
    for item in items or []:
        name, separator, value = item.partition("=")
        if not separator or not name.strip():
            raise LvsegError(f"--model-option {item!r} is not NAME=VALUE")
        try:
            options[name.strip()] = json.loads(value)
        except ValueError:
            options[name.strip()] = value
    return options


def cli_flag(field_: dataclasses.Field) -> str:
    return field_.metadata.get("flag") or "--" + field_.name.replace("_", "-")


def _range_problem(value: float, meta: Mapping[str, Any]) -> str | None:
    bounds = []
    if meta["minimum"] is not None:
        bounds.append(f">= {meta['minimum']:g}")
    if meta["above"] is not None:
        bounds.append(f"> {meta['above']:g}")
    if meta["maximum"] is not None:
        bounds.append(f"<= {meta['maximum']:g}")
    if meta["below"] is not None:
        bounds.append(f"< {meta['below']:g}")
    ok = math.isfinite(value) and all(
        (
            meta["minimum"] is None or value >= meta["minimum"],
            meta["above"] is None or value > meta["above"],
            meta["maximum"] is None or value <= meta["maximum"],
            meta["below"] is None or value < meta["below"],
        )
    )
    return None if ok else "must be " + " and ".join(bounds or ["finite"])


def is_semi_supervised(config: Any) -> bool:
    """Whether a :class:`TrainConfig` trains on part of the masks (the others through pseudo-labels)."""
    fraction = getattr(config, "labeled_fraction", None)
    return getattr(config, "labeled_list", None) is not None or (fraction is not None and fraction < 1.0)


def parse_max_time(value: str | None) -> timedelta | None:
    """'90' or '90m' (minutes), '2h', '45s', or Lightning's 'DD:HH:MM:SS' -> timedelta."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", text):
        days, hours, minutes, seconds = (int(part) for part in text.split(":"))
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text)
    if not match:
        raise LvsegError(
            f"--max-time {value!r} is not a duration; use minutes ('40'), '40m', '2h', '30s' or DD:HH:MM:SS"
        )
    amount, unit = float(match.group(1)), match.group(2) or "m"
    return timedelta(seconds=amount * {"s": 1, "m": 60, "h": 3600}[unit])


def check_train_config(config: TrainConfig, *, refuse_unused_text_options: bool = False) -> None:
    """Raise one :class:`LvsegError` naming every option whose value is out of its allowed range, every
    ``--model-option`` of the wrong type, an accelerator this machine lacks, a ``--max-time`` that leaves no time,
    sizes that surely do not fit in memory (:func:`memory_problems`) and an ``--out`` that cannot be written.

    ``refuse_unused_text_options``: also refuse text options given to an image-only model (``lvseg train``; a
    library caller may pass one config to several models)."""
    problems = []
    for field_ in dataclasses.fields(config):
        value, meta = getattr(config, field_.name), field_.metadata
        if value is None or isinstance(value, bool):
            continue
        if meta["choices"] and value not in meta["choices"]:
            problems.append(f"{cli_flag(field_)} {value!r} is not one of {', '.join(meta['choices'])}")
        elif isinstance(value, (int, float)):
            problem = _range_problem(float(value), meta)
            if problem:
                problems.append(f"{cli_flag(field_).split('/')[0]} {value!r} {problem}")
    if config.img_size is not None and (
        isinstance(config.img_size, bool)
        or not isinstance(config.img_size, int)
        or config.img_size <= 0
        or config.img_size % 32
    ):
        problems.append(f"--img-size {config.img_size} is not a positive multiple of 32 (e.g. 224, 256)")
    if config.in_channels not in (1, 3):
        problems.append(
            f"--in-channels {config.in_channels} is not 1 (gray) or 3 (RGB): images are read with one or three channels"
        )
    if config.compile and is_semi_supervised(config) and not config.supervised_only:
        problems.append(
            "--compile is not available with semi-supervised training (--labeled-fraction / "
            "--labeled-list): its EMA teacher copies the network"
        )
    bad_milestones = [epoch for epoch in config.lr_milestones or [] if isinstance(epoch, bool) or epoch < 1]
    if bad_milestones:
        problems.append(f"--lr-milestone {bad_milestones[0]!r} must be an epoch >= 1")
    if config.balance_classes and is_semi_supervised(config):
        problems.append("--balance-classes is not available with semi-supervised training (--labeled-fraction)")
    problems += _text_encoder_problems(config)
    if refuse_unused_text_options:
        problems += unused_text_option_problems(config)
    problems += model_option_problems(config.model, config.model_options)
    problems += accelerator_problems(config.accelerator)
    problems += _max_time_problems(config.max_time)
    problems += memory_problems(config)
    problems += output_problems(config.out, "--out", "folder", "a run folder for best.ckpt, last.ckpt and logs")
    if problems:
        raise LvsegError("; ".join(problems))


def _max_time_problems(value: str | None) -> list[str]:
    try:
        budget = parse_max_time(value)
    except LvsegError as error:
        return [str(error)]
    if budget is not None and budget <= timedelta(0):
        return [f"--max-time {value!r} leaves no time to train; give a positive duration ('40', '2h') or leave it out"]
    return []


#: Accelerator names Lightning accepts besides those of its registry: ``auto``, and ``gpu`` (CUDA or MPS).
ACCELERATOR_ALIASES: dict[str, tuple[str, ...]] = {"auto": (), "gpu": ("cuda", "mps")}


def available_accelerators() -> list[str]:
    """The ``--accelerator`` values this machine can run: ``auto``, ``cpu``, and each of Lightning's registered
    accelerators (cuda, mps, tpu, ...) whose hardware and libraries are present (``gpu`` with CUDA or MPS)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    present = []
    for name in AcceleratorRegistry.available_accelerators():
        try:
            usable = bool(AcceleratorRegistry[name]["accelerator"].is_available())
        except Exception:  # an accelerator whose library is missing may raise instead of answering
            usable = False
        if usable:
            present.append(name)
    aliases = [alias for alias, targets in ACCELERATOR_ALIASES.items() if not targets or set(targets) & set(present)]
    return sorted(set(aliases) | set(present), key=lambda name: (name != "auto", name != "cpu", name))


def accelerator_problems(accelerator: str) -> list[str]:
    """Why ``--accelerator`` cannot run on this machine (unknown, or its hardware or library is missing)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    available = available_accelerators()
    if accelerator in available:
        return []
    known = sorted(set(ACCELERATOR_ALIASES) | set(AcceleratorRegistry.available_accelerators()))
    here = f"accelerators available on this machine: {', '.join(available)}"
    if accelerator not in known:
        return [f"--accelerator {accelerator!r} is not one of {', '.join(known)}; {here}"]
    why = "torch_xla is not installed or no TPU is attached" if accelerator == "tpu" else "its device is not present"
    return [f"--accelerator {accelerator} is not available here ({why}); {here}"]


def unused_text_option_problems(config: TrainConfig) -> list[str]:
    """Text options given to a model that reads no text (its declared ``requires_text``), which would be ignored."""
    from lvseg.models import model_class

    try:
        reads_text = model_class(config.model).requires_text
    except LvsegError:
        return []  # an unknown --model is reported when the model is looked up
    if reads_text:
        return []
    given = [
        flag
        for flag, value in (
            ("--text-encoder", config.text_encoder),
            ("--text-option", config.text_options or None),
            ("--text-length", config.text_length),
        )
        if value is not None
    ]
    if not given:
        return []
    return [
        f"{' and '.join(given)}: model '{config.model}' is image-only (it reads no text); leave {' and '.join(given)} out"
    ]


#: What a JSON value of each type is called in a message.
_TYPE_WORDS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    list: "a JSON list",
    tuple: "a JSON list",
    dict: "a JSON object",
    type(None): "null",
}


def _accepts(annotation: Any, value: Any) -> bool | None:
    """Whether the JSON ``value`` fits the type ``annotation``; None when the annotation is not one this check
    reads (a class, Any, a protocol, ...)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        answers = [_accepts(arg, value) for arg in typing.get_args(annotation)]
        return True if any(answers) else None if None in answers else False
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    target = origin if origin in (list, tuple, dict) else annotation
    if target is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if target in (bool, str, dict, type(None)):
        return isinstance(value, target)
    if target in (list, tuple):
        return isinstance(value, list)
    return None


def _describe_type(annotation: Any) -> str | None:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        words = [_describe_type(arg) for arg in typing.get_args(annotation)]
        return " or ".join(word for word in words if word) if all(words) else None
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in typing.get_args(annotation))
    return _TYPE_WORDS.get(origin if origin in (list, tuple, dict) else annotation)


def model_option_problems(model: str, options: Mapping[str, Any]) -> list[str]:
    """``--model-option`` values whose type is not the one the model's constructor declares for them (each named
    with the type and the default); options the model does not take are reported when it is built."""
    from lvseg.models import model_class

    try:
        init = inspect.unwrap(model_class(model).__init__)
    except LvsegError:
        return []
    parameters = inspect.signature(init).parameters
    problems = []
    for name, value in options.items():
        parameter = parameters.get(name)
        if parameter is None or parameter.annotation is inspect.Parameter.empty:
            continue
        annotation = parameter.annotation
        if isinstance(annotation, str):  # postponed annotations: read in the constructor's module
            try:
                annotation = eval(annotation, getattr(init, "__globals__", {}))  # as typing.get_type_hints does
            except Exception:
                continue  # a name imported for type checking only: not checked here
        words = _describe_type(annotation)
        if words is None or _accepts(annotation, value) is not False:
            continue
        default = "" if parameter.default is inspect.Parameter.empty else f", default {json.dumps(parameter.default)}"
        shown = value if isinstance(value, str) else json.dumps(value)
        problems.append(f"--model-option {name}={shown}: model '{model}' takes {name} as {words}{default}")
    return problems


def model_option_refusal(config: TrainConfig, error: Exception) -> LvsegError:
    """The error to raise when building the model refused its options (``ValueError``/``TypeError`` from its
    layers, e.g. a dropout of 5): the ``--model-option`` values given, and what the model said."""
    given = " ".join(
        f"--model-option {name}={value if isinstance(value, str) else json.dumps(value)}"
        for name, value in config.model_options.items()
    )
    return LvsegError(f"{given}: model '{config.model}' cannot be built with it: {first_line(error, 200)}")


def memory_problems(config: TrainConfig) -> list[str]:
    """The size-like options (``--img-size``, ``--batch-size``, ``--text-length``) whose memory surely exceeds what
    the training device has (:mod:`lvseg.memory`), each with the figure, before anything is allocated. Unset sizes
    are the model's and the recipe's; an option already out of its range is reported by itself."""
    import torch

    from lvseg.models import model_class

    try:
        cls = model_class(config.model)
        recipe = resolve_recipe(config.recipe) if config.recipe else model_recipe(config.model)
    except LvsegError:
        return []
    img_size = config.img_size if config.img_size is not None else cls.default_img_size
    batch_size = config.batch_size if config.batch_size is not None else recipe.get("batch_size")
    if not all(
        isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in (img_size, batch_size)
    ):
        return []
    assert isinstance(img_size, int) and isinstance(batch_size, int)
    if config.in_channels not in (1, 3):
        return []
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    channels = config.model_options.get("base_channels", config.base_channels or defaults.get("base_channels"))
    if not isinstance(channels, int) or channels < 1:
        channels = DEFAULT_FIRST_LEVEL_CHANNELS
    on_gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    half = (config.precision or ("16-mixed" if on_gpu else "32")).startswith(("16", "bf16"))
    scale = 0.5 if half else 1.0
    images = int(image_batch_bytes(img_size, batch_size, channels, config.in_channels, training=True) * scale)
    text = 0
    text_length = config.text_length if config.text_length is not None else defaults.get("text_len")
    if cls.requires_text and isinstance(text_length, int) and text_length > 0:
        features = config.text_options.get("dim", DEFAULT_TOKEN_FEATURES)
        text = text_bytes(text_length, features if isinstance(features, int) and features > 0 else 1, batch_size, True)
    budget = available_memory("cuda" if on_gpu else "cpu")
    sizes = f"--img-size {img_size} with --batch-size {batch_size}"
    if exceeds(images, budget):
        return [
            f"{sizes} needs about {format_bytes(images)} for one batch of activations ({channels} channels at full "
            f"resolution); {budget.where}: lower --img-size or --batch-size"
        ]
    if exceeds(text, budget):
        return [
            f"--text-length {text_length} needs about {format_bytes(text)} for the text encoder's position table and "
            f"one batch of token features; {budget.where}: lower --text-length"
        ]
    if exceeds(images + text, budget):
        return [
            f"{sizes} and --text-length {text_length} need about {format_bytes(images + text)} together; "
            f"{budget.where}: lower one of them"
        ]
    return []


def _text_encoder_problems(config: TrainConfig) -> list[str]:
    """What is wrong with ``--text-encoder`` and ``--text-option`` (the options checked against the kind named,
    else the model's default encoder), before any work starts."""
    spec = config.text_encoder
    if spec is None and config.text_options:
        from lvseg.models import model_class

        try:
            spec = model_class(config.model).default_text_encoder
        except LvsegError:
            return []  # an unknown --model is reported when the model is looked up
    if spec is None:
        return []
    flag = "--text-encoder" if config.text_encoder is not None else "--text-option"
    return [
        f"{flag}: {problem}"
        for problem in text_encoder_problems(spec, config.text_options, extra_label="--text-option")
    ]
