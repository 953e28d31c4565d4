"""Per-epoch seeding of a training run, so that ``--resume`` reproduces the uninterrupted run.

:class:`EpochSeeding` is the callback ``lvseg train`` adds: at the start of every training epoch it re-seeds
torch's (CPU and CUDA), NumPy's and Python's global generators from (seed, epoch) (what dropout and any other
draw of the model or the loss use) and sets the run's :class:`~lvseg.data.seeding.EpochClock` (what the
training datasets seed each sample's augmentation and prompt by). With the data order of
:class:`~lvseg.data.seeding.EpochSampler` (a function of (seed, epoch)) nothing an epoch draws depends on the
epochs before it, so an epoch trained after a resume draws what it would have drawn without the interruption.
The training DataLoaders get a generator of their own (:func:`loader_generator`): creating their iterator
then draws nothing from torch's global generator (Lightning creates it at a different point of a resumed run).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lvseg.data.seeding import GLOBAL_STREAM, LOADER_STREAM, EpochClock, derived_seed

log = logging.getLogger(__name__)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator (its workers' base seed), seeded from the run's ``seed``."""
    return torch.Generator().manual_seed(derived_seed(seed, LOADER_STREAM))


def seed_global_generators(seed: int, epoch: int) -> int:
    """Seed torch (every device), NumPy and ``random`` from (``seed``, ``epoch``); returns the seed used."""
    value = derived_seed(seed, GLOBAL_STREAM, epoch)
    torch.manual_seed(value)  # the CUDA generators too
    np.random.seed(value)
    random.seed(value)
    return value


class EpochSeeding(Callback):
    """At each training epoch's start: the global generators seeded by (``seed``, epoch), ``clock`` set to it."""

    def __init__(self, seed: int, clock: EpochClock) -> None:
        self.seed, self.clock = int(seed), clock

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        self.clock.set(epoch)
        seed_global_generators(self.seed, epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("seed")
        if saved is not None and int(saved) != self.seed:
            log.warning(
                "--resume: the interrupted run was seeded with --seed %s and this one with %s; the epochs from "
                "here on draw other data orders and augmentations than the interrupted run would have",
                saved,
                self.seed,
            )
