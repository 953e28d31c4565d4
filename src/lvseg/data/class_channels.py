"""Multi-class data for a model with one output channel per class: one sample per image, a (K, S, S) target.

A text model is asked for one structure per prompt, so a multi-class set gives it one (image, prompt, binary
mask) sample per image and class (:mod:`lvseg.data.classes`, :mod:`lvseg.data.vlsm`). An image-only model has no
prompt to choose with; its fair counterpart (the U-Net baseline of the LViT and VLSM studies) predicts every
class at once: one output channel per class of the set's **class table**, in table order. Here the per-class
samples of a split are grouped by image (:func:`group_by_image`) and :class:`ClassChannelDataset` gives, per
image, the mask (K, S, S) whose channel k is the binary mask of the k-th class (empty where the class is absent,
or where the set lists no sample of it for that image: a VLSM-layout set lists present structures only).

The class table (:func:`dataset_class_table`) is the label-map layout's (``classes.csv`` or ``--classes``: values,
names, templates), else the samples' class names in first-seen order with the values 1 ... K. A training run
records it in its checkpoint as ``hparams["class_table"]`` (:func:`class_table_record`: ``{"value", "name",
"template"}`` rows in table order), for every model trained on multi-class data, with the options that read the
data (``hparams["data_options"]``, :func:`data_options_record`), so that evaluation and prediction rebuild the
same classes and samples. :class:`ClassTraining` is what training asks: the table, whether the model gets one
channel per class, the model option that sets K, the datasets and the records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lvseg.data.classes import ClassInfo, class_table_for, read_sample_mask
from lvseg.data.dataset import SegmentationDataset
from lvseg.data.formats import DataOptions, class_names, detect_layout
from lvseg.data.images import resize_mask
from lvseg.data.layout import Sample
from lvseg.errors import DataValidationError, LvsegError

logger = logging.getLogger(__name__)

#: The model option that sets the number of output channels (``lvseg.models.base.CLASS_CHANNELS_OPTION``;
#: named here too: data sits below models).
CLASS_CHANNELS_OPTION = "n_classes"


# ------------------------------------------------------------------------------------------- class tables


def dataset_class_table(
    root: str | os.PathLike[str], options: DataOptions, samples: Sequence[Sample]
) -> list[ClassInfo]:
    """The class table of a dataset in table order ([] for a binary set, whose samples name no class).

    Label-map layout: ``--classes`` or ``classes.csv`` (values, names, templates), restricted to nothing: every
    listed class is a channel, present in the samples or not. Other layouts (VLSM: one record per structure): the
    class names of ``samples`` in first-seen order, with the values 1 ... K.
    """
    names = class_names(list(samples))
    if not names:
        return []
    if detect_layout(root).name == "lvit":
        table = class_table_for(root, options.classes)
        if table:
            return table
    return [ClassInfo(value, name) for value, name in enumerate(names, start=1)]


def class_table_record(table: Sequence[ClassInfo]) -> list[dict[str, Any]]:
    """The checkpoint's ``hparams["class_table"]``: ``[{"value": 1, "name": "liver", "template": None}, ...]``."""
    return [{"value": info.value, "name": info.name, "template": info.template} for info in table]


def classes_spec(table: Sequence[ClassInfo]) -> str:
    """A class table as ``--classes`` writes it: ``"1=liver,2=kidney"`` (templates are not part of it)."""
    return ",".join(f"{info.value}={info.name}" for info in table)


def data_options_record(
    root: str | os.PathLike[str], options: DataOptions, balance_classes: bool = False
) -> dict[str, Any]:
    """The checkpoint's ``hparams["data_options"]``: the dataset layout and the options that read it (class spec,
    prompt type, negative ratio, modality, per-split image folders, seed) and whether classes were balanced."""
    return {
        "layout": detect_layout(root).name,
        "classes": options.classes,
        "prompt_type": options.prompt_type,
        "negative_ratio": float(options.negative_ratio),
        "modality": options.modality,
        "split_image_folders": options.split_image_folders,
        "seed": int(options.seed),
        "balance_classes": bool(balance_classes),
    }


