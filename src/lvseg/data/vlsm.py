"""The dataset layout of the VLSM study's prepared sets (Poudel et al., "Exploring Transfer Learning in Medical
Image Segmentation using Vision-Language Models", MIDL 2024; github naamiinepal/medvlsm, ``data/*/``)::

    DATA/images/                 images (or images/train/, images/val/, images/test/: per-split folders)
    DATA/masks/                  binary masks, possibly in subfolders (CAMUS: mask_1/, mask_2/, mask_3/)
    DATA/anns/train.json         a list of records, one per (image, structure)
    DATA/anns/val.json
    DATA/anns/test.json

A record::

    {"img_name": "patient0001_2CH_ED.png",            # relative to images/
     "mask_name": "mask_2/patient0001_2CH_ED_gt.png", # relative to masks/
     "prompts": {"p0": "", "p1": ["Myocardium of the heart.", "Myocardium in the cardiac ultrasound."], ...},
     "bbox": [...], "cat": "...", "segment_id": ..., "sentences": [...]}   # optional

Each prompt ``p0`` ... ``p9`` is a string or a list of strings; a list is sampled at each training access, as
the study does. The prompt type (``p0`` ... ``p9`` or ``random``: one of the record's ``pK`` with K >= 1 per
access) chooses the report; evaluation reads one fixed, seeded choice per record. The structure of a
record (its class, for per-class metrics) is its ``cat`` when given, else the folder of its mask
(``mask_2``), else the set's one target.

With per-split image folders (on, off, or by default on when ``images/<split>/`` exists) an image is looked
up in ``images/<split>/`` and a mask in ``masks/<split>/`` when that folder exists.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lvseg.data.layout import Sample, _check_readable
from lvseg.errors import DataValidationError, LvsegError

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
MASKS_DIR = "masks"
ANNS_DIR = "anns"
SPLIT_FILES: dict[str, str] = {"train": "train.json", "val": "val.json", "test": "test.json"}
PROMPT_KEYS: tuple[str, ...] = tuple(f"p{number}" for number in range(10))
PROMPT_TYPES: tuple[str, ...] = (*PROMPT_KEYS, "random")
REQUIRED_FIELDS: tuple[str, ...] = ("img_name", "mask_name", "prompts")
OPTIONAL_FIELDS: tuple[str, ...] = ("bbox", "cat", "segment_id", "sentences")


def is_vlsm_root(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds ``anns/`` with at least one of ``train.json``, ``val.json``, ``test.json``."""
    return bool(list_vlsm_splits(root))


def list_vlsm_splits(root: str | os.PathLike[str]) -> list[str]:
    """The splits (train, val, test, in that order) whose ``anns/<split>.json`` exists."""
    anns = Path(root) / ANNS_DIR
    return [split for split, name in SPLIT_FILES.items() if (anns / name).is_file()]


def _prompt_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return None
    return f"is {json.dumps(value)[:60]}; expected a string or a non-empty list of strings"


def _draw_index(seed: int, key: str, count: int) -> int:
    from lvseg.data.classes import _draw

    return int(_draw(seed, key) * count)


def _record_prompts(
    record: dict[str, Any], prompt_type: str, label: str, problems: list[str]
) -> tuple[tuple[str, ...], ...] | None:
    """The prompt groups a record offers under ``prompt_type``; None (with a problem) when it offers none."""
    prompts = record.get("prompts")
    if not isinstance(prompts, dict):
        problems.append(f"{label}: 'prompts' is {json.dumps(prompts)[:60]}; expected an object with p0 ... p9")
        return None
    bad = [(key, why) for key, value in prompts.items() if (why := _prompt_problem(value))]
    for key, why in bad:
        problems.append(f"{label}: prompt '{key}' {why}")
    if bad:
        return None
    if prompt_type == "random":
        keys = [key for key in prompts if key in PROMPT_KEYS and key != "p0"]
        if not keys:
            problems.append(f"{label}: --prompt-type random needs a prompt p1 ... p9; the record has {list(prompts)}")
            return None
    elif prompt_type not in prompts:
        problems.append(f"{label}: no prompt '{prompt_type}' (the record has {', '.join(prompts) or 'none'})")
        return None
    else:
        keys = [prompt_type]
    groups = []
    for key in keys:
        value = prompts[key]
        groups.append((value,) if isinstance(value, str) else tuple(value))
    return tuple(groups)


def _class_of(record: dict[str, Any], mask_name: str) -> str:
    category = record.get("cat")
    if isinstance(category, (str, int)) and not isinstance(category, bool) and str(category).strip():
        return str(category).strip()
    parent = Path(mask_name).parent
    return "" if str(parent) in ("", ".") else parent.as_posix()


def _inside(base: Path, name: str) -> Path | None:
    path = (base / name).resolve()
    return path if path.is_relative_to(base.resolve()) else None


