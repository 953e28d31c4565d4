"""``load_model(path)``: the one place that chooses between an lvseg checkpoint and an export folder."""

from __future__ import annotations

from pathlib import Path

import torch

from lvseg.checkpoint import LoadedCheckpoint, NotAnLvsegCheckpoint, load_checkpoint
from lvseg.errors import CheckpointError
from lvseg.importers import official_checkpoint_hint
from lvseg.inference.segmenter import Segmenter


def load_checkpoint_explained(path: str | Path) -> LoadedCheckpoint:
    """:func:`lvseg.checkpoint.load_checkpoint`; a checkpoint of the official code that an importer
    recognises is refused with the ``lvseg import-<family>`` verb that converts it."""
    try:
        return load_checkpoint(path, map_location="cpu")
    except NotAnLvsegCheckpoint as error:
        hint = official_checkpoint_hint(error.keys)
        if not hint:
            raise
        raise CheckpointError(f"{error}; {hint}") from None


def load_model(
    checkpoint: str | Path,
    device: str | torch.device | None = None,
    backend: str | None = None,
    expected_images: int | None = None,
) -> Segmenter:
    """Load an lvseg checkpoint (``weights_only``) into a :class:`Segmenter` on ``device`` (CUDA if available)
    running its network with ``backend`` (:mod:`lvseg.inference.backends`: eager, bf16, compile, onnx, openvino,
    openvino-bf16, auto; default eager, the fp32 reference; the CLI's default is auto).

    ``expected_images``: how many images the caller will segment (None: unknown, many). With ``auto`` and one
    image a checkpoint runs eager: exporting its network (seconds) costs more than it saves (~0.1 s an image).
    With ``auto`` and a checkpoint tuned by training or ``lvseg tune-backend``, the fastest backend that passed
    the checkpoint's own accuracy guard runs (:mod:`lvseg.backend_record`).

    ``checkpoint`` may also be a folder written by ``lvseg export``: its exported network then runs with onnx or
    openvino (default and ``auto``: OpenVINO when installed, whatever ``expected_images``: there is nothing to
    export), see :mod:`lvseg.inference.exported`."""
    if Path(checkpoint).is_dir():
        from lvseg.inference.exported import load_export

        return load_export(checkpoint, device=device, backend=backend or "auto")
    loaded = load_checkpoint_explained(checkpoint)
    return Segmenter(
        loaded.model,
        loaded.hparams,
        loaded.metrics,
        device=device,
        backend=backend or "eager",
        expected_images=expected_images,
        backend_record=loaded.backend_record,
    )
