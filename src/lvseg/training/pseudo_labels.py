"""The EPI pseudo-label bank: one exponentially averaged soft label per unlabeled image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lvseg.errors import LvsegError
from lvseg.files import atomic_write


class PseudoLabelBank:
    """EPI pseudo-labels of the unlabeled images, at model resolution, on the CPU.

    labels: float16 (N, S, S) in [0, 1]; seen: bool (N,), whether an image has a pseudo-label yet.
    """

    def __init__(self, names: Sequence[str], img_size: int, beta: float = 0.8) -> None:
        if not 0.0 <= beta < 1.0:
            raise LvsegError(f"--epi-beta {beta} is not in [0, 1)")
        self.names = list(names)
        self.img_size = int(img_size)
        self.beta = float(beta)
        self.labels = torch.zeros((len(self.names), self.img_size, self.img_size), dtype=torch.float16)
        self.seen = torch.zeros(len(self.names), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.names)

    def targets(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (K,) -> (binary pseudo-label masks float32 (K, 1, S, S), seen bool (K,)), on the CPU.

        The EMA P_t stays soft in the bank; the training target is the mask P_t >= 0.5. Soft targets near
        0.5 would pull the Dice term toward blurred predictions, which the 0.5 threshold then cuts.
        """
        indices = indices.detach().cpu().long()
        return (self.labels[indices] >= 0.5).float().unsqueeze(1), self.seen[indices].clone()

    @torch.no_grad()
    def update(self, indices: torch.Tensor, probabilities: torch.Tensor) -> None:
        """EPI step for images ``indices`` (K,) with predictions ``probabilities`` (K, 1, S, S) in [0, 1].

        P_t = beta * P_(t-1) + (1 - beta) * p_t; an image seen for the first time gets P_1 = p_t.
        """
        indices = indices.detach().cpu().long()
        new = probabilities.detach().float().cpu().reshape(len(indices), self.img_size, self.img_size)
        old = self.labels[indices].float()
        seen = self.seen[indices].view(-1, 1, 1)
        updated = torch.where(seen, self.beta * old + (1.0 - self.beta) * new, new)
        self.labels[indices] = updated.clamp(0.0, 1.0).to(torch.float16)
        self.seen[indices] = True

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "img_size": self.img_size, "beta": self.beta,
                "labels": self.labels, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("names", [])) != self.names or int(state.get("img_size", -1)) != self.img_size:
            raise LvsegError(
                "the stored pseudo-labels belong to other unlabeled images or another --img-size; "
                "resume with the same data, split and --img-size"
            )
        self.labels = state["labels"].to(torch.float16).clone()
        self.seen = state["seen"].to(torch.bool).clone()

    def save(self, path: str | Path, global_step: int, epoch: int) -> Path:
        """Write the bank atomically (torch.save of tensors, lists and numbers: weights_only-safe)."""
        state = self.state_dict() | {"global_step": int(global_step), "epoch": int(epoch)}
        return atomic_write(path, lambda handle: torch.save(state, handle))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Load a bank written by :meth:`save`; returns the file's dict (``global_step``, ``epoch``...)."""
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as error:  # damaged file: many exception types
            raise LvsegError(f"cannot read pseudo-labels '{path}': {type(error).__name__}: {error}") from None
        self.load_state_dict(state)
        return state
