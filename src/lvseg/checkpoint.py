"""The lvseg checkpoint format: read and written here, without Lightning (prediction and the app import it).

Format 2 (written since the model contract; format 1 files are upgraded on load)::

    state_dict        {"model.<key>": tensor}       the model's weights (no frozen pretrained weights)
    hyper_parameters  {"model_name": str, "model_config": dict, <training options> ...,
                       "class_table": [{"value": int, "name": str, "template": str | None}, ...],
                       "data_options": {"layout": str, "prompt_type": str, "negative_ratio": float, ...}}
    lvseg             {"format": 2,
                       "metrics": {"val_dice": float, "best_val_dice": float},
                       "pretrained": {"model.text_encoder": "<id or path>"},   reloaded, not stored
                       "training_modules": "kept" | "dropped"}

Lightning's training checkpoints add optimizer and loop state; ``save_inference_checkpoint`` writes
the weights alone, without the model's training-only modules. Every file is read with
``torch.load(weights_only=True)``.

``class_table`` (multi-class training data only) lists the classes in table order; a model with K output
channels (``model.output_classes``, e.g. a U-Net built with ``n_classes``) must record exactly K rows, row k
naming channel k (:func:`class_table_problem`). ``data_options``: how the training data was read
(:func:`lvseg.data.class_channels.data_options_record`).

Format 1 (lvseg 0.1): ``net.<key>`` and ``text_encoder.<key>`` weights, ``hyper_parameters`` with
``model_options`` (including ``n_classes``) and a separate ``text_encoder`` config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvseg.errors import CheckpointError, LvsegError, first_line
from lvseg.files import atomic_write
from lvseg.text import kind_for_config

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MODEL_PREFIX = "model."
_V1_NET_PREFIX, _V1_TEXT_PREFIX = "net.", "text_encoder."


def read_checkpoint_dict(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``); bad files raise :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is a directory; expected a .ckpt file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types on damaged files; all mean "unreadable"
        raise CheckpointError(
            f"cannot read checkpoint '{path}': the file is corrupted or not a PyTorch checkpoint "
            f"({first_line(error, 200)})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


def checkpoint_format(checkpoint: dict[str, Any]) -> int:
    return int(checkpoint.get("lvseg", {}).get("format", 1))


def upgrade_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """A format-1 checkpoint dict as format 2 (same weights, same outputs); format 2 is returned as is."""
    version = checkpoint_format(checkpoint)
    if version == FORMAT_VERSION:
        return checkpoint
    if version != 1:
        raise CheckpointError(
            f"{source} has lvseg checkpoint format {version}; this lvseg reads formats 1 and "
            f"{FORMAT_VERSION}: upgrade lvseg"
        )
    if not isinstance(checkpoint.get("hyper_parameters"), dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{source} is not an lvseg checkpoint (it has no model description)")
    hparams = dict(checkpoint["hyper_parameters"])
    config = dict(hparams.pop("model_options", {}))
    n_classes = config.pop("n_classes", 1)
    if n_classes != 1:
        raise CheckpointError(
            f"{source} has a {n_classes}-class head but, written by lvseg 0.1, records no class table: which channel "
            "is which class is unknown (lvseg 0.1 models were binary; train it again for one channel per class)"
        )
    text_config = hparams.pop("text_encoder", None)
    if text_config:
        config["text_encoder"] = text_config
    hparams["model_config"] = config
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint["state_dict"].items():
        if key.startswith(_V1_NET_PREFIX):
            state[MODEL_PREFIX + key[len(_V1_NET_PREFIX) :]] = value
        elif key.startswith(_V1_TEXT_PREFIX):
            state[MODEL_PREFIX + key] = value
    lvseg = dict(checkpoint.get("lvseg", {}))
    lvseg["format"] = FORMAT_VERSION
    lvseg["upgraded_from"] = 1
    return {**checkpoint, "state_dict": state, "hyper_parameters": hparams, "lvseg": lvseg}


@dataclass
class LoadedCheckpoint:
    """A model ready for inference, rebuilt from a checkpoint (eval mode)."""

    model: Any  # lvseg.models.SegmentationModel
    hparams: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    #: Its backends' accuracy guard and speed (:mod:`lvseg.backend_record`); None before tuning.
    backend_record: Any = None

    @property
    def model_name(self) -> str:
        return self.hparams["model_name"]


class NotAnLvsegCheckpoint(CheckpointError):
    """A readable PyTorch file that is no lvseg checkpoint; ``keys`` are its state dict's (or top-level) keys,
    so a caller that knows the official importers can say which one converts it."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


