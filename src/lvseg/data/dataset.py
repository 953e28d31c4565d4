"""Torch dataset over validated samples: resized, optionally cached and augmented."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from lvseg.data.classes import read_sample_mask
from lvseg.data.images import read_image, read_mask, resize_image, resize_mask, to_channels
from lvseg.data.layout import Sample
from lvseg.data.seeding import AUGMENTATION_STREAM, PROMPT_STREAM, EpochClock, derived_seed
from lvseg.data.transforms import IMAGE_KEY, MASK_KEY, build_train_transform

logger = logging.getLogger(__name__)


class SegmentationDataset(Dataset):
    """Images, masks and texts of a split, resized to ``img_size`` x ``img_size``.

    Each item is a dict::

        {"image": float32 (C, S, S) in [0, 1], "mask": float32 (1, S, S) in {0, 1},
         "text": str, "name": str, "index": int, "labeled": bool}

    with ``C = channels`` and ``S = img_size``. Images are resized bicubic and
    masks nearest *before* augmentation; the resized arrays are stored as uint8
    (grayscale-looking images with one channel) and, with ``cache=True``, kept in
    memory so each file is decoded once per process. Samples without a mask
    (``mask_path`` None) give an all-zero mask and ``labeled=False``; no mask
    file is ever opened for them.

    Works with the default DataLoader collate and with ``num_workers > 0``: each
    worker reseeds the augmentation from its torch worker seed, so workers do not
    repeat each other's augmentations and runs are reproducible under
    ``torch.manual_seed``. Each worker holds its own cache; call :meth:`preload`
    before creating the DataLoader to decode once and share it with the workers.

    With an ``epoch_clock`` (:class:`lvseg.data.seeding.EpochClock`, which training sets at the start of each
    epoch) the augmentation and the prompt draw of a sample are instead seeded by (``seed``, epoch, index):
    what a sample gets in an epoch then depends on nothing drawn before, so a resumed run draws exactly what
    the uninterrupted run would have, in any worker.

    Args:
        samples: from :func:`lvseg.data.layout.load_split`.
        img_size: output height and width S.
        augment: False/"none", True/"paper" (the LViT paper's rot90 + flip or rotation) or "rotate"
            (location-preserving rotation only); see :func:`lvseg.data.transforms.build_train_transform`.
        channels: 3 (grayscale replicated) or 1 (luminance).
        cache: keep resized arrays in memory.
        seed: seed of the augmentation in the main process.
        transform: a custom joint transform on ``{"image", "mask"}`` used instead
            of the default augmentation when ``augment`` is True.
        sample_prompts: give a sample with ``prompt_choices`` (the VLSM study's prompt lists, ``random``
            prompt types) a text drawn at each access (a group, then a text of it; seeded like the
            augmentation) instead of its fixed ``text``; for training sets.
        epoch_clock: seed each sample's augmentation and prompt by (``seed``, epoch, index) (needs ``seed``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        img_size: int,
        augment: bool | str = False,
        channels: int = 3,
        cache: bool = True,
        seed: int | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        sample_prompts: bool = False,
        epoch_clock: EpochClock | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if epoch_clock is not None and seed is None:
            raise ValueError("an epoch_clock seeds samples by (seed, epoch, index): give a seed")
        self.samples = list(samples)
        self.img_size = int(img_size)
        self.augment = augment
        self.channels = channels
        self.cache = cache
        mode = "paper" if augment is True else (augment or "none")
        self.transform = None
        if mode != "none":
            self.transform = transform or build_train_transform(seed, mode=mode)
        self._cached: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(self.samples)
        self._reseeded_worker: int | None = None
        self.sample_prompts = sample_prompts
        self._prompt_rng = random.Random(seed)
        self._prompt_worker: int | None = None
        self.seed, self.epoch_clock = seed, epoch_clock

    def __len__(self) -> int:
        return len(self.samples)

    def texts(self) -> list[str]:
        """The description of every sample, in dataset order."""
        return [sample.text for sample in self.samples]

    def names(self) -> list[str]:
        """The name of every sample, in dataset order."""
        return [sample.name for sample in self.samples]

    def preload(self) -> None:
        """Decode and cache every sample now (does nothing when ``cache`` is False)."""
        if not self.cache:
            return
        for index in range(len(self.samples)):
            self._resized(index)
        logger.debug("cached %d resized samples at %d px", len(self.samples), self.img_size)

    def _load_resized(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode and resize one sample: uint8 image (1 or 3, S, S), uint8 mask (1, S, S) or None."""
        image = resize_image(read_image(sample.image_path, channels=None), self.img_size).numpy()
        image_u8 = np.rint(image * 255.0).astype(np.uint8)
        if (
            image_u8.shape[0] == 3
            and np.array_equal(image_u8[0], image_u8[1])
            and np.array_equal(image_u8[0], image_u8[2])
        ):
            image_u8 = image_u8[:1].copy()  # grayscale stored in RGB: keep one channel
        mask = None
        if sample.mask_path is not None:
            binary = read_mask(sample.mask_path) if sample.mask_value is None else read_sample_mask(sample)
            mask = resize_mask(binary, self.img_size).numpy()
        return image_u8, mask

    def _resized(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        cached = self._cached[index]
        if cached is not None:
            return cached
        loaded = self._load_resized(self.samples[index])
        if self.cache:
            self._cached[index] = loaded
        return loaded

    def _reseed_for_worker(self) -> None:
        """Give each DataLoader worker its own augmentation stream, from torch's worker seed."""
        worker = get_worker_info()
        if worker is None or self.transform is None or self._reseeded_worker == worker.id:
            return
        set_random_state = getattr(self.transform, "set_random_state", None)
        if set_random_state is not None:
            set_random_state(seed=worker.seed % (2**32))
        self._reseeded_worker = worker.id

    def _sample_seed(self, stream: int, index: int) -> int | None:
        """The seed of sample ``index``'s draws of ``stream`` in the clock's epoch; None without a clock."""
        if self.epoch_clock is None or self.seed is None:
            return None
        return derived_seed(self.seed, stream, self.epoch_clock.epoch, index)

    def _text(self, sample: Sample, index: int) -> str:
        """The sample's fixed text, or one drawn from its prompt choices (``sample_prompts``)."""
        if not (self.sample_prompts and sample.prompt_choices):
            return sample.text
        seed = self._sample_seed(PROMPT_STREAM, index)
        if seed is not None:
            rng = random.Random(seed)
            return rng.choice(rng.choice(sample.prompt_choices))
        worker = get_worker_info()
        if worker is not None and self._prompt_worker != worker.id:
            self._prompt_rng = random.Random(worker.seed)
            self._prompt_worker = worker.id
        return self._prompt_rng.choice(self._prompt_rng.choice(sample.prompt_choices))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self.samples)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.samples)} samples")
        sample = self.samples[index]
        image_u8, mask_u8 = self._resized(index)
        image = torch.from_numpy(to_channels(image_u8.astype(np.float32) / 255.0, self.channels))
        if mask_u8 is None:
            mask = torch.zeros((1, self.img_size, self.img_size), dtype=torch.float32)
        else:
            mask = torch.from_numpy(mask_u8.astype(np.float32))
        if self.transform is not None:
            seed = self._sample_seed(AUGMENTATION_STREAM, index)
            set_random_state = getattr(self.transform, "set_random_state", None)
            if seed is not None and set_random_state is not None:
                set_random_state(seed=seed)
            else:
                self._reseed_for_worker()
            out = self.transform({IMAGE_KEY: image, MASK_KEY: mask})
            image = plain_tensor(out[IMAGE_KEY]).clamp(0.0, 1.0)
            mask = (plain_tensor(out[MASK_KEY]) > 0.5).float()
        return {
            "image": image.contiguous(),
            "mask": mask.contiguous(),
            "text": self._text(sample, index),
            "name": sample.name,
            "index": index,
            "labeled": sample.mask_path is not None,
        }


def plain_tensor(value: Any) -> torch.Tensor:
    """A plain float32 tensor from a MONAI MetaTensor, tensor or array."""
    if hasattr(value, "as_tensor"):
        value = value.as_tensor()
    return torch.as_tensor(value, dtype=torch.float32)
