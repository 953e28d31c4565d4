"""The strong view of an unlabeled image in semi-supervised training, as MONAI dictionary transforms.

Self-training only teaches something when the student sees a harder version of the image than the one
its pseudo-label came from; trained on the very image its target was predicted from, a model mostly
learns to repeat itself (and its mistakes). The strong view is

* a random affine (rotation in [-15, 15] degrees, scale in [0.9, 1.1], shift up to 6 % of the side),
  applied with the same parameters to the image, its pseudo-label and its LV reference mask so all three
  stay aligned; no flips, which would swap the sides that reports name;
* on the image only: a random gamma (contrast) change, Gaussian noise and Gaussian blur.

Works on tensors on any device (MONAI transforms keep the device); seeded through ``set_random_state``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
)

from lvseg.data.dataset import plain_tensor

MAX_ROTATION_DEGREES = 15.0
SCALE_RANGE = 0.1
MAX_SHIFT_FRACTION = 0.06


class StrongPerturbation:
    """Random joint geometric + image-only intensity perturbation of a batch.

    ``__call__(images (K, C, S, S) in [0, 1], targets (K, T, S, S), references (K, 1, S, S) | None)``
    returns the perturbed ``(images, targets, references)`` (T target channels move alike, e.g. a pseudo-label
    and its pixel weights); targets and references stay binary
    (nearest-neighbour resampling), images are clamped to [0, 1].
    """

    def __init__(self, img_size: int, seed: int | None = None) -> None:
        shift = MAX_SHIFT_FRACTION * img_size
        self._geometry = {
            with_reference: RandAffined(
                keys=("image", "target", "reference") if with_reference else ("image", "target"),
                prob=1.0,
                rotate_range=(math.radians(MAX_ROTATION_DEGREES),),
                scale_range=(SCALE_RANGE, SCALE_RANGE),
                translate_range=(shift, shift),
                mode=("bilinear", "nearest", "nearest") if with_reference else ("bilinear", "nearest"),
                padding_mode="zeros",
            )
            for with_reference in (False, True)
        }
        self._intensity = Compose(
            [
                RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.7, 1.5)),
                RandGaussianNoised(keys="image", prob=0.5, mean=0.0, std=0.03),
                RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
            ]
        )
        if seed is not None:
            transforms: list[Randomizable] = [*self._geometry.values(), self._intensity]
            for index, transform in enumerate(transforms):
                transform.set_random_state(seed=seed + index)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, references: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if images.shape[0] != targets.shape[0] or (references is not None and references.shape[0] != images.shape[0]):
            raise ValueError(f"batch sizes differ: images {tuple(images.shape)}, targets {tuple(targets.shape)}")
        geometry = self._geometry[references is not None]
        out_images, out_targets, out_references = [], [], []
        for k in range(images.shape[0]):
            item: dict[Hashable, torch.Tensor] = {"image": images[k], "target": targets[k].float()}
            if references is not None:
                item["reference"] = references[k].float()
            item = self._intensity(geometry(item))
            out_images.append(plain_tensor(item["image"]).clamp(0.0, 1.0))
            out_targets.append(plain_tensor(item["target"]))
            if references is not None:
                out_references.append(plain_tensor(item["reference"]))
        return (
            torch.stack(out_images).to(images.dtype),
            torch.stack(out_targets),
            torch.stack(out_references) if references is not None else None,
        )
