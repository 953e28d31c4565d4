"""Checks the inference verbs make before loading a model: the output can be written, and a batch at the
checkpoint's image size fits in memory (:mod:`lvseg.memory`, the estimate ``lvseg train`` applies too)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lvseg.errors import LvsegError
from lvseg.memory import DEFAULT_FIRST_LEVEL_CHANNELS, available_memory, exceeds, format_bytes, image_batch_bytes

logger = logging.getLogger(__name__)


def checkpoint_model_config(checkpoint: Path) -> dict[str, Any] | None:
    """The model options an lvseg checkpoint records, read without its weights (memory-mapped), or None when the
    file cannot be read so (a folder, a damaged file: loading it reports why)."""
    import torch

    if not checkpoint.is_file():
        return None
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file: load_model names the problem
        logger.debug("could not peek into %s", checkpoint, exc_info=True)
        return None
    hparams = content.get("hyper_parameters") if isinstance(content, dict) else None
    config = hparams.get("model_config") if isinstance(hparams, dict) else None
    return dict(config) if isinstance(config, dict) else None


def check_inference_memory(checkpoint: Path, batch_size: int, device: str | None, batch_flag: str | None) -> None:
    """Raise :class:`LvsegError` when one batch of ``batch_size`` images at the checkpoint's image size surely
    does not fit in the memory of ``device`` (default: CUDA when present), naming the figure; ``batch_flag``: the
    option that sets the batch size (None: one image)."""
    import torch

    config = checkpoint_model_config(checkpoint)
    if config is None:
        return
    img_size, channels, in_channels = (config.get(key) for key in ("img_size", "base_channels", "in_channels"))
    if not isinstance(img_size, int) or img_size < 1:
        return
    if not isinstance(channels, int) or channels < 1:
        channels = DEFAULT_FIRST_LEVEL_CHANNELS
    in_channels = in_channels if isinstance(in_channels, int) and in_channels > 0 else 3
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if target.startswith("cuda") and not torch.cuda.is_available():
        return  # load_model says that CUDA is missing
    budget = available_memory(target)
    needed = image_batch_bytes(img_size, batch_size, channels, in_channels, training=False)
    if not exceeds(needed, budget):
        return
    batch = f"{batch_flag} {batch_size}" if batch_flag else "one image"
    single = image_batch_bytes(img_size, 1, channels, in_channels, training=False)
    advice = f"lower {batch_flag}" if batch_flag and not exceeds(single, budget) else "use a machine with more memory"
    raise LvsegError(
        f"checkpoint '{checkpoint}' runs at {img_size} px: {batch} needs about {format_bytes(needed)} for one batch "
        f"of activations; {budget.where}: {advice}"
    )