def load_checkpoint(path: str | Path, map_location: Any = "cpu", expected_model: str | None = None) -> LoadedCheckpoint:
    """Rebuild the model stored in an lvseg checkpoint (format 1 or 2), in eval mode, without its
    training-only modules.

    Raises :class:`CheckpointError` naming the file when it is missing, corrupted, not an lvseg
    checkpoint, holds another model than ``expected_model``, or its weights do not fit its model.
    """
    from lvseg.models import create_model
    from lvseg.models.pretrained import weights_from

    checkpoint = read_checkpoint_dict(path, map_location=map_location)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "model_name" not in hparams or "state_dict" not in checkpoint:
        state = checkpoint.get("state_dict", checkpoint)
        raise NotAnLvsegCheckpoint(
            f"'{path}' is not an lvseg checkpoint (it has no model description)",
            [str(key) for key in state] if isinstance(state, dict) else [],
        )
    checkpoint = upgrade_checkpoint(checkpoint, source=f"checkpoint '{path}'")
    hparams = checkpoint["hyper_parameters"]
    model_name = hparams["model_name"]
    if expected_model is not None and model_name != expected_model:
        raise CheckpointError(f"checkpoint '{path}' holds a '{model_name}' model, expected '{expected_model}'")
    try:
        with weights_from("checkpoint"):  # trained weights come from this file, frozen towers from their source
            model = create_model(model_name, **hparams.get("model_config", {}))
    except LvsegError as error:
        raise CheckpointError(f"checkpoint '{path}' describes a model lvseg cannot build: {error}") from None
    state = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    try:
        model.load_weights(state, source=f"checkpoint '{path}'")
    except LvsegError as error:
        raise CheckpointError(str(error)) from None
    if model.requires_text and not model.has_text_front_end:
        hint = (
            " (if it was imported from official weights, import them again naming its text encoder)"
            if model.importer
            else ""
        )
        raise CheckpointError(
            f"checkpoint '{path}' holds a '{model_name}' model without a text encoder, so it cannot read reports{hint}"
        )
    problem = class_table_problem(model, hparams)
    if problem:
        raise CheckpointError(f"checkpoint '{path}': {problem}")
    model.strip_training_modules().eval()
    metrics = dict(checkpoint.get("lvseg", {}).get("metrics", {}))
    return LoadedCheckpoint(
        model=model, hparams=dict(hparams), metrics=metrics, backend_record=read_backend_record(checkpoint, path)
    )


#: ``checkpoint["lvseg"]`` keys of the backend record and of the tuned backends' graphs.
BACKEND_RECORD_KEY, BACKEND_GRAPHS_KEY = "backends", "backend_graphs"


def read_backend_record(checkpoint: dict[str, Any], path: str | Path) -> Any:
    """The :class:`~lvseg.backend_record.BackendRecord` a checkpoint dict carries (None if untuned)."""
    from lvseg.backend_record import BackendRecord

    record = checkpoint.get("lvseg", {})
    return BackendRecord.from_dict(
        record.get(BACKEND_RECORD_KEY), f"checkpoint '{path}'", graphs=record.get(BACKEND_GRAPHS_KEY)
    )


def write_backend_record(path: str | Path, record: Any) -> Path:
    """Store ``record`` (a :class:`~lvseg.backend_record.BackendRecord`, its graphs included) in the
    checkpoint at ``path``, replacing any earlier one; the file is rewritten atomically."""
    checkpoint = read_checkpoint_dict(path)
    entry = checkpoint.setdefault("lvseg", {"format": checkpoint_format(checkpoint)})
    entry[BACKEND_RECORD_KEY] = record.to_dict()
    entry[BACKEND_GRAPHS_KEY] = {name: dict(files) for name, files in record.graphs.items()}
    return atomic_write(path, lambda handle: torch.save(checkpoint, handle))


def class_table_problem(model: Any, hparams: dict[str, Any]) -> str | None:
    """What is wrong with the ``class_table`` of a model with several output channels (None: nothing, or a
    binary model): it must list one ``{"value", "name"}`` row per channel."""
    channels = int(getattr(model, "output_classes", 1))
    if channels == 1:
        return None
    table = hparams.get("class_table")
    if not isinstance(table, list) or len(table) != channels:
        found = f"{len(table)} rows" if isinstance(table, list) else "none"
        return (
            f"model '{model.model_name}' has {channels} output channels, one per class, but its class_table has "
            f"{found}; expected {channels} rows {{'value', 'name', 'template'}}"
        )
    bad = [number for number, row in enumerate(table, start=1) if not (isinstance(row, dict) and row.get("name"))]
    if bad:
        return f"class_table row(s) {', '.join(map(str, bad))} name no class"
    return None


def lvseg_record(model: Any, metrics: dict[str, float] | None = None, training_modules: str = "kept") -> dict[str, Any]:
    """The ``checkpoint["lvseg"]`` entry for ``model`` (format, metrics, frozen weights reloaded by id/path)."""
    return {
        "format": FORMAT_VERSION,
        "metrics": dict(metrics or {}),
        "pretrained": {MODEL_PREFIX + name: source for name, source in model.pretrained_sources().items()},
        "training_modules": training_modules,
    }


def save_inference_checkpoint(
    path: str | Path,
    model: Any,
    metrics: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> Path:
    """Write a weights-only lvseg checkpoint of ``model`` without its training-only modules, atomically.

    ``config`` overrides ``model.config`` (e.g. an imported model whose frozen text encoder is named
    but was not loaded for the conversion). ``hparams``: more entries of ``hyper_parameters`` (e.g. the
    ``class_table`` a model with one output channel per class needs).
    """
    if model.requires_text and not model.has_text_front_end and not (config or {}).get("text_encoder"):
        raise LvsegError(
            f"refusing to write '{path}': a '{model.model_name}' checkpoint without a text encoder "
            "could not read reports"
        )
    state_dict = {MODEL_PREFIX + key: value.detach().cpu() for key, value in model.inference_state_dict().items()}
    extra = {key: value for key, value in (hparams or {}).items() if key not in ("model_name", "model_config")}
    hparams = {**extra, "model_name": model.model_name, "model_config": dict(config or model.config)}
    problem = class_table_problem(model, hparams)
    if problem:
        raise LvsegError(f"refusing to write '{path}': {problem}")
    record = lvseg_record(model, metrics, training_modules="dropped")
    text_config = hparams["model_config"].get("text_encoder")
    source_field = kind_for_config(text_config).pretrained_source_field if isinstance(text_config, dict) else None
    if model.text_encoder is None and source_field is not None:
        assert isinstance(text_config, dict)
        record["pretrained"][MODEL_PREFIX + "text_encoder"] = text_config[source_field]
    checkpoint = {"state_dict": state_dict, "hyper_parameters": hparams, "lvseg": record}
    return atomic_write(path, lambda handle: torch.save(checkpoint, handle))
