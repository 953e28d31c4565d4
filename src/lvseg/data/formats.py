"""Which dataset layout a folder is in, and reading its splits through one entry point.

Training, evaluation and ``lvseg data check`` call :func:`load_dataset_split`; the layout is detected by
the files present (:data:`LAYOUTS`, first match wins):

* ``vlsm``: ``anns/{train,val,test}.json`` beside ``images/`` and ``masks/`` (:mod:`lvseg.data.vlsm`, the
  VLSM study's prepared sets: Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation
  using Vision-Language Models");
* ``lvit``: ``Train_Folder/``, ``Val_Folder/``, ``Test_Folder/`` (:mod:`lvseg.data.layout`); with a class
  table (``classes.csv`` at the root, or ``--classes``) its masks are label maps and each (image, class)
  becomes a sample (:mod:`lvseg.data.classes`); without one it is binary, read exactly as before.

A new layout is one :class:`DatasetLayout` passed to :func:`register_layout`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvseg.data.layout import SPLIT_FOLDERS, Sample, list_splits, load_split
from lvseg.errors import LvsegError

logger = logging.getLogger(__name__)

#: ``--prompt-type`` values: the VLSM study's p0 ... p9 and random.
PROMPT_TYPES: tuple[str, ...] = (*(f"p{number}" for number in range(10)), "random")


#: What a checkpoint's data is read with when not given again: how training worded its per-class prompts and
#: where the images lie. The negative ratio is not among them: evaluation scores every (image, class) pair.
RECORDED_DATA_OPTIONS = ("prompt_type", "modality", "split_image_folders")


def recorded_data_options(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The data options training recorded in a checkpoint's hyper-parameters: ``data_options``
    (:func:`lvseg.data.class_channels.data_options_record`), else a text model's ``class_prompting``, else {}."""
    return dict(hparams.get("data_options") or hparams.get("class_prompting") or {})


