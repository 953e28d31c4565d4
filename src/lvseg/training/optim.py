"""Optimisers and learning-rate schedules by name: two small registries that ``lvseg train`` reads.

``OPTIMIZERS[name]`` builds a ``torch.optim.Optimizer`` from parameter groups; ``LR_SCHEDULES[name]`` builds
Lightning's ``lr_scheduler`` entry for it from the run's options. Adding a schedule is one decorated function
(its help line becomes part of ``lvseg train --help``, its name a choice of ``--lr-schedule``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

from lvseg.errors import LvsegError

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import LRSchedulerConfigType

#: Epochs without a lower validation loss before ReduceLROnPlateau divides the learning rate by 10.
PLATEAU_PATIENCE = 5

MULTISTEP_NEEDS_MILESTONES = "--lr-schedule multistep needs at least one --lr-milestone EPOCH (e.g. 35)"

#: ``OPTIMIZERS[name](param_groups, lr=..., weight_decay=...)`` -> the optimiser.
OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class LrSchedule:
    """``build(optimizer, options)`` -> Lightning's ``lr_scheduler`` dict; ``help`` describes it in a few words."""

    name: str
    help: str
    build: Callable[[Optimizer, Mapping[str, Any]], LRSchedulerConfigType]


LR_SCHEDULES: dict[str, LrSchedule] = {}

#: ``build(optimizer, options)`` -> Lightning's ``lr_scheduler`` dict.
ScheduleBuilder = Callable[[Optimizer, Mapping[str, Any]], "LRSchedulerConfigType"]


def register_lr_schedule(name: str, help: str) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
    """Register ``build(optimizer, options)`` as the learning-rate schedule ``name``."""

    def decorator(build: ScheduleBuilder) -> ScheduleBuilder:
        if name in LR_SCHEDULES:
            raise ValueError(f"learning-rate schedule {name!r} is registered twice")
        LR_SCHEDULES[name] = LrSchedule(name, help, build)
        return build

    return decorator


@register_lr_schedule("cosine", "annealing with warm restarts (--restart-epochs, --min-lr)")
def _cosine(optimizer: Optimizer, options: Mapping[str, Any]) -> LRSchedulerConfigType:
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=options["restart_epochs"], eta_min=min(options["min_lr"], options["lr"])
    )
    return {"scheduler": scheduler, "interval": "epoch"}


@register_lr_schedule("plateau", f"x0.1 after {PLATEAU_PATIENCE} epochs without a lower validation loss")
def _plateau(optimizer: Optimizer, options: Mapping[str, Any]) -> LRSchedulerConfigType:
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=PLATEAU_PATIENCE)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": "val_loss"}


@register_lr_schedule("multistep", "x0.1 after each epoch given with --lr-milestone (e.g. 35 of 50, CRIS's)")
def _multistep(optimizer: Optimizer, options: Mapping[str, Any]) -> LRSchedulerConfigType:
    milestones = sorted({int(epoch) for epoch in options.get("lr_milestones") or ()})
    if not milestones:
        raise LvsegError(MULTISTEP_NEEDS_MILESTONES)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return {"scheduler": scheduler, "interval": "epoch"}


def schedule_help() -> str:
    return "; ".join(f"{schedule.name} ({schedule.help})" for schedule in LR_SCHEDULES.values())


def optimizer_groups(groups: Iterable[Any], lr: float, lr_scales: Mapping[str, float]) -> list[dict[str, Any]]:
    """torch parameter groups from a model's :class:`~lvseg.models.base.ParameterGroup` s: each at ``lr`` times
    its ``lr_scales`` entry (else its own ``lr_scale``); empty groups are left out."""
    return [
        {"params": group.parameters, "lr": lr * float(lr_scales.get(group.name, group.lr_scale)), "name": group.name}
        for group in groups
        if group.parameters
    ]
