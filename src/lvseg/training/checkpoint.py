"""Lightning's side of lvseg checkpoints: atomic writes and ``weights_only`` reads.

The format itself (what a checkpoint holds, loading, format upgrades) lives in :mod:`lvseg.checkpoint`,
which does not import Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lvseg.checkpoint import read_checkpoint_dict
from lvseg.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a half-written file and loads with weights_only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = True
    ) -> dict[str, Any]:
        return read_checkpoint_dict(path, map_location=map_location)
