"""Data layer: the LViT folder layout and its validation, image/mask reading, dataset and augmentation.

Public entry points::

    samples = load_split(root, "train")                 # list[Sample], validated
    dataset = SegmentationDataset(samples, img_size=224, augment=True)
    item = dataset[0]   # {"image": (3, 224, 224), "mask": (1, 224, 224), "text", "name", "index", "labeled"}

Names are imported lazily, so ``import lvseg.data.images`` (used by inference and
serving) does not pay for importing MONAI, which only the dataset and transforms need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IMAGE_EXTENSIONS": "lvseg.data.images",
    "mask_to_uint8": "lvseg.data.images",
    "png_bytes": "lvseg.data.images",
    "read_image": "lvseg.data.images",
    "read_mask": "lvseg.data.images",
    "resize_image": "lvseg.data.images",
    "resize_mask": "lvseg.data.images",
    "to_channels": "lvseg.data.images",
    "to_display_rgb8": "lvseg.data.images",
    "write_png": "lvseg.data.images",
    "SPLIT_FOLDERS": "lvseg.data.layout",
    "Sample": "lvseg.data.layout",
    "TextRow": "lvseg.data.layout",
    "find_text_table": "lvseg.data.layout",
    "list_splits": "lvseg.data.layout",
    "load_split": "lvseg.data.layout",
    "read_text_table": "lvseg.data.layout",
    "SegmentationDataset": "lvseg.data.dataset",
    "build_train_transform": "lvseg.data.transforms",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from lvseg.data.dataset import SegmentationDataset
    from lvseg.data.images import (
        IMAGE_EXTENSIONS,
        mask_to_uint8,
        png_bytes,
        read_image,
        read_mask,
        resize_image,
        resize_mask,
        to_channels,
        to_display_rgb8,
        write_png,
    )
    from lvseg.data.layout import (
        SPLIT_FOLDERS,
        Sample,
        TextRow,
        find_text_table,
        list_splits,
        load_split,
        read_text_table,
    )
    from lvseg.data.transforms import build_train_transform


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lvseg.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
