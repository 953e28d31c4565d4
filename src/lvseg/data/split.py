"""Labeled/unlabeled splits of a training set, for semi-supervised training.

A split keeps the masks of some training images (``labeled``) and drops the others' (``unlabeled``
samples carry ``mask_path=None``, so nothing downstream can open their masks). :class:`BalancedSemiSampler`
draws batches that are half labeled, however few the labels.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from lvseg.data.layout import Sample
from lvseg.errors import LvsegError


@dataclass(frozen=True)
class LabeledSplit:
    """Training samples divided into those whose masks are used and those trained without masks.

    ``unlabeled`` samples have ``mask_path=None``: nothing downstream can open their masks.
    """

    labeled: list[Sample]
    unlabeled: list[Sample]

    def to_json(self) -> dict[str, list[str]]:
        return {"labeled": [s.name for s in self.labeled], "unlabeled": [s.name for s in self.unlabeled]}


def _drop_masks(samples: Sequence[Sample]) -> list[Sample]:
    return [dataclasses.replace(sample, mask_path=None) for sample in samples]


def split_labeled(samples: Sequence[Sample], fraction: float, seed: int = 0) -> LabeledSplit:
    """A seeded split: ``round(fraction * N)`` (at least 1) labeled samples, the rest unlabeled.

    The labeled samples are drawn (``random.Random(seed)``) among the samples that have a mask file,
    from the samples sorted by name, so the split depends only on the names, the fraction and the seed.
    Both lists keep name order.
    """
    if not 0.0 < fraction <= 1.0:
        raise LvsegError(f"--labeled-fraction {fraction} is not in (0, 1]")
    ordered = sorted(samples, key=lambda sample: sample.name)
    candidates = [sample.name for sample in ordered if sample.mask_path is not None]
    n_labeled = max(1, round(fraction * len(ordered)))
    if n_labeled > len(candidates):
        raise LvsegError(
            f"--labeled-fraction {fraction} asks for {n_labeled} labeled images but only {len(candidates)} "
            "training images have a mask"
        )
    chosen = set(random.Random(seed).sample(candidates, n_labeled))
    return LabeledSplit(
        labeled=[s for s in ordered if s.name in chosen],
        unlabeled=_drop_masks([s for s in ordered if s.name not in chosen]),
    )


def read_labeled_list(path: str | Path, samples: Sequence[Sample]) -> LabeledSplit:
    """Split by a text file naming the labeled images, one per line (image stem or file name; ``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise LvsegError(f"--labeled-list '{path}' does not exist")
    by_name = {sample.name: sample for sample in samples}
    wanted: set[str] = set()
    unknown: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        name = entry if entry in by_name else Path(entry).stem
        if name.startswith("mask_") and name not in by_name:
            name = name[len("mask_") :]
        (wanted.add(name) if name in by_name else unknown.append(entry))
    if unknown:
        raise LvsegError(
            f"--labeled-list '{path}' names {len(unknown)} image(s) not in the training split: {unknown[:5]}"
        )
    if not wanted:
        raise LvsegError(f"--labeled-list '{path}' names no image")
    missing = sorted(name for name in wanted if by_name[name].mask_path is None)
    if missing:
        raise LvsegError(f"--labeled-list '{path}' names image(s) without a mask: {missing[:5]}")
    ordered = sorted(samples, key=lambda sample: sample.name)
    return LabeledSplit(
        labeled=[s for s in ordered if s.name in wanted],
        unlabeled=_drop_masks([s for s in ordered if s.name not in wanted]),
    )


def check_labeled_masks(samples: Sequence[Sample]) -> None:
    """Validate the masks of the labeled samples only (readable, same size as the image)."""
    from lvseg.data.layout import _check_readable
    from lvseg.errors import DataValidationError

    problems = []
    for sample in samples:
        assert sample.mask_path is not None
        problem, mask_size = _check_readable(sample.mask_path, "mask")
        if problem:
            problems.append(problem)
            continue
        _, image_size = _check_readable(sample.image_path, "image")
        if image_size is not None and mask_size != image_size:
            problems.append(
                f"mask '{sample.mask_path}' is {mask_size} but its image '{sample.image_path}' is {image_size}"
            )
    if problems:
        raise DataValidationError(problems, where="labeled training masks")


class BalancedSemiSampler(DistributedSampler):
    """Indices into ``ConcatDataset([labeled, unlabeled])`` alternating labeled and unlabeled images.

    Every epoch visits each unlabeled image exactly once (the EPI update needs one prediction per image
    per epoch) in a fresh seeded order, and pairs it with a labeled image, cycling through reshuffled
    labeled images as often as needed. A batch is thus half labeled, however few the labels: the
    supervised signal is not diluted by the unlabeled majority. Epoch length: 2 x n_unlabeled.

    Under DDP (``num_replicas`` processes, this one ``rank``) the pairs are dealt out in turn, so every
    process trains on half-labeled batches and the processes together visit each unlabeled image once
    (the last pairs repeat from the start when ``n_unlabeled`` is not a multiple of ``num_replicas``: every
    process must take the same number of steps). It is a ``DistributedSampler`` so Lightning uses it as it
    is rather than wrapping it (a wrapper would deal out single indices and break the pairing).
    """

    def __init__(self, n_labeled: int, n_unlabeled: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if n_labeled < 1 or n_unlabeled < 1:
            raise ValueError(f"need labeled and unlabeled images, got {n_labeled} and {n_unlabeled}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        super().__init__(
            range(n_labeled + n_unlabeled),  # type: ignore[arg-type]  # the sampler only reads len()
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
            seed=seed,
        )
        self.n_labeled, self.n_unlabeled = n_labeled, n_unlabeled
        self.pairs_per_replica = -(-n_unlabeled // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 2 * self.pairs_per_replica

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        unlabeled = (torch.randperm(self.n_unlabeled, generator=generator) + self.n_labeled).tolist()
        cycles = -(-self.n_unlabeled // self.n_labeled)
        labeled = torch.cat([torch.randperm(self.n_labeled, generator=generator) for _ in range(cycles)]).tolist()
        pairs = list(zip(labeled, unlabeled))
        pairs += pairs[: self.pairs_per_replica * self.num_replicas - len(pairs)]
        for labeled_index, unlabeled_index in pairs[self.rank :: self.num_replicas]:
            yield labeled_index
            yield unlabeled_index
