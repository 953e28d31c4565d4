"""Training augmentation of the LViT paper, as MONAI dictionary transforms.

Two modes: ``"paper"`` (below) and ``"rotate"``, the free rotation alone. Flips and 90-degree
rotations swap left and right or upper and lower, so they contradict reports that name where the
lesions are ("upper left lung"); use ``"rotate"`` (or none) when the text carries locations.

Applied jointly to ``{"image": (C, H, W), "mask": (1, H, W)}`` so both stay
aligned: with probability 0.5 a random 90-degree rotation (k uniform in 0..3)
followed by a flip along a random spatial axis; otherwise a random rotation by
an angle uniform in [-20, 20] degrees (bilinear for the image, nearest for the
mask, zero padding, same size). Resizing is done by the dataset beforehand.
"""

from __future__ import annotations

import math

from monai.transforms import (
    Compose,
    OneOf,
    RandAxisFlipd,
    RandRotate90d,
    RandRotated,
)

IMAGE_KEY = "image"
MASK_KEY = "mask"
KEYS = (IMAGE_KEY, MASK_KEY)

#: Largest absolute angle of the free rotation branch, in degrees.
MAX_ROTATION_DEGREES = 20.0
AUGMENTATION_MODES = ("paper", "rotate", "none")


def build_train_transform(
    seed: int | None = None, max_rotation_degrees: float = MAX_ROTATION_DEGREES, mode: str = "paper"
) -> Compose:
    """Build the paper's joint image/mask augmentation (``mode="paper"``) or its location-preserving
    part alone (``mode="rotate"``: a rotation in [-max, max] degrees with probability 0.5).

    Args:
        seed: seeds the transform's random state (``set_random_state``); the same
            seed gives the same sequence of augmentations. None leaves it unseeded.
        max_rotation_degrees: range of the free rotation branch, [-max, max].

    Returns:
        A MONAI ``Compose`` taking and returning a dict with ``image`` (C, H, W)
        and ``mask`` (1, H, W) tensors (MONAI returns ``MetaTensor``; call
        ``.as_tensor()`` for plain tensors). Other keys pass through unchanged.
    """
    # RandRotate90 draws k in 1..max_k when it fires, so firing with probability
    # 0.75 makes k uniform over 0..3; RandAxisFlip flips along one random spatial axis.
    if mode not in ("paper", "rotate"):
        raise ValueError(f"augmentation mode {mode!r} is not one of 'paper', 'rotate'")
    rot90_and_flip = Compose(
        [
            RandRotate90d(keys=KEYS, prob=0.75, max_k=3, spatial_axes=(0, 1)),
            RandAxisFlipd(keys=KEYS, prob=1.0),
        ]
    )
    free_rotation = RandRotated(
        keys=KEYS,
        range_x=math.radians(max_rotation_degrees),
        prob=1.0 if mode == "paper" else 0.5,
        keep_size=True,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
        align_corners=False,
    )
    if mode == "paper":
        transform = Compose([OneOf([rot90_and_flip, free_rotation], weights=[0.5, 0.5])])
    else:
        transform = Compose([free_rotation])
    if seed is not None:
        transform.set_random_state(seed=seed)
    return transform
