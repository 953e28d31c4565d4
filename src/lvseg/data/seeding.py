"""Training randomness as a function of (seed, epoch[, index]): what makes a resumed run reproduce an
uninterrupted one.

A run resumed from ``last.ckpt`` restores the weights, the optimiser and the loop counters, but not the state of
the random number generators that choose the data order, the augmentation and the prompts drawn: re-seeded at
the start of the resumed process, they would replay the first epoch's draws. Here each of them is instead
derived afresh from the run's seed and the epoch (and the sample), so the epoch after a resume draws exactly
what it would have drawn without the interruption, whichever process (or DataLoader worker) computes it:

* :class:`EpochSampler`: the indices of an epoch, a permutation (or weighted draws) seeded by (seed, epoch);
* :class:`EpochClock`: the epoch, in shared memory so DataLoader workers read what the main process sets;
  :class:`lvseg.data.dataset.SegmentationDataset` seeds each sample's augmentation and prompt draw from
  (seed, epoch, index) when it follows one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed
from torch.utils.data import DistributedSampler

#: Streams of :func:`derived_seed`, so that the data order, the augmentation, the prompts and the global
#: generators of one (seed, epoch) never share a seed.
ORDER_STREAM, AUGMENTATION_STREAM, PROMPT_STREAM, GLOBAL_STREAM, LOADER_STREAM, PERTURBATION_STREAM = range(1, 7)


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**31) from non-negative integers (e.g. seed, stream, epoch, index) through NumPy's
    ``SeedSequence``: well mixed, so nearby tuples give unrelated streams; small enough for any generator
    (NumPy's ``RandomState`` takes at most 2**32 - 1, MONAI adds small offsets)."""
    if any(int(part) < 0 for part in parts):
        raise ValueError(f"seed parts must be non-negative integers, got {parts}")
    state = np.random.SeedSequence([int(part) for part in parts]).generate_state(1, dtype=np.uint32)[0]
    return int(state) & 0x7FFFFFFF


class EpochClock:
    """The current training epoch, shared with DataLoader worker processes.

    The value lives in a shared-memory tensor: workers (forked or spawned, persistent or not) read the epoch the
    main process set last (:meth:`set`, called at the start of each training epoch, before that epoch's indices
    reach the workers).
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = torch.full((), int(epoch), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._value.item())

    def set(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self._value.fill_(int(epoch))


def _replicas() -> tuple[int, int]:
    """(world size, rank) of the running process group; (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class EpochSampler(DistributedSampler):
    """The indices of ``size`` samples for one epoch, a function of (``seed``, epoch) alone.

    Without ``weights``: a permutation of ``range(size)``. With ``weights`` (``size`` non-negative numbers):
    ``size`` draws with replacement, index ``i`` with probability ``weights[i] / sum(weights)`` (e.g. class
    balancing). Lightning calls :meth:`set_epoch` at the start of each epoch; ``start_epoch`` is the epoch of
    the first iteration (a resumed run's next epoch: with DataLoader workers the first epoch's indices are
    drawn before Lightning sets it).

    Under DDP each process takes every ``world_size``-th index of the epoch's list from its rank on, the list
    padded from its start to a multiple of the world size (as ``DistributedSampler`` does); it is a
    ``DistributedSampler`` so that Lightning uses it as it is rather than wrapping it. World size and rank are
    read when the sampler is iterated (the process group exists only once the trainer runs).
    """

    def __init__(
        self, size: int, seed: int, start_epoch: int = 0, weights: Sequence[float] | torch.Tensor | None = None
    ) -> None:
        if size < 1:
            raise ValueError(f"need at least one sample, got {size}")
        super().__init__(range(size), num_replicas=1, rank=0, shuffle=True, seed=int(seed))  # type: ignore[arg-type]  # the sampler only reads len()
        self.size = int(size)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and (self.weights.shape != (self.size,) or not bool((self.weights >= 0).all())):
            raise ValueError(f"weights must be {self.size} non-negative numbers, got shape {tuple(self.weights.shape)}")
        self.epoch = int(start_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> list[int]:
        """Every index of ``epoch`` (all processes together), in order."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, ORDER_STREAM, epoch))
        if self.weights is None:
            return torch.randperm(self.size, generator=generator).tolist()
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()

    def __len__(self) -> int:
        world, _ = _replicas()
        return math.ceil(self.size / world)

    def __iter__(self) -> Iterator[int]:
        world, rank = _replicas()
        indices = self.epoch_indices(self.epoch)
        total = math.ceil(self.size / world) * world
        indices = (indices * math.ceil(total / len(indices)))[:total]
        return iter(indices[rank::world])