@dataclass(frozen=True)
class DataOptions:
    """How to read a multi-class dataset (ignored by a binary LViT-layout one).

    ``classes``: ``"1=liver,2=kidney"`` (default: ``classes.csv`` at the root, when present);
    ``negative_ratio``: share of (image, absent class) pairs kept as negative samples, in [0, 1];
    ``prompt_type``: p0 ... p9 or random (see :mod:`lvseg.data.vlsm` and :mod:`lvseg.data.classes`);
    ``modality``: the images' modality in written per-class prompts ("CT slice");
    ``split_image_folders``: VLSM layout, images in ``images/<split>/`` (None: when that folder exists);
    ``seed``: of the negative draw and of the fixed evaluation prompt.
    """

    classes: str | None = None
    negative_ratio: float = 1.0
    prompt_type: str = "random"
    modality: str = "image"
    split_image_folders: bool | None = None
    seed: int = 0

    @classmethod
    def given_or_recorded(cls, recorded: Mapping[str, Any] | None, **given: Any) -> DataOptions:
        """The options a verb reading a checkpoint's data uses (``lvseg evaluate``, ``lvseg tune-backend``): each
        of ``given`` that is not None, else for :data:`RECORDED_DATA_OPTIONS` what training ``recorded``
        (:func:`recorded_data_options`), else the default."""
        defaults, recorded = cls(), recorded or {}
        values = {}
        for name in cls.__dataclass_fields__:
            value = given.get(name)
            if value is None and name in RECORDED_DATA_OPTIONS:
                value = recorded.get(name)
            values[name] = getattr(defaults, name) if value is None else value
        return cls(**values)

    @classmethod
    def from_config(cls, config: Any) -> DataOptions:
        """The options of anything with these attributes (a training config, a CLI's values); missing ones
        keep their defaults."""
        defaults = cls()
        return cls(**{name: getattr(config, name, getattr(defaults, name)) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DatasetLayout:
    """One dataset layout: how to recognise it, list its splits and read one (validated, every problem at
    once: :class:`~lvseg.errors.DataValidationError`)."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    list_splits: Callable[[Path], list[str]]
    load: Callable[[Path, str, DataOptions, bool], list[Sample]]


LAYOUTS: dict[str, DatasetLayout] = {}


def register_layout(layout: DatasetLayout) -> None:
    """Add a layout (after those registered before it: detection tries them in order)."""
    LAYOUTS[layout.name] = layout


def detect_layout(root: str | os.PathLike[str]) -> DatasetLayout:
    """The first registered layout whose files are under ``root``; :class:`LvsegError` listing what each
    layout expects when none is."""
    base = Path(root)
    if not base.is_dir():
        raise LvsegError(f"dataset root '{root}' not found")
    for layout in LAYOUTS.values():
        if layout.detect(base):
            return layout
    expected = "; ".join(f"{layout.name}: {layout.description}" for layout in LAYOUTS.values())
    raise LvsegError(f"'{root}' is in no known dataset layout; expected {expected}")


def list_dataset_splits(root: str | os.PathLike[str]) -> list[str]:
    """The splits (train, val, test, in that order) present under ``root`` in its layout."""
    return detect_layout(root).list_splits(Path(root))


def load_dataset_split(
    root: str | os.PathLike[str], split: str, options: DataOptions | None = None, require_masks: bool = True
) -> list[Sample]:
    """The validated samples of ``split`` of the dataset at ``root``, whatever its layout (one per image of a
    binary set, one per (image, structure) of a multi-class one)."""
    return detect_layout(root).load(Path(root), split, options or DataOptions(), require_masks)


def class_names(samples: list[Sample]) -> list[str]:
    """The distinct non-empty ``class_name`` values of ``samples``, in first-seen order ([] for a binary set)."""
    return list(dict.fromkeys(sample.class_name for sample in samples if sample.class_name))


def _load_lvit(root: Path, split: str, options: DataOptions, require_masks: bool) -> list[Sample]:
    from lvseg.data.classes import class_table_for, expand_label_maps

    classes = class_table_for(root, options.classes)
    if classes is None:
        return load_split(root, split, require_masks=require_masks)
    samples = load_split(root, split, require_masks=require_masks, require_text=False)
    unlabeled = [sample.image_path.name for sample in samples if not sample.labeled]
    if unlabeled:
        raise LvsegError(
            f"'{root}' has a class table (label maps): images without masks (semi-supervised training) are not "
            f"supported for it; every image needs its label map ({len(unlabeled)} in '{split}' have none, e.g. "
            f"'{unlabeled[0]}')"
        )
    return expand_label_maps(
        samples,
        classes,
        split_dir=root / SPLIT_FOLDERS[split],
        negative_ratio=options.negative_ratio,
        prompt_type=options.prompt_type,
        modality=options.modality,
        seed=options.seed,
    )


def _load_vlsm(root: Path, split: str, options: DataOptions, require_masks: bool) -> list[Sample]:
    from lvseg.data.vlsm import load_vlsm_split

    if options.classes:
        logger.warning("--classes is ignored: a VLSM-layout set has one record per structure")
    return load_vlsm_split(root, split, options.prompt_type, options.split_image_folders, options.seed)


def _is_vlsm(root: Path) -> bool:
    from lvseg.data.vlsm import is_vlsm_root

    return is_vlsm_root(root)


def _list_vlsm(root: Path) -> list[str]:
    from lvseg.data.vlsm import list_vlsm_splits

    return list_vlsm_splits(root)


register_layout(
    DatasetLayout(
        "vlsm",
        "anns/train.json, anns/val.json, anns/test.json beside images/ and masks/ (the VLSM study's sets)",
        _is_vlsm,
        _list_vlsm,
        _load_vlsm,
    )
)
register_layout(
    DatasetLayout(
        "lvit",
        "Train_Folder/, Val_Folder/, Test_Folder/ with img/, labelcol/ and <Split>_text.xlsx or .csv",
        lambda root: bool(list_splits(root)),
        lambda root: list_splits(root),
        _load_lvit,
    )
)
