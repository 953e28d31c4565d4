"""``lvseg train``: build data, text encoder and model from options and run Lightning."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lvseg.checkpoint import FORMAT_VERSION, checkpoint_format, read_checkpoint_dict
from lvseg.data.input_statistics import measure_on_files
from lvseg.data.provenance import describe_validation_data, training_data_record
from lvseg.data.seeding import EpochClock, EpochSampler
from lvseg.errors import LvsegError, first_line
from lvseg.training.checkpoint import AtomicCheckpointIO
from lvseg.training.csv_log import ResumableCSVLogger
from lvseg.training.epoch_seeding import EpochSeeding, loader_generator
from lvseg.training.module import SegmentationTask
from lvseg.training.options import (
    OPTIM_OPTIONS,
    SEMI_OPTIONS,
    TrainConfig,
    check_train_config,
    model_option_refusal,
    parse_max_time,
    with_model_recipe,
)
from lvseg.training.semi import (
    PhasedEarlyStopping,
    SemiSupervisedTask,
    build_semi_data,
    is_semi_supervised,
    log_phase_summary,
    semi_task_options,
    task_class_for,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_dice: float | None
    epochs: int
    global_rank: int = 0  # DDP: every process returns; only rank 0 should report
    #: Semi-supervised runs: each phase's best validation Dice and where best.ckpt comes from
    #: (:meth:`lvseg.training.semi.SemiSupervisedTask.phase_summary`); None otherwise.
    phases: dict[str, Any] | None = None


def _accelerator_and_precision(config: TrainConfig) -> tuple[str, str]:
    accelerator = config.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = config.precision
    if precision is None:
        if accelerator == "gpu":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    return accelerator, precision


def model_config_for(config: TrainConfig) -> dict[str, Any]:
    """The model options a TrainConfig asks for; a text model gets its text encoder (``--text-encoder``,
    else the model's default, with the ``--text-option`` options) and ``--text-length``."""
    from lvseg.models import model_class, model_options

    cls, accepted = model_class(config.model), model_options(config.model)
    options: dict[str, Any] = {"in_channels": config.in_channels}  # every model takes it, and img_size
    if config.img_size is not None:
        options["img_size"] = config.img_size
    if config.base_channels is not None:
        options["base_channels"] = config.base_channels
    if cls.requires_text:  # image-only models ignore the text options
        options.update(text_model_options(config, cls.default_text_encoder, accepted))
    options.update(config.model_options)
    return options


def text_model_options(config: TrainConfig, default_encoder: str | None, accepted: Any) -> dict[str, Any]:
    """``text_encoder`` (one spec string: ``--text-encoder`` or ``default_encoder``, with ``--text-option`` merged
    in) and ``text_len`` (``--text-length``) for a text model taking the options ``accepted``."""
    from lvseg.text import with_text_options

    options: dict[str, Any] = {}
    if "text_encoder" in accepted:
        spec = config.text_encoder or default_encoder
        if spec is None and config.text_options:
            raise LvsegError(f"--text-option: model '{config.model}' has no default text encoder; give --text-encoder")
        if spec is not None:
            options["text_encoder"] = with_text_options(spec, config.text_options)
        else:
            options["text_encoder"] = None
    elif config.text_encoder is not None or config.text_options:
        flag = "--text-encoder" if config.text_encoder is not None else "--text-option"
        raise LvsegError(f"{flag}: model '{config.model}' has its own text front end; it takes no text encoder")
    if config.text_length is not None:
        if "text_len" not in accepted:
            raise LvsegError(f"--text-length: model '{config.model}' takes no text length")
        options["text_len"] = config.text_length
    return options


def build_task(config: TrainConfig, train_texts: list[str]) -> SegmentationTask:
    """Create the Lightning module around ``create_model(config.model, ...)``; the reports build a
    ``learned`` vocabulary. A ``--model-option`` its layers refuse (a dropout of 5) is an :class:`LvsegError`."""
    try:
        return task_class_for(config)(
            model_name=config.model,
            model_config=model_config_for(config),
            model_texts=list(train_texts),
            **{name: getattr(config, name) for name in OPTIM_OPTIONS},
            **semi_task_options(config),
        )
    except (ValueError, TypeError) as error:
        if not config.model_options:
            raise
        raise model_option_refusal(config, error) from None


def _resume_task(config: TrainConfig, checkpoint_path: Path) -> SegmentationTask:
    """Rebuild the module exactly as the interrupted run had it, refusing a different model."""
    checkpoint = read_checkpoint_dict(checkpoint_path)
    if checkpoint_format(checkpoint) < FORMAT_VERSION:
        raise LvsegError(
            f"cannot resume from '{checkpoint_path}': it was written by an older lvseg (checkpoint format "
            f"{checkpoint_format(checkpoint)}); its checkpoints still evaluate, predict and serve, but continue "
            "training in a new --out folder"
        )
    hparams = checkpoint.get("hyper_parameters", {})
    if hparams.get("model_name") != config.model:
        raise LvsegError(
            f"cannot resume from '{checkpoint_path}': it trains a '{hparams.get('model_name')}' model, "
            f"not '{config.model}'; use another --out folder or the same --model"
        )
    saved_size = hparams.get("model_config", {}).get("img_size")
    if saved_size != config.img_size:
        raise LvsegError(
            f"cannot resume from '{checkpoint_path}': it was trained at --img-size {saved_size}, not {config.img_size}"
        )
    keep = ("model_name", "model_config", *OPTIM_OPTIONS)
    task_class = task_class_for(config)
    saved_task = recorded_task(checkpoint)
    if saved_task != task_class.task_name:
        raise LvsegError(
            f"cannot resume from '{checkpoint_path}': it is a {saved_task} run, and these options ask "
            f"for a {task_class.task_name} one; resume with the same semi-supervised options "
            "(--labeled-fraction/--labeled-list, --supervised-only) as the interrupted run"
        )
    if task_class is SemiSupervisedTask:
        keep += SEMI_OPTIONS
    return task_class(**{key: hparams[key] for key in keep if key in hparams})


def recorded_task(checkpoint: dict[str, Any]) -> str:
    """The training task a run's checkpoint records (``checkpoint["lvseg"]["task"]``); checkpoints written before
    tasks were recorded are told apart by their semi-supervised hyperparameters."""
    task = checkpoint.get("lvseg", {}).get("task")
    if isinstance(task, str):
        return task
    return (
        SemiSupervisedTask.task_name
        if "epi_beta" in checkpoint.get("hyper_parameters", {})
        else SegmentationTask.task_name
    )


def _check_reports(task: SegmentationTask, splits: dict[str, list[Any]]) -> None:
    """Every report the model's text front end cannot read, listed at once before training starts (or
    counted, when the model accepts them as empty input)."""
    from lvseg.data.layout import check_reports

    problems = check_reports(task.model, splits)
    if problems:
        total = sum(len(samples) for samples in splits.values())
        log.warning(
            "%d of %d reports are outside the report grammar and are read as empty input (zero vectors), e.g. %s",
            len(problems),
            total,
            problems[0],
        )


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _tidy_lightning_logging() -> None:
    """One copy of each Lightning log line, without its product tips: when the application has configured
    logging (the CLI does), Lightning's own stderr handler would print every line a second time."""
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in target.filters):
            target.addFilter(_DropLightningTips())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder`` (``.<name>.<random>.tmp``)."""
    removed = []
    for path in sorted(folder.glob(".*.tmp")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info(
            "removed %d unfinished file(s) of an interrupted write: %s",
            len(removed),
            ", ".join(path.name for path in removed),
        )
    return removed


def _log_model_summary(task: SegmentationTask, img_size: int) -> None:
    """Parameters and GFLOPs of the model, in one line (Lightning's own summary has no FLOPs for it)."""
    from lvseg.models.describe import describe_built_model

    counts = task.model.parameter_counts()
    try:
        gflops = f", {describe_built_model(task.model)['gflops']:.3g} GFLOPs per image"
    except (LvsegError, RuntimeError, NotImplementedError, TypeError, ValueError) as error:
        log.debug("FLOPs of %s not counted: %r", task.model.model_name, error)
        gflops = ""
    log.info(
        "model %s: %.3g M parameters (%.3g M trainable, %.3g M frozen)%s at %d px",
        task.model.model_name,
        counts["total"] / 1e6,
        counts["trainable"] / 1e6,
        counts["frozen"] / 1e6,
        gflops,
        img_size,
    )


def _make_trainer(**options: Any) -> L.Trainer:
    """``L.Trainer(**options)``; Lightning's refusals of --devices/--strategy/--accelerator become LvsegError."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**options)
    except (MisconfigurationException, ValueError, TypeError) as error:
        raise LvsegError(
            f"cannot train with --accelerator {options.get('accelerator')} --devices {options.get('devices')} "
            f"--strategy {options.get('strategy')}: {first_line(error)}"
        ) from None


def _all_texts(samples: list[Any]) -> list[str]:
    """Every report a training sample may be given: its fixed text and each of its prompt choices."""
    texts = []
    for sample in samples:
        texts.append(sample.text)
        texts.extend(text for group in sample.prompt_choices for text in group)
    return texts


def class_balanced_sampler(samples: list[Any], seed: int, start_epoch: int = 0) -> EpochSampler:
    """Draws ``len(samples)`` samples per epoch with replacement, each with weight 1 / (samples of its class):
    every ``class_name`` is drawn equally often on average (a binary set: uniform). The draws of an epoch are
    a function of (``seed``, epoch) (:class:`~lvseg.data.seeding.EpochSampler`), so a resumed run repeats them."""
    from collections import Counter

    counts = Counter(sample.class_name for sample in samples)
    weights = [1.0 / counts[sample.class_name] for sample in samples]
    return EpochSampler(len(samples), seed, start_epoch=start_epoch, weights=weights)


def _tune_backends(checkpoint: Path, data: Path, data_options: Any) -> None:
    """Record in ``checkpoint`` which inference backends pass its accuracy guard on the validation images
    (:mod:`lvseg.inference.tuning`); a backend that cannot run is recorded as such, and a tuning that fails
    altogether leaves the checkpoint as it was (``auto`` then keeps its default choice)."""
    from lvseg.inference.tuning import tune_checkpoint

    try:
        tune_checkpoint(checkpoint, data, split="val", data_options=data_options)
    except LvsegError as error:
        log.warning("the inference backends of %s were not tuned: %s", checkpoint, error)


def train(config: TrainConfig) -> TrainResult:
    """Train one model on a dataset (any layout of :mod:`lvseg.data.formats`: one sample per image, or per
    (image, structure) of a multi-class set); writes best.ckpt, last.ckpt and logs into ``config.out``."""
    from lvseg.data.class_channels import ClassTraining, training_data_options
    from lvseg.data.formats import DataOptions, class_names, load_dataset_split
    from lvseg.models import model_class

    check_train_config(config)
    config = with_model_recipe(config)
    # with_model_recipe fills every unset recipe field and the image size
    assert config.img_size is not None and config.batch_size is not None and config.patience is not None
    max_time = parse_max_time(config.max_time)
    L.seed_everything(config.seed, workers=True, verbose=False)
    semi = is_semi_supervised(config)
    # A model declaring multi_channel_classes learns every class of an image at once (one channel per class).
    multi_channel = model_class(config.model).multi_channel_classes
    data_options = training_data_options(multi_channel, DataOptions.from_config(config))
    # unlabeled masks stay unopened
    train_samples = load_dataset_split(config.data, "train", data_options, require_masks=not semi)
    if semi and class_names(train_samples):
        raise LvsegError(
            f"'{config.data}' is a multi-class set (label maps or the VLSM layout): semi-supervised training "
            "(--labeled-fraction below 1, --labeled-list) is not supported for it; train on every label map"
        )
    val_samples = load_dataset_split(config.data, "val", data_options)
    classes = ClassTraining.plan(multi_channel and not semi, config.data, data_options, train_samples)
    # n_classes = K for a model with one output channel per class (checked against a given one)
    model_options = classes.model_options(config.model, multi_channel, config.model_options, config.balance_classes)

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise LvsegError(f"--out '{out}' is a file; expected a run folder (it is created if missing)")
    last_path = out / "last.ckpt"
    resume_path = None
    resumed_epoch = None
    if config.resume:
        if not last_path.is_file():
            raise LvsegError(f"--resume: there is no interrupted run to continue in '{out}' (no last.ckpt)")
        resume_path = last_path
        task = _resume_task(config, last_path)
        resumed_epoch = int(read_checkpoint_dict(last_path).get("epoch", -1))  # the last epoch it holds
    else:
        if last_path.exists():
            raise LvsegError(
                f"'{out}' already holds a run (last.ckpt); pass --resume to continue it or choose another --out"
            )
        # reports only (every prompt a sample may draw): no mask read
        task = build_task(dataclasses.replace(config, model_options=model_options), _all_texts(train_samples))
    if config.channels_last:
        task.use_channels_last()
    if config.compile:
        task.use_compile()
    _check_reports(task, {"train": train_samples, "val": val_samples})
    # The data order, augmentation, prompts and global generators of an epoch are functions of (seed, epoch):
    # a resumed run's next epoch draws what the uninterrupted run's would have (lvseg.data.seeding).
    start_epoch = 0 if resumed_epoch is None else resumed_epoch + 1
    clock = EpochClock(start_epoch)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    _tidy_lightning_logging()

    val_set = classes.dataset(val_samples, config.img_size, augment=False, channels=config.in_channels)
    # What the model was trained and validated on (the app and its PDF reports state it), and the training
    # images' statistics, for the app's warning on images unlike them (lvseg.inference.consistency).
    task.hparams["training_data"] = training_data_record(config.data, len(train_samples), len(val_samples))
    task.hparams["validation_data"] = describe_validation_data(config.data, len(val_set))
    # The class table ({"value", "name", "template"} rows: channel k of a multi-channel model is row k) and the
    # options that read the data, so that evaluation and prediction rebuild the same classes and samples.
    task.hparams.update(classes.hparams(config.data, data_options, config.balance_classes))
    if class_names(train_samples):
        task.hparams["classes"] = class_names(train_samples)
        # How the per-class prompts were worded, so that prediction asks for a class the same way.
        task.hparams["class_prompting"] = {"prompt_type": config.prompt_type, "modality": config.modality}
    task.hparams["input_statistics"] = measure_on_files(
        list(dict.fromkeys(sample.image_path for sample in train_samples)),  # an image of K classes once
        list(dict.fromkeys(sample.image_path for sample in val_samples)),
        config.img_size,
        config.in_channels,
        seed=config.seed,
    ).to_dict()
    loader_options: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "persistent_workers": config.num_workers > 0,
    }
    val_loader = DataLoader(val_set, shuffle=False, generator=loader_generator(config.seed), **loader_options)
    if semi:
        # The training loader follows the task's phase (supervised, then labeled + unlabeled): reloaded each epoch.
        data: dict[str, Any] = {
            "datamodule": build_semi_data(
                config, task, train_samples, out, loader_options, val_loader, clock=clock, start_epoch=start_epoch
            )
        }
        steps_per_epoch = data["datamodule"].labeled_steps()
    else:
        train_set = classes.dataset(
            train_samples,
            config.img_size,
            augment=config.augment,
            channels=config.in_channels,
            seed=config.seed,
            sample_prompts=True,
            epoch_clock=clock,
        )  # augmentation seeded by (seed, epoch, index): MONAI's own RNG is not seeded by seed_everything
        sampler = (
            class_balanced_sampler(train_samples, config.seed, start_epoch)
            if config.balance_classes and not classes.channels
            else EpochSampler(len(train_set), config.seed, start_epoch)
        )
        train_loader = DataLoader(
            train_set,
            sampler=sampler,
            drop_last=len(train_set) > config.batch_size,
            generator=loader_generator(config.seed),
            **loader_options,
        )
        data = {"train_dataloaders": train_loader, "val_dataloaders": val_loader}
        steps_per_epoch = len(train_loader)

    accelerator, precision = _accelerator_and_precision(config)
    best_callback = ModelCheckpoint(
        dirpath=out,
        filename="best",
        monitor="val_dice",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    # Lightning's save_last only writes last.ckpt when best.ckpt is written; a resumed run must continue
    # from the latest epoch, so last.ckpt is its own checkpoint, written after every validation (after
    # best.ckpt, so it records the updated best).
    last_callback = ModelCheckpoint(
        dirpath=out,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    # Semi-supervised runs: early stopping first ends the supervised phase, then the run.
    early_stopping = PhasedEarlyStopping(monitor="val_dice", mode="max", patience=config.patience)
    trainer = _make_trainer(
        default_root_dir=out,
        accelerator=accelerator,
        devices=config.devices,
        strategy=config.strategy,
        precision=precision,
        max_epochs=config.max_epochs,
        max_time=max_time,
        callbacks=[best_callback, last_callback, early_stopping, EpochSeeding(config.seed, clock)],
        logger=[
            ResumableCSVLogger(
                out, name="logs", version="", keep_existing=resume_path is not None, resumed_epoch=resumed_epoch
            ),
            TensorBoardLogger(out, name="logs", version=""),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=config.progress_bar,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        reload_dataloaders_every_n_epochs=1 if semi else 0,
        deterministic=False,
        limit_train_batches=config.limit_train_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=config.grad_clip or None,
        enable_model_summary=False,  # replaced by _log_model_summary (Lightning's shows "Total FLOPs: 0")
    )
    log.info("training %s on %d images (validation %d) into %s", config.model, len(train_samples), len(val_set), out)
    _log_model_summary(task, config.img_size)
    with warnings.catch_warnings():
        # lvseg itself refuses to start a new run over an old one (last.ckpt), so Lightning's warning about a
        # non-empty checkpoint folder (it holds the logs just created) says nothing.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # The semi-supervised data module leaves batch transfer to the task (channels-last images): as intended.
        warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")
        trainer.fit(task, ckpt_path=resume_path, **data)
    best_path = Path(best_callback.best_model_path) if best_callback.best_model_path else last_path
    if config.tune_backends and trainer.is_global_zero and best_path.is_file():
        _tune_backends(best_path, config.data, data_options)
    phases = None
    if isinstance(task, SemiSupervisedTask):
        phases = task.phase_summary()
        if trainer.is_global_zero:
            log_phase_summary(task, out)
    return TrainResult(
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_val_dice=task.best_val_dice,
        epochs=trainer.current_epoch,
        global_rank=trainer.global_rank,
        phases=phases,
    )
