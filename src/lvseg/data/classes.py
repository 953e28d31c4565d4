"""Label maps with a class table: one (image, prompt, binary mask) sample per image and structure.

A text-conditioned model segments one structure per prompt, so an image whose mask is a *label map* (pixel
value = class id) with K listed classes gives K samples, as the VLSM study fine-tunes on CAMUS and abdominal
CT (Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation using Vision-Language Models",
MIDL 2024). The classes come from ``--classes 1=liver,2=kidney`` or from ``classes.csv`` beside the data
(the dataset root)::

    value,name,prompt
    1,liver,
    2,kidney,{count} {name} in {modality}

``value`` is the class's pixel value (1-65535; 0 is background), ``name`` its name, and the optional
``prompt`` a template for its report with the fields ``{name}``, ``{modality}`` (with its article: "a CT
slice"), ``{count}`` (regions in words; "no" when the class is absent), ``{sizes}`` and ``{locations}``
(:mod:`lvseg.data.prompts`' words; empty when absent). Attribute fields state absence ("no kidney"): a
template meant for negative samples should use ``{name}`` and ``{modality}`` only.

The report of a sample is, first found: the split table's column ``Description_<name>`` (a per-class text
column, e.g. ``Description_liver``) when its cell is not empty; the class's template; the prompt writer's
per-class prompt of the chosen prompt type (:func:`lvseg.data.prompts.class_prompt`: ``p0``-``p6``, or
``random``: one of ``p1``-``p6`` drawn at each training access, a fixed seeded one for evaluation).

An image without a class gives a **negative sample** (empty mask, the class's prompt) when a seeded draw on
(image, class) falls under ``negative_ratio`` (1: every absent class, 0: none): the model must learn to
answer "no liver here".
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lvseg.data.images import open_pil, read_mask
from lvseg.data.layout import MASK_PREFIX, TEXT_COLUMN, Sample, text_file_candidates
from lvseg.errors import DataValidationError, LvsegError

logger = logging.getLogger(__name__)

CLASS_TABLE_NAME = "classes.csv"
CLASS_TABLE_COLUMNS: tuple[str, ...] = ("value", "name", "prompt")
#: Prefix of a split table's per-class text column: ``Description_<class name>``.
CLASS_TEXT_PREFIX = f"{TEXT_COLUMN}_"
TEMPLATE_FIELDS: tuple[str, ...] = ("name", "modality", "count", "sizes", "locations")
MAX_CLASS_VALUE = 65535


@dataclass(frozen=True)
class ClassInfo:
    """One structure of a label map: its pixel value, name and optional report template."""

    value: int
    name: str
    template: str | None = None


def parse_classes(spec: str, where: str = "--classes") -> list[ClassInfo]:
    """``"1=liver,2=kidney"`` -> classes; every bad item is listed in one :class:`DataValidationError`."""
    rows = []
    for number, item in enumerate(spec.split(","), start=1):
        value, separator, name = item.partition("=")
        rows.append((f"item {number} ({item.strip()!r})", value.strip() if separator else "", name.strip(), ""))
    return _check_classes(rows, where, "expected VALUE=NAME, e.g. 1=liver")


def read_class_table(path: str | os.PathLike[str]) -> list[ClassInfo]:
    """The classes of a ``classes.csv`` (columns ``value``, ``name``, optional ``prompt``; see the module
    docstring). Raises :class:`DataValidationError` naming the file and listing every bad row at once."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LvsegError(f"class table '{path}' cannot be read: {error}") from None
    if not table:
        raise DataValidationError([f"class table '{path}' is empty; expected a header value,name[,prompt]"], str(path))
    header = [cell.strip().lower() for cell in table[0]]
    missing = [column for column in CLASS_TABLE_COLUMNS[:2] if column not in header]
    if missing:
        raise DataValidationError(
            [f"class table '{path}' has no column {' and '.join(missing)}; found {', '.join(header) or 'none'}"],
            str(path),
        )
    index = {column: header.index(column) for column in CLASS_TABLE_COLUMNS if column in header}

    def cell(row: list[str], column: str) -> str:
        position = index.get(column)
        return row[position].strip() if position is not None and position < len(row) else ""

    rows = [
        (f"row {number}", cell(row, "value"), cell(row, "name"), cell(row, "prompt"))
        for number, row in enumerate(table[1:], start=2)
        if any(value.strip() for value in row)
    ]
    return _check_classes(rows, str(path), "expected an integer value and a name")


