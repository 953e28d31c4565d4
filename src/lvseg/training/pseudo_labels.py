"""The EPI pseudo-label bank (one exponentially averaged soft label per unlabeled image) and what decides
which of its pixels supervise: the confidence mask and the report filter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvseg.data.report_regions import ChestGeometry, report_consistent_mask
from lvseg.data.reports import parse_report
from lvseg.errors import LvsegError
from lvseg.files import atomic_write


class PseudoLabelBank:
    """EPI pseudo-labels of the unlabeled images, at model resolution, on the training device
    (:meth:`to`; the CPU until then, and in the files it writes).

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

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def to(self, device: torch.device | str) -> PseudoLabelBank:
        """Keep the labels on ``device`` (the model's), so a training step copies nothing to or from the host."""
        self.labels, self.seen = self.labels.to(device), self.seen.to(device)
        return self

    def soft_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (K,) -> the EMA pseudo-labels P_t, float32 (K, 1, S, S), on the bank's device."""
        return self.labels[indices.to(self.device).long()].float().unsqueeze(1)

    def targets(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (K,) -> (binary pseudo-label masks float32 (K, 1, S, S), seen bool (K,)), on the bank's device.

        The EMA P_t stays soft in the bank; the training target is the mask P_t >= 0.5. Soft targets near
        0.5 would pull the Dice term toward blurred predictions, which the 0.5 threshold then cuts.
        """
        indices = indices.to(self.device).long()
        return (self.soft_labels(indices) >= 0.5).float(), self.seen[indices].clone()

    @torch.no_grad()
    def update(self, indices: torch.Tensor, probabilities: torch.Tensor) -> None:
        """EPI step for images ``indices`` (K,) with predictions ``probabilities`` (K, 1, S, S) in [0, 1].

        P_t = beta * P_(t-1) + (1 - beta) * p_t; an image seen for the first time gets P_1 = p_t.
        """
        indices = indices.detach().to(self.device).long()
        new = probabilities.detach().float().to(self.device).reshape(len(indices), self.img_size, self.img_size)
        old = self.labels[indices].float()
        seen = self.seen[indices].view(-1, 1, 1)
        updated = torch.where(seen, self.beta * old + (1.0 - self.beta) * new, new)
        self.labels[indices] = updated.clamp(0.0, 1.0).to(torch.float16)
        self.seen[indices] = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "img_size": self.img_size,
            "beta": self.beta,
            "labels": self.labels.cpu(),
            "seen": self.seen.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("names", [])) != self.names or int(state.get("img_size", -1)) != self.img_size:
            raise LvsegError(
                "the stored pseudo-labels belong to other unlabeled images or another --img-size; "
                "resume with the same data, split and --img-size"
            )
        self.labels = state["labels"].to(self.device, torch.float16).clone()
        self.seen = state["seen"].to(self.device, torch.bool).clone()

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


def confidence_weight(soft_labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Pixel weights (K, 1, S, S) that keep the pixels the teacher is sure of: 1 where the EMA pseudo-label P_t
    is >= ``tau`` (lesion) or <= 1 - ``tau`` (background), 0 in between (the pixel is ignored).

    The confidence threshold of FixMatch (Sohn et al., NeurIPS 2020) and UniMatch (Yang et al., CVPR 2023),
    applied to the averaged teacher's binary decision per pixel; ``tau = 0.5`` keeps every pixel.
    """
    if not 0.5 <= tau < 1.0:
        raise LvsegError(f"--pseudo-confidence {tau} is not in [0.5, 1)")
    return ((soft_labels >= tau) | (soft_labels <= 1.0 - tau)).float()


class ReportFilter:
    """Drops the pseudo-label regions that contradict their image's report (:mod:`lvseg.data.report_regions`).

    ``reports``: one per unlabeled image (bank order), parsed once; a report outside the QaTa grammar
    (empty findings) filters nothing. Dropped regions become background: the report says they are not
    what it describes.
    """

    def __init__(self, reports: Sequence[str], geometry: ChestGeometry = ChestGeometry()) -> None:
        self.findings = [parse_report(report) for report in reports]
        self.geometry = geometry

    @property
    def readable(self) -> int:
        """How many of the reports the grammar reads (the others filter nothing)."""
        return sum(not findings.is_empty for findings in self.findings)

    def __call__(self, indices: torch.Tensor, targets: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
        """indices (K,), binary targets and soft labels (K, 1, S, S) -> the targets without contradicting regions."""
        rows = [row for row, index in enumerate(indices.tolist()) if not self.findings[index].is_empty]
        if not rows:
            return targets
        # One copy to the host per batch (scipy labels the regions there), one back.
        hard, soft = targets[rows, 0].cpu().numpy(), soft_labels[rows, 0].float().cpu().numpy()
        keep = np.stack(
            [
                report_consistent_mask(hard[k], self.findings[int(indices[row])], soft[k], self.geometry)
                for k, row in enumerate(rows)
            ]
        )
        filtered = targets.clone()
        filtered[rows, 0] = targets[rows, 0] * torch.from_numpy(keep).to(targets.device, targets.dtype)
        return filtered