def with_recorded_classes(
    options: DataOptions, table: Sequence[ClassInfo], root: str | os.PathLike[str]
) -> DataOptions:
    """``options`` reading a label-map set with a checkpoint's class ``table`` when they name no classes and the
    set has no ``classes.csv`` (its masks would otherwise be read as binary): the classes the model learnt."""
    from lvseg.data.classes import CLASS_TABLE_NAME

    if not table or options.classes or (Path(root) / CLASS_TABLE_NAME).is_file():
        return options
    if detect_layout(root).name != "lvit":
        return options
    logger.info("'%s' has no class table: reading its label maps with the checkpoint's (%s)", root, classes_spec(table))
    return replace(options, classes=classes_spec(table))


# ------------------------------------------------------------------------------------------ grouping


@dataclass(frozen=True)
class ImageClasses:
    """One image of a multi-class split: ``sample`` names the image (its file's stem, ``text`` empty, a mask of
    one of its classes) and ``members`` holds, per class of the table, the per-class sample of that image (None:
    the split lists none, so the class's channel is empty)."""

    sample: Sample
    members: tuple[Sample | None, ...]

    def read_channels(self) -> np.ndarray:
        """The target (K, H, W) uint8 {0, 1}: channel k the binary mask of the k-th class."""
        present = [read_sample_mask(member) if member is not None else None for member in self.members]
        shape = next(mask.shape for mask in present if mask is not None)
        return np.stack([mask if mask is not None else np.zeros(shape, np.uint8) for mask in present])


def group_by_image(samples: Sequence[Sample], table: Sequence[ClassInfo]) -> list[ImageClasses]:
    """The per-class ``samples`` of a split grouped by image, in first-seen order, with one member per class of
    ``table``. Raises :class:`DataValidationError` listing, at once, every sample that names no class or a class
    the table lacks, and every (image, class) listed twice."""
    position = {info.name: index for index, info in enumerate(table)}
    problems: list[str] = []
    groups: dict[Path, list[Sample | None]] = {}
    for sample in samples:
        if not sample.class_name:
            problems.append(f"sample '{sample.name}' names no class (a binary sample in a multi-class set)")
            continue
        if sample.class_name not in position:
            problems.append(
                f"sample '{sample.name}' is of class '{sample.class_name}', which the class table lacks "
                f"(classes: {', '.join(info.name for info in table)})"
            )
            continue
        members = groups.setdefault(Path(sample.image_path), [None] * len(table))
        index = position[sample.class_name]
        if members[index] is not None:
            problems.append(f"image '{sample.image_path}' lists the class '{sample.class_name}' twice")
            continue
        members[index] = sample
    if problems:
        raise DataValidationError(problems, where="the multi-class samples")
    images = []
    for path, members in groups.items():
        first = next(member for member in members if member is not None)
        image = replace(first, name=path.stem, text="", class_name="", mask_value=None, prompt_choices=())
        images.append(ImageClasses(image, tuple(members)))
    return images


