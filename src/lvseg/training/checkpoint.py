"""lvseg checkpoints: Lightning checkpoints written atomically and read with ``weights_only=True``.

A checkpoint is a dict with at least::

    state_dict        {"net.<key>": tensor, "text_encoder.<key>": tensor}
    hyper_parameters  {"model_name": str, "model_options": dict, "text_encoder": dict | None, ...}
    lvseg             {"format": 1, "metrics": {"val_dice": float, ...}}

so evaluation and prediction need nothing but the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from lvseg.errors import CheckpointError, LvsegError
from lvseg.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NET_PREFIX = "net."
TEXT_PREFIX = "text_encoder."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a half-written file and loads with weights_only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = True) -> dict[str, Any]:
        return read_checkpoint_dict(path, map_location=map_location)


def read_checkpoint_dict(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``); bad files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types on damaged files; all mean "unreadable"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"cannot read checkpoint '{path}': the file is corrupted or not a PyTorch checkpoint ({reason[:200]})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


@dataclass
class LoadedCheckpoint:
    """A network ready for inference, rebuilt from a checkpoint (eval mode)."""

    net: nn.Module
    text_encoder: nn.Module | None
    hparams: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.hparams["model_name"]


def _split_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", expected_model: str | None = None
) -> LoadedCheckpoint:
    """Rebuild the network and text encoder stored in an lvseg checkpoint.

    Raises :class:`CheckpointError` naming the file when it is missing, corrupted, not an lvseg
    checkpoint, holds another model than ``expected_model``, or its weights do not fit its model.
    """
    from lvseg.models import create_model
    from lvseg.text import text_encoder_from_config

    checkpoint = read_checkpoint_dict(path, map_location=map_location)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "model_name" not in hparams or "state_dict" not in checkpoint:
        hint = ""
        if any(str(key).startswith(("module.", "downVit")) for key in checkpoint.get("state_dict", {})):
            hint = "; it looks like an official LViT checkpoint: convert it first with `lvseg import-lvit`"
        raise CheckpointError(f"'{path}' is not an lvseg checkpoint (it has no model description){hint}")
    model_name = hparams["model_name"]
    if expected_model is not None and model_name != expected_model:
        raise CheckpointError(f"checkpoint '{path}' holds a '{model_name}' model, expected '{expected_model}'")

    try:
        net = create_model(model_name, **hparams.get("model_options", {}))
    except LvsegError as error:
        raise CheckpointError(f"checkpoint '{path}' describes a model lvseg cannot build: {error}") from None
    state_dict = checkpoint["state_dict"]
    try:
        net.load_state_dict(_split_state(state_dict, NET_PREFIX), strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"the weights in checkpoint '{path}' do not fit a '{model_name}' model with options "
            f"{hparams.get('model_options', {})} ({first_line[:200]})"
        ) from None

    text_encoder = None
    if hparams.get("text_encoder"):
        text_encoder = text_encoder_from_config(hparams["text_encoder"])
        text_state = _split_state(state_dict, TEXT_PREFIX)
        try:
            text_encoder.load_state_dict(text_state, strict=True)
        except RuntimeError as error:
            raise CheckpointError(
                f"the text-encoder weights in checkpoint '{path}' do not fit its text encoder "
                f"({str(error).strip().splitlines()[0][:200]})"
            ) from None
        text_encoder.eval()
    net.eval()
    metrics = dict(checkpoint.get("lvseg", {}).get("metrics", {}))
    return LoadedCheckpoint(net=net, text_encoder=text_encoder, hparams=dict(hparams), metrics=metrics)


def save_inference_checkpoint(
    path: str | Path,
    net: nn.Module,
    model_name: str,
    model_options: dict[str, Any],
    text_encoder: nn.Module | None = None,
    text_encoder_config: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    extra_hparams: dict[str, Any] | None = None,
) -> Path:
    """Write a weights-only lvseg checkpoint (no optimizer state) that :func:`load_checkpoint` reads."""
    state_dict = {NET_PREFIX + key: value.detach().cpu() for key, value in net.state_dict().items()}
    if text_encoder is not None:
        state_dict.update({TEXT_PREFIX + k: v.detach().cpu() for k, v in text_encoder.state_dict().items()})
        if text_encoder_config is None:
            text_encoder_config = text_encoder.config()
    hparams = {"model_name": model_name, "model_options": dict(model_options), "text_encoder": text_encoder_config}
    hparams.update(extra_hparams or {})
    checkpoint = {
        "state_dict": state_dict,
        "hyper_parameters": hparams,
        "lvseg": {"format": FORMAT_VERSION, "metrics": dict(metrics or {})},
    }
    return atomic_write(path, lambda handle: torch.save(checkpoint, handle))