def _check_classes(rows: list[tuple[str, str, str, str]], where: str, expected: str) -> list[ClassInfo]:
    problems, classes = [], []
    values: dict[int, str] = {}
    names: dict[str, str] = {}
    for label, value_text, name, template in rows:
        try:
            value = int(value_text)
        except ValueError:
            problems.append(f"{label}: value {value_text!r} is not an integer; {expected}")
            continue
        if not 1 <= value <= MAX_CLASS_VALUE:
            problems.append(f"{label}: value {value} is out of range; expected 1-{MAX_CLASS_VALUE} (0 is background)")
            continue
        if not name:
            problems.append(f"{label}: class {value} has no name; {expected}")
            continue
        if value in values:
            problems.append(f"{label}: value {value} is already class '{values[value]}'; expected one row per value")
            continue
        if name.lower() in names:
            problems.append(f"{label}: name '{name}' is already given to {names[name.lower()]}")
            continue
        problem = _template_problem(template) if template else None
        if problem:
            problems.append(f"{label}: prompt template {template!r} {problem}")
            continue
        values[value], names[name.lower()] = name, f"class {value}"
        classes.append(ClassInfo(value, name, template or None))
    if not classes and not problems:
        problems.append(f"no class is listed; {expected}")
    if problems:
        raise DataValidationError(problems, where=where)
    return classes


def _template_problem(template: str) -> str | None:
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        return f"is not a template: {error}"
    unknown = [field for field in fields if field not in TEMPLATE_FIELDS]
    if unknown:
        return (
            f"uses unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; expected {', '.join(TEMPLATE_FIELDS)}"
        )
    return None


def class_table_for(root: str | os.PathLike[str], spec: str | None = None) -> list[ClassInfo] | None:
    """The classes of a dataset: ``spec`` (``--classes``) when given, else ``ROOT/classes.csv`` when it
    exists, else None (a binary dataset)."""
    if spec:
        table = Path(root) / CLASS_TABLE_NAME
        if table.is_file():
            logger.info("--classes given: ignoring '%s'", table)
        return parse_classes(spec)
    table = Path(root) / CLASS_TABLE_NAME
    return read_class_table(table) if table.is_file() else None


def read_label_map(path: str | os.PathLike[str]) -> np.ndarray:
    """A label map as int64 (H, W): 8- or 16-bit gray, or palette indices (a colour PNG whose channels are all
    equal is read as gray). Raises :class:`LvsegError` naming the file for a colour map."""
    image = open_pil(path, kind="mask")
    if image.mode in ("P", "PA"):
        array = np.asarray(image.convert("P") if image.mode == "PA" else image)
    elif image.mode == "LA":
        array = np.asarray(image.getchannel("L"))
    else:
        array = np.asarray(image)
    if array.ndim == 3:
        colour = array[:, :, :3]
        if not (np.array_equal(colour[..., 0], colour[..., -1]) and np.array_equal(colour[..., 0], colour[..., 1])):
            raise LvsegError(
                f"label map '{path}' is a colour image; expected one channel whose values are the class values"
            )
        array = colour[..., 0]
    return array.astype(np.int64)


def read_sample_mask(sample: Sample) -> np.ndarray:
    """The binary target (H, W) uint8 {0, 1} of a labeled sample: its class's pixels of the label map, or
    every non-zero pixel of a binary mask (``mask_value`` None)."""
    if sample.mask_path is None:
        raise LvsegError(f"sample '{sample.name}' has no mask")
    if sample.mask_value is None:
        return read_mask(sample.mask_path)
    return (read_label_map(sample.mask_path) == sample.mask_value).astype(np.uint8)


def render_template(template: str, class_name: str, modality: str, mask: np.ndarray) -> str:
    """A class's template filled in for its pixels ``mask`` (H, W), whitespace collapsed (module docstring)."""
    from lvseg.data.prompts import LOCATIONS, SIZE_WORDS, _count_word, _join, article, mask_regions

    regions = mask_regions(mask)
    sizes = ", ".join(word for word in SIZE_WORDS if word in {region.size for region in regions})
    found = {region.location for region in regions}
    locations = [location for location in LOCATIONS if location in found]
    text = template.format(
        name=class_name,
        modality=article(modality),
        count=_count_word(len(regions)) if regions else "no",
        sizes=sizes,
        locations=_join(locations) if locations else "",
    )
    return " ".join(text.split())