class ClassChannelDataset(SegmentationDataset):
    """:class:`SegmentationDataset` over the images of per-class ``samples``, one item per image, whose ``mask`` is
    float32 (K, S, S) in {0, 1}: channel k the k-th class of ``table`` (every other key as the base class's;
    ``text`` is empty). Augmentation moves every channel with the image."""

    def __init__(self, samples: Sequence[Sample], table: Sequence[ClassInfo], img_size: int, **options: Any) -> None:
        self.table = list(table)
        self.images = group_by_image(samples, table)
        self._members = {image.sample.image_path: image for image in self.images}
        super().__init__([image.sample for image in self.images], img_size, **options)

    def _load_resized(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        image_u8, _ = super()._load_resized(replace(sample, mask_path=None))
        channels = self._members[sample.image_path].read_channels()
        mask = np.concatenate([resize_mask(channel, self.img_size).numpy() for channel in channels])
        return image_u8, mask


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class ClassTraining:
    """How one model trains on one dataset's classes.

    ``table``: the dataset's class table ([] for a binary set); ``channels``: whether the model gets one output
    channel per class (it declares ``multi_channel_classes`` and the set is multi-class): then it trains on one
    sample per image with a (K, S, S) target, else on the samples as they are (a text model: per class).
    """

    table: tuple[ClassInfo, ...]
    channels: bool

    @classmethod
    def plan(
        cls, multi_channel_model: bool, root: str | os.PathLike[str], options: DataOptions, samples: Sequence[Sample]
    ) -> ClassTraining:
        """The plan for a model that can (``multi_channel_model``) or cannot give one channel per class."""
        table = tuple(dataset_class_table(root, options, samples))
        return cls(table, bool(multi_channel_model and table))

    @property
    def n_classes(self) -> int:
        """Output channels of the model: K with :attr:`channels`, else 1."""
        return len(self.table) if self.channels else 1

    def model_options(
        self, model: str, multi_channel_model: bool, given: Mapping[str, Any], balance_classes: bool = False
    ) -> dict[str, Any]:
        """``given`` (the run's model options) with ``n_classes`` set for a model with one channel per class.

        Raises :class:`LvsegError` listing every contradiction at once (an ``n_classes`` other than the set's
        number of classes; more than one channel on a binary set)."""
        options = dict(given)
        problems = []
        asked = options.get(CLASS_CHANNELS_OPTION)
        if self.channels:
            if asked is not None and asked != len(self.table):
                problems.append(
                    f"--model-option {CLASS_CHANNELS_OPTION}={asked}: the data has {len(self.table)} classes "
                    f"({', '.join(info.name for info in self.table)}), one output channel each"
                )
            options[CLASS_CHANNELS_OPTION] = len(self.table)
            if balance_classes:
                logger.warning(
                    "--balance-classes does not apply to model '%s': it learns every class of an image at once "
                    "(one sample per image), so every class is seen equally often",
                    model,
                )
        elif multi_channel_model and asked not in (None, 1):
            problems.append(
                f"--model-option {CLASS_CHANNELS_OPTION}={asked}: the data is binary (one structure); give it a "
                "class table (classes.csv or --classes) for one output channel per class"
            )
        if problems:
            raise LvsegError(f"model '{model}': " + "; ".join(problems))
        return options

    def dataset(self, samples: Sequence[Sample], img_size: int, **options: Any) -> SegmentationDataset:
        """The dataset the model trains or validates on: per image (K channels) or per sample."""
        if self.channels:
            dataset: SegmentationDataset = ClassChannelDataset(samples, self.table, img_size, **options)
            logger.info(
                "%d samples -> %d images with %d class channels (%s)",
                len(samples),
                len(dataset),
                len(self.table),
                ", ".join(info.name for info in self.table),
            )
            return dataset
        return SegmentationDataset(samples, img_size, **options)

    def hparams(
        self, root: str | os.PathLike[str], options: DataOptions, balance_classes: bool = False
    ) -> dict[str, Any]:
        """What the checkpoint records: ``data_options`` always, ``class_table`` for a multi-class set."""
        record: dict[str, Any] = {"data_options": data_options_record(root, options, balance_classes)}
        if self.table:
            record["class_table"] = class_table_record(self.table)
        return record


def training_data_options(multi_channel_model: bool, options: DataOptions) -> DataOptions:
    """The options that read a training set for a model: a model with one channel per class sees every image
    (``negative_ratio`` 1: an absent class is an empty channel, never a dropped image)."""
    if multi_channel_model and options.negative_ratio != 1.0:
        logger.info("--negative-ratio %g is ignored: an absent class is an empty channel", options.negative_ratio)
        return replace(options, negative_ratio=1.0)
    return options


__all__ = [
    "CLASS_CHANNELS_OPTION",
    "ClassChannelDataset",
    "ClassTraining",
    "ImageClasses",
    "class_table_record",
    "classes_spec",
    "data_options_record",
    "dataset_class_table",
    "group_by_image",
    "training_data_options",
    "with_recorded_classes",
]