def load_vlsm_split(
    root: str | os.PathLike[str],
    split: str,
    prompt_type: str = "random",
    split_image_folders: bool | None = None,
    seed: int = 0,
) -> list[Sample]:
    """Read and validate one split of a VLSM-study dataset; one sample per record, in file order.

    Returns samples named by their mask (``mask_2/patient0001_2CH_ED_gt``), with ``text`` the seeded
    evaluation prompt and ``prompt_choices`` what training draws from. Raises :class:`LvsegError` for an
    unknown split or prompt type, and :class:`DataValidationError` listing every problem of the split at
    once (missing or unreadable files, bad records and fields, masks whose size differs from their image's),
    each naming the record (its number in the file and its ``mask_name``).
    """
    if split not in SPLIT_FILES:
        raise LvsegError(f"unknown split '{split}'; expected one of {', '.join(SPLIT_FILES)}")
    if prompt_type not in PROMPT_TYPES:
        raise LvsegError(f"--prompt-type {prompt_type!r} is not one of {', '.join(PROMPT_TYPES)}")
    base = Path(root)
    ann_path = base / ANNS_DIR / SPLIT_FILES[split]
    where = str(ann_path)
    if not ann_path.is_file():
        raise DataValidationError([f"annotation file '{ann_path}' not found"], where=where)
    try:
        records = json.loads(ann_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataValidationError([f"annotation file '{ann_path}' is not JSON: {error}"], where=where) from None
    if not isinstance(records, list):
        raise DataValidationError(
            [f"annotation file '{ann_path}' holds a {type(records).__name__}; expected a list of records"], where=where
        )
    problems: list[str] = []
    images_dir, masks_dir = base / IMAGES_DIR, base / MASKS_DIR
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            problems.append(f"folder '{folder}' not found")
    per_split = (images_dir / split).is_dir() if split_image_folders is None else split_image_folders
    if per_split:
        if split_image_folders and not (images_dir / split).is_dir():
            problems.append(f"per-split image folder '{images_dir / split}' not found")
        images_dir = images_dir / split
        if (masks_dir / split).is_dir():
            masks_dir = masks_dir / split
    samples: list[Sample] = []
    seen: dict[tuple[str, str], int] = {}
    sizes: dict[Path, tuple[int, int] | None] = {}

    def size_of(path: Path, kind: str) -> tuple[int, int] | None:
        if path not in sizes:
            problem, size = _check_readable(path, kind)
            if problem:
                problems.append(problem)
            sizes[path] = size
        return sizes[path]

    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            problems.append(f"record {number}: is {type(record).__name__}; expected an object with {REQUIRED_FIELDS}")
            continue
        mask_name = record.get("mask_name")
        label = f"record {number}" + (f" ('{mask_name}')" if isinstance(mask_name, str) else "")
        missing = [field for field in REQUIRED_FIELDS if field not in record]
        if missing:
            problems.append(f"{label}: missing field(s) {', '.join(missing)}; found {', '.join(record) or 'none'}")
            continue
        bad_names = [
            field
            for field in ("img_name", "mask_name")
            if not isinstance(record[field], str) or not record[field].strip()
        ]
        for field in bad_names:
            problems.append(f"{label}: '{field}' is {json.dumps(record[field])[:60]}; expected a file name")
        if "bbox" in record and not isinstance(record["bbox"], list):
            problems.append(f"{label}: 'bbox' is {json.dumps(record['bbox'])[:60]}; expected a list of numbers")
        if "sentences" in record and not isinstance(record["sentences"], list):
            problems.append(f"{label}: 'sentences' is {json.dumps(record['sentences'])[:60]}; expected a list")
        groups = _record_prompts(record, prompt_type, label, problems)
        if bad_names or groups is None:
            continue
        img_name, mask_name = record["img_name"].strip(), record["mask_name"].strip()
        if (img_name, mask_name) in seen:
            problems.append(f"{label}: repeats record {seen[(img_name, mask_name)]} (same img_name and mask_name)")
            continue
        seen[(img_name, mask_name)] = number
        image_path, mask_path = _inside(images_dir, img_name), _inside(masks_dir, mask_name)
        if image_path is None or mask_path is None:
            problems.append(f"{label}: a file name leaves its folder ('{img_name}', '{mask_name}')")
            continue
        if not image_path.is_file():
            problems.append(f"{label}: image '{image_path}' not found (img_name '{img_name}' in '{images_dir}')")
        if not mask_path.is_file():
            problems.append(f"{label}: mask '{mask_path}' not found (mask_name '{mask_name}' in '{masks_dir}')")
        if not (image_path.is_file() and mask_path.is_file()):
            continue
        image_size, mask_size = size_of(image_path, "image"), size_of(mask_path, "mask")
        if image_size and mask_size and image_size != mask_size:
            problems.append(
                f"{label}: mask '{mask_path}' is {mask_size[0]}x{mask_size[1]} but its image '{image_path}' is "
                f"{image_size[0]}x{image_size[1]}; expected the same size"
            )
        name = Path(mask_name).with_suffix("").as_posix()
        group = groups[_draw_index(seed, f"group:{name}", len(groups))]
        text = group[_draw_index(seed, f"text:{name}", len(group))]
        varied = len(groups) > 1 or len(groups[0]) > 1
        samples.append(
            Sample(
                name=name,
                image_path=image_path,
                mask_path=mask_path,
                text=text,
                class_name=_class_of(record, mask_name),
                prompt_choices=groups if varied else (),
            )
        )
    if not records:
        problems.append(f"annotation file '{ann_path}' holds no records")
    if problems:
        raise DataValidationError(problems, where=where)
    logger.info("%s: %d samples (prompt type %s)", ann_path, len(samples), prompt_type)
    return samples