def _draw(seed: int, *parts: object) -> float:
    """A seeded number in [0, 1) fixed by ``parts`` (independent of the order samples are read)."""
    digest = hashlib.sha256(":".join(str(part) for part in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(seed: int, key: str, choices: Sequence[str]) -> str:
    """One of ``choices``, fixed by ``seed`` and ``key``."""
    return choices[int(_draw(seed, key) * len(choices))]


def _class_text_columns(
    text_table: Path | None, classes: Sequence[ClassInfo], problems: list[str]
) -> dict[str, dict[str, str]]:
    """{row key stem: {class name: text}} from the split table's ``Description_<name>`` columns."""
    if text_table is None:
        return {}
    import pandas as pd

    try:
        if text_table.suffix.lower() == ".csv":
            table = pd.read_csv(text_table, dtype=str, keep_default_na=False)
        else:
            table = pd.read_excel(text_table, dtype=str, keep_default_na=False)
    except Exception:
        return {}
    table.columns = [str(column).strip() for column in table.columns]
    names = {info.name: info for info in classes}
    columns = {}
    for column in table.columns:
        if column.startswith(CLASS_TEXT_PREFIX):
            name = column[len(CLASS_TEXT_PREFIX) :]
            if name in names:
                columns[column] = name
            else:
                problems.append(
                    f"'{text_table}' has the column '{column}', but '{name}' is not a class; expected one of "
                    + ", ".join(f"'{CLASS_TEXT_PREFIX}{other}'" for other in names)
                )
    texts: dict[str, dict[str, str]] = {}
    if columns and "Image" in table.columns:
        for _, row in table.iterrows():
            key = Path(str(row["Image"]).strip()).stem
            texts[key] = {name: str(row[column]).strip() for column, name in columns.items()}
    return texts


def expand_label_maps(
    samples: Sequence[Sample],
    classes: Sequence[ClassInfo],
    *,
    split_dir: Path | None = None,
    negative_ratio: float = 1.0,
    prompt_type: str = "random",
    modality: str = "image",
    seed: int = 0,
) -> list[Sample]:
    """One sample per (image, class) of validated binary-layout ``samples`` whose masks are label maps.

    A present class gives its pixels; an absent one a negative sample (empty mask) for the seeded
    ``negative_ratio`` share of (image, class) pairs. Names are ``<image name>:<class name>``. ``split_dir``:
    the split folder whose text table may hold per-class text columns. Raises :class:`DataValidationError`
    listing every mask with a value no class lists and every bad per-class column, at once.
    """
    from lvseg.data.prompts import CLASS_PROMPT_STYLES, class_prompt, style_for

    if prompt_type not in CLASS_PROMPT_STYLES:
        raise LvsegError(
            f"--prompt-type {prompt_type!r}: the prompts of label maps are written by lvseg, which writes "
            f"{', '.join(CLASS_PROMPT_STYLES)} (p7-p9 need definitions: give a per-class text column or template)"
        )
    if not 0.0 <= negative_ratio <= 1.0:
        raise LvsegError(f"--negative-ratio {negative_ratio} must be between 0 and 1")
    problems: list[str] = []
    table = None
    if split_dir is not None:
        table = next((path for path in text_file_candidates(split_dir) if path.is_file()), None)
    column_texts = _class_text_columns(table, classes, problems)
    known = {info.value for info in classes}
    expected = ", ".join(str(value) for value in sorted(known))
    styles = [style for style in CLASS_PROMPT_STYLES if style not in ("p0", "random")]
    expanded: list[Sample] = []
    negatives = 0
    for sample in samples:
        if sample.mask_path is None:
            raise LvsegError(
                f"image '{sample.image_path}' has no mask: label maps need every mask (semi-supervised training "
                "reads binary masks only)"
            )
        try:
            label_map = read_label_map(sample.mask_path)
        except LvsegError as error:
            problems.append(str(error))
            continue
        values = {int(value) for value in np.unique(label_map)} - {0}
        unknown = sorted(values - known)
        if unknown:
            problems.append(
                f"mask '{sample.mask_path}' holds value(s) {', '.join(map(str, unknown))} that no class lists "
                f"(classes: {expected}); a binary 0/255 mask needs the class 255"
            )
            continue
        own = column_texts.get(sample.name) or column_texts.get(sample.mask_path.stem) or {}
        if not own and sample.mask_path.stem.startswith(MASK_PREFIX):
            own = column_texts.get(sample.mask_path.stem.removeprefix(MASK_PREFIX), {})
        for info in classes:
            mask = label_map == info.value
            present = info.value in values
            if not present and _draw(seed, "negative", sample.name, info.value) >= negative_ratio:
                continue
            negatives += not present
            name = f"{sample.name}:{info.name}"
            choices: tuple[tuple[str, ...], ...] = ()
            if own.get(info.name):
                text = own[info.name]
            elif info.template:
                text = render_template(info.template, info.name, modality, mask)
            elif prompt_type == "random":
                written = list(dict.fromkeys(class_prompt(mask, info.name, modality, style) for style in styles))
                choices = tuple((prompt,) for prompt in written)
                text = class_prompt(mask, info.name, modality, style_for(name, "random", seed))
            else:
                text = class_prompt(mask, info.name, modality, prompt_type)
            expanded.append(
                replace(
                    sample, name=name, text=text, class_name=info.name, mask_value=info.value, prompt_choices=choices
                )
            )
    if problems:
        raise DataValidationError(problems, where=str(split_dir) if split_dir else "the label maps")
    logger.info(
        "%d images x %d classes -> %d samples (%d negative)",
        len(samples),
        len(classes),
        len(expanded),
        negatives,
    )
    return expanded
