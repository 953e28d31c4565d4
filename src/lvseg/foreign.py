"""Reading checkpoints saved by other code bases (official repositories, open_clip): an I/O leaf module.

Every file is read with ``torch.load(weights_only=True)``; nothing here knows a particular model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from lvseg.errors import CheckpointError, first_line


def read_foreign_state_dict(path: str | Path, what: str, example_key: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint saved by another code base (an official repository), read with
    ``weights_only=True``: under ``state_dict`` or bare, ``module.`` (DataParallel) prefixes removed.

    ``what`` names the expected file in errors (e.g. "official LViT .pth checkpoint"), ``example_key`` a key
    it should hold. Raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected an {what})")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (UnpicklingError, IndexError, RuntimeError, ...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (expected an {what}): {first_line(error, 200)}"
        ) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: expected a dict (an {what}), got {type(loaded).__name__}")
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: expected a non-empty 'state_dict' of tensors")
    tensors = {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: expected a state_dict of tensors under keys like {example_key}, found keys "
            f"{', '.join(map(str, list(state)[:6]))}"
        )
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors
