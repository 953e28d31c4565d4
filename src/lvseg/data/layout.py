"""The LViT dataset folder layout, and validating a split before training on it.

A dataset root holds one folder per split::

    ROOT/Train_Folder/  Train_text.xlsx (or .csv)  img/*  labelcol/*
    ROOT/Val_Folder/    Val_text.xlsx              img/*  labelcol/*
    ROOT/Test_Folder/   Test_text.xlsx             img/*  labelcol/*

The text file has columns ``Image`` (the *mask* file name, as in the LViT
release) and ``Description``. Masks are named either like their image with a
``.png`` extension (MoNuSeg: ``x.tif`` -> ``x.png``) or ``mask_<image name>``
(QaTa-COV19, MosMedData+: ``x.png`` -> ``mask_x.png``); the convention is
detected per split, and files are matched by stem so extensions may differ.

:func:`load_split` checks the whole split and raises one
:class:`~lvseg.errors.DataValidationError` listing every problem it found.

:func:`read_text_table` is the one reader of such tables (also of a prediction folder's table in
``lvseg predict`` and of the LV-loss templates' ``LV_loss.xlsx``); :func:`find_text_table` finds the
``*_text.xlsx`` / ``*_text.csv`` of a folder whose file names are not fixed.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError

from lvseg.data.dicom import DICOM_MAGIC_OFFSET, is_dicom, read_dicom_header
from lvseg.data.images import IMAGE_EXTENSIONS
from lvseg.errors import DataValidationError, LvsegError, first_line

logger = logging.getLogger(__name__)

#: Split key -> folder name under the dataset root.
SPLIT_FOLDERS: dict[str, str] = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
#: The splits ``lvseg train`` reads (in any layout): it fits on the first and picks its best checkpoint on the
#: second, so ``lvseg data check`` requires both unless told which splits to check.
TRAINING_SPLITS: tuple[str, ...] = ("train", "val")

IMAGE_DIR = "img"
MASK_DIR = "labelcol"
IMAGE_COLUMN = "Image"
TEXT_COLUMN = "Description"
MASK_PREFIX = "mask_"
TEXT_FILE_SUFFIXES = (".xlsx", ".csv")


@dataclass(frozen=True)
class Sample:
    """One image of a split: its name (the image file's stem), files and text description.

    A multi-class dataset (:mod:`lvseg.data.classes`, :mod:`lvseg.data.vlsm`) gives one sample per (image,
    structure): ``class_name`` names the structure, ``mask_value`` (when set) is its value in the label map at
    ``mask_path`` (the target is ``label map == mask_value``; None: any non-zero pixel), and
    ``prompt_choices`` holds the alternative prompts a training sample draws from at each access (groups,
    then one text of the group; ``text`` is the fixed one evaluation reads).
    """

    name: str
    image_path: Path
    mask_path: Path | None
    text: str
    class_name: str = ""
    mask_value: int | None = None
    prompt_choices: tuple[tuple[str, ...], ...] = ()

    @property
    def labeled(self) -> bool:
        """Whether the sample has a mask."""
        return self.mask_path is not None


class TextRow(NamedTuple):
    """One row of an LViT text table (a tuple, so ``for row, key, text in rows`` works too)."""

    row_number: int  # as a spreadsheet shows it: the header is row 1
    key: str  # the Image value as written, stripped
    description: str  # the Description value, stripped


def list_splits(root: str | os.PathLike[str]) -> list[str]:
    """The split keys (``train``, ``val``, ``test``, in that order) whose folder exists under ``root``."""
    base = Path(root)
    return [split for split, folder in SPLIT_FOLDERS.items() if (base / folder).is_dir()]


def text_file_candidates(split_dir: Path) -> list[Path]:
    """The text file names a split folder may hold, e.g. ``Train_text.xlsx`` and ``Train_text.csv``."""
    prefix = split_dir.name.removesuffix("_Folder")
    return [split_dir / f"{prefix}_text{suffix}" for suffix in TEXT_FILE_SUFFIXES]


def _strip_image_extension(file_name: str) -> str:
    path = Path(file_name)
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else file_name


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; hidden and non-image files are skipped."""
    images: list[Path] = []
    ignored: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        (images if entry.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(entry)
    if ignored:
        logger.warning(
            "ignoring %d non-image file(s) in %s: %s", len(ignored), folder, ", ".join(p.name for p in ignored[:5])
        )
    return images


def read_text_table(path: str | os.PathLike[str]) -> list[TextRow]:
    """The rows of an LViT text table: ``.csv``, else a spreadsheet (``.xlsx``), with columns ``Image``
    and ``Description`` (header names are stripped; other columns are ignored; every value is read as
    text, empty cells as ``""``).

    C2FVL's tables carry the report as 8 columns (:data:`lvseg.data.reports.REPORT_VECTOR_FIELDS`:
    ``bilateral, number, lupper, ..., rlower``). When a table has them, a missing or empty Description is
    written from them by the report grammar (:func:`~lvseg.data.reports.render_report`), and a given one
    in the grammar must say the same (same vector); every row that does not is listed in one error (a
    free-text Description is kept as it is).

    Raises :class:`LvsegError` naming the file when it cannot be read, lacks a column, or its vector
    columns are not numbers or contradict its reports.
    """
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() != ".csv":
        problem = spreadsheet_problem(path)
        if problem:
            raise LvsegError(f"text file '{path}' cannot be read: {problem}")
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            table = pd.read_excel(path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas/openpyxl raise many different types for a bad file
        if path.suffix.lower() == ".csv":
            raise LvsegError(f"text file '{path}' cannot be read: {type(error).__name__}: {error}") from None
        raise LvsegError(
            f"text file '{path}' cannot be read: the workbook is damaged ({first_line(error)}); open and save it "
            "again in a spreadsheet program, or give the table as a .csv"
        ) from None
    table.columns = [str(column).strip() for column in table.columns]
    vector_columns = _vector_columns(list(table.columns))
    required = (IMAGE_COLUMN,) if vector_columns else (IMAGE_COLUMN, TEXT_COLUMN)
    missing = [column for column in required if column not in table.columns]
    if missing:
        found = ", ".join(f"'{column}'" for column in table.columns) or "none"
        wanted = " and ".join(f"'{column}'" for column in missing)
        raise LvsegError(f"text file '{path}' has no column {wanted}; found columns: {found}")
    descriptions = table[TEXT_COLUMN] if TEXT_COLUMN in table.columns else [""] * len(table)
    rows = [
        TextRow(offset + 2, str(key).strip(), str(description).strip())
        for offset, (key, description) in enumerate(zip(table[IMAGE_COLUMN], descriptions))
    ]
    if vector_columns:
        rows = _reports_from_vector_columns(path, rows, table[vector_columns].values.tolist())
    return rows


#: The first bytes of the spreadsheet files pandas reads besides .xlsx: the old binary .xls (OLE2) format.
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: The part every .xlsx workbook (a zip archive) holds.
XLSX_WORKBOOK_PART = "xl/workbook.xml"
#: The part every Office Open XML package holds, naming the types of the others.
XLSX_CONTENT_TYPES_PART = "[Content_Types].xml"
#: The first bytes of a zip archive's first entry (an .xlsx workbook is one).
ZIP_MAGIC = b"PK\x03\x04"


def spreadsheet_problem(path: Path) -> str | None:
    """Why ``path`` is not a spreadsheet pandas can read, said plainly (pandas says ``KeyError: 'zip'`` for a zip
    archive that is no workbook), or None when it looks like one (an .xlsx workbook or an .xls file)."""
    import zipfile

    try:
        with path.open("rb") as handle:
            start = handle.read(len(OLE2_MAGIC))
    except OSError as error:
        return error.strerror or type(error).__name__
    if not start:
        return "the file is empty; expected an Excel workbook (.xlsx) or a .csv table"
    if start.startswith(OLE2_MAGIC):
        return None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as error:
            return f"it is a damaged zip archive ({error}); expected an Excel workbook (.xlsx)"
        if "content.xml" in names:  # an OpenDocument sheet
            return None
        if XLSX_WORKBOOK_PART in names and XLSX_CONTENT_TYPES_PART not in names:
            return (
                f"it is a damaged Excel workbook: its zip archive has no '{XLSX_CONTENT_TYPES_PART}'; open and save it "
                "again in a spreadsheet program, or give the table as a .csv"
            )
        if XLSX_WORKBOOK_PART in names:
            return None
        return f"it is a zip archive without '{XLSX_WORKBOOK_PART}', not an Excel workbook (.xlsx)"
    if start.startswith(ZIP_MAGIC):
        return "it starts like an Excel workbook (a zip archive) but is cut short or damaged"
    try:
        start.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not an Excel workbook (.xlsx) or .xls file"
    return "it holds text, not an Excel workbook (.xlsx); a comma-separated table must be named *_text.csv"


def _vector_columns(columns: list[str]) -> list[str]:
    """The table's columns holding C2FVL's report vector, in vector order (all 8, any case), or []."""
    from lvseg.data.reports import REPORT_VECTOR_FIELDS

    by_name = {column.lower(): column for column in columns}
    found = [by_name.get(name) for name in REPORT_VECTOR_FIELDS]
    if any(found) and not all(found):
        missing = [name for name, column in zip(REPORT_VECTOR_FIELDS, found) if column is None]
        logger.warning("a text table has some of the report-vector columns but not %s; they are ignored", missing)
    return [column for column in found if column is not None] if all(found) else []


def _reports_from_vector_columns(path: Path, rows: list[TextRow], vectors: list[list[str]]) -> list[TextRow]:
    from lvseg.data.reports import (
        REPORT_VECTOR_FIELDS,
        ReportError,
        findings_from_vector,
        read_report,
        render_report,
        report_vector,
    )

    result, problems = [], []
    for row, values in zip(rows, vectors):
        try:
            vector = [float(value) for value in values]
        except ValueError:
            problems.append(
                f"row {row.row_number}: the columns {', '.join(REPORT_VECTOR_FIELDS)} must be numbers, got {values}"
            )
            continue
        written = render_report(findings_from_vector(vector))
        try:
            consistent = report_vector(*read_report(written)) == vector
        except ReportError:
            consistent = False
        if not consistent:  # e.g. bilateral 1 with one lung, zones without a number: no report says that
            problems.append(
                f"row {row.row_number}: the vector {vector} is not a report (bilateral flag, number "
                "of areas and zones disagree)"
            )
            continue
        if not row.description:
            result.append(row._replace(description=written))
            continue
        try:
            stated = report_vector(*read_report(row.description))
        except ReportError:  # free text beside the vector: kept for text models (C2FVL lists it as unreadable)
            result.append(row)
            continue
        if stated != vector:
            problems.append(
                f"row {row.row_number}: Description {row.description!r} reads as {stated}, but the columns say {vector}"
            )
            continue
        result.append(row)
    if problems:
        raise LvsegError(
            f"text file '{path}': {len(problems)} row(s) whose report columns "
            f"({', '.join(REPORT_VECTOR_FIELDS)}) do not give a report: " + "; ".join(problems[:20])
        )
    return result


def find_text_table(folder: str | os.PathLike[str]) -> Path | None:
    """The one ``*_text.xlsx`` / ``*_text.csv`` of ``folder`` (any prefix, any case), or None when there is none.

    Raises :class:`LvsegError` when the folder holds several.
    """
    folder = Path(folder)
    endings = tuple(f"_text{suffix}" for suffix in TEXT_FILE_SUFFIXES)
    tables = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(endings)
    )
    if len(tables) > 1:
        expected = " or ".join(f"*{ending}" for ending in endings)
        raise LvsegError(
            f"folder '{folder}' holds several text tables ({', '.join(p.name for p in tables)}); "
            f"expected one {expected}"
        )
    return tables[0] if tables else None


def _read_text_table(path: Path, problems: list[str]) -> list[TextRow] | None:
    """:func:`read_text_table`, but on failure append the problem and return None."""
    try:
        return read_text_table(path)
    except LvsegError as error:
        problems.append(str(error))
        return None


def _check_readable(path: Path, kind: str) -> tuple[str | None, tuple[int, int] | None]:
    """Cheaply check that ``path`` is a complete image; return (problem or None, (width, height)).

    PNG files are CRC-checked chunk by chunk without decoding; JPEG files must end
    with the end-of-image marker (or decode fully); DICOM headers are parsed; other formats are decoded.
    """
    with path.open("rb") as handle:
        start = handle.read(DICOM_MAGIC_OFFSET + 4)
    if is_dicom(start):  # the header gives the size; the pixels are decoded when the image is read
        try:
            _, header = read_dicom_header(path.read_bytes(), f"'{path}'")
        except LvsegError as error:
            return f"{kind} '{path}' cannot be read: {error}", None
        return None, (header.columns, header.rows)
    try:
        with Image.open(path) as image:
            size = image.size
            if image.format == "PNG":
                image.verify()  # walks every chunk and checks its CRC, without decompressing
            elif not (image.format == "JPEG" and _ends_with_jpeg_marker(path)):
                image.load()
    except UnidentifiedImageError:
        return f"{kind} '{path}' cannot be read: not a PNG/JPEG/TIFF/BMP/DICOM file", None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        return f"{kind} '{path}' cannot be read: file is truncated or corrupt ({error})", None
    return None, size


def mask_size_problem(mask: Path, mask_size: tuple[int, int], image: Path, image_size: tuple[int, int]) -> str | None:
    """The rule that a mask has its image's size (width, height), as one problem line, or None when it holds."""
    if mask_size == image_size:
        return None
    return (
        f"mask '{mask}' is {mask_size[0]}x{mask_size[1]} but its image '{image}' is "
        f"{image_size[0]}x{image_size[1]}; expected the same size"
    )


def image_mask_problems(image: Path, mask: Path) -> list[str]:
    """What :func:`load_split` would say of this pair: either file unreadable, or sizes that differ."""
    image_problem, image_size = _check_readable(image, "image")
    mask_problem, mask_size = _check_readable(mask, "mask")
    problems = [problem for problem in (image_problem, mask_problem) if problem]
    if not problems and image_size is not None and mask_size is not None:
        mismatch = mask_size_problem(mask, mask_size, image, image_size)
        problems += [mismatch] if mismatch else []
    return problems


def _ends_with_jpeg_marker(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(max(path.stat().st_size - 2, 0))
        return handle.read(2) == b"\xff\xd9"


def _mask_stem(image_stem: str, prefixed: bool) -> str:
    return f"{MASK_PREFIX}{image_stem}" if prefixed else image_stem


def _expected_mask_name(image: Path, prefixed: bool) -> str:
    return f"{MASK_PREFIX}{image.name}" if prefixed else f"{image.stem}.png"


def load_split(
    root: str | os.PathLike[str], split: str, require_masks: bool = True, require_text: bool = True
) -> list[Sample]:
    """Read and validate one split of an LViT-layout dataset.

    Args:
        root: the dataset root holding ``Train_Folder`` etc.
        split: ``"train"``, ``"val"`` or ``"test"``.
        require_masks: when False, an image without a mask is allowed (its
            ``mask_path`` is None) and masks are matched by name only, never
            opened (for semi-supervised unlabeled images).
        require_text: when False, the text table may be missing or lack rows or descriptions (the text is
            then ""; a label-map set whose per-class prompts are written by :mod:`lvseg.data.classes`).

    Returns:
        The samples, sorted by name (the image file's stem).

    Raises:
        LvsegError: for an unknown split name.
        DataValidationError: listing every problem of the split at once, each
            naming the file concerned; ``where`` is the split folder.
    """
    if split not in SPLIT_FOLDERS:
        raise LvsegError(f"unknown split '{split}'; expected one of {', '.join(SPLIT_FOLDERS)}")
    split_dir = Path(root) / SPLIT_FOLDERS[split]
    where = str(split_dir)
    if not split_dir.is_dir():
        if not Path(root).is_dir():
            raise DataValidationError([f"dataset root '{root}' not found"], where=where)
        raise DataValidationError([f"split folder '{split_dir}' not found"], where=where)

    problems: list[str] = []
    image_dir, mask_dir = split_dir / IMAGE_DIR, split_dir / MASK_DIR

    images: list[Path] | None = None
    if image_dir.is_dir():
        images = list_image_files(image_dir)
        if not images:
            problems.append(f"image folder '{image_dir}' holds no PNG/JPEG/TIFF/BMP images")
    else:
        problems.append(f"image folder '{image_dir}' not found")

    masks: list[Path] | None = None
    if mask_dir.is_dir():
        masks = list_image_files(mask_dir)
    elif require_masks:
        problems.append(f"mask folder '{mask_dir}' not found")

    rows: list[TextRow] | None = None
    candidates = text_file_candidates(split_dir)
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        names = " or ".join(f"'{path.name}'" for path in candidates)
        if require_text:
            problems.append(f"text file {names} not found in '{split_dir}'")
    else:
        text_path = existing[0]
        if len(existing) > 1:
            both = " and ".join(path.name for path in existing)
            logger.warning("%s: both %s exist; using %s", split_dir, both, text_path.name)
        rows = _read_text_table(text_path, problems)

    # Images sharing a stem cannot be told apart by their masks or text rows.
    images_by_stem: dict[str, Path] = {}
    for image in images or []:
        if image.stem in images_by_stem:
            problems.append(
                f"images '{images_by_stem[image.stem]}' and '{image}' share the name '{image.stem}'; "
                "expected one image per name"
            )
        else:
            images_by_stem[image.stem] = image

    masks_by_stem: dict[str, Path] = {}
    mask: Path | None  # a mask file here, a looked-up (maybe missing) one below
    for mask in masks or []:
        if mask.stem in masks_by_stem:
            problems.append(f"masks '{masks_by_stem[mask.stem]}' and '{mask}' share the name '{mask.stem}'")
        else:
            masks_by_stem[mask.stem] = mask

    prefixed = _detect_mask_prefix(images_by_stem, masks_by_stem, rows)
    logger.debug("%s: masks named %s", split_dir, "'mask_<image name>'" if prefixed else "'<image stem>.png'")

    # Pair images with masks.
    mask_for: dict[str, Path | None] = {}
    used_masks: set[str] = set()
    for stem, image in images_by_stem.items():
        mask_stem = _mask_stem(stem, prefixed)
        mask = masks_by_stem.get(mask_stem)
        if mask is not None:
            used_masks.add(mask_stem)
        elif require_masks and masks is not None:
            problems.append(
                f"image '{image}' has no mask in '{mask_dir}' (expected '{_expected_mask_name(image, prefixed)}')"
            )
        mask_for[stem] = mask
    if images is not None:
        for mask_stem, mask in masks_by_stem.items():
            if mask_stem not in used_masks:
                problems.append(f"mask '{mask}' has no matching image in '{image_dir}'")

    # Pair images with text rows; a row may name the mask (as LViT does) or the image.
    text_for: dict[str, str] = {}
    if rows is not None:
        text_path = existing[0]
        image_stem_for_key: dict[str, str] = {}
        for stem in images_by_stem:
            image_stem_for_key[stem] = stem
            image_stem_for_key[_mask_stem(stem, prefixed)] = stem
        rows_by_stem: dict[str, list[TextRow]] = defaultdict(list)
        for row in rows:
            if not row.key:
                problems.append(f"row {row.row_number} of '{text_path}' has an empty '{IMAGE_COLUMN}'")
                continue
            row_stem = image_stem_for_key.get(_strip_image_extension(row.key))
            if row_stem is None:
                if images is not None:
                    problems.append(
                        f"row {row.row_number} of '{text_path}' names '{row.key}', which matches no image in "
                        f"'{image_dir}'"
                    )
                continue
            rows_by_stem[row_stem].append(row)
        for stem, image in images_by_stem.items():
            matched = rows_by_stem.get(stem, [])
            if not matched and not require_text:
                continue
            if not matched:
                expected = known.name if (known := mask_for.get(stem)) else _expected_mask_name(image, prefixed)
                problems.append(f"image '{image}' has no row in '{text_path}' (expected {IMAGE_COLUMN} = '{expected}')")
                continue
            if len(matched) > 1:
                numbers = ", ".join(str(row.row_number) for row in matched)
                problems.append(
                    f"image '{image}' has {len(matched)} duplicate rows in '{text_path}' (rows {numbers}); expected one"
                )
            row = matched[0]
            if not row.description and require_text:
                problems.append(f"row {row.row_number} of '{text_path}' ('{row.key}') has an empty '{TEXT_COLUMN}'")
            text_for[stem] = row.description

    # Check every file can be read, and that each mask matches its image's size.
    image_sizes: dict[str, tuple[int, int]] = {}
    for stem, image in images_by_stem.items():
        problem, size = _check_readable(image, "image")
        if problem:
            problems.append(problem)
        elif size is not None:
            image_sizes[stem] = size
    if require_masks:
        for stem, mask in mask_for.items():
            if mask is None:
                continue
            problem, size = _check_readable(mask, "mask")
            if problem:
                problems.append(problem)
            elif stem in image_sizes and size is not None:
                mismatch = mask_size_problem(mask, size, images_by_stem[stem], image_sizes[stem])
                if mismatch:
                    problems.append(mismatch)

    if problems:
        raise DataValidationError(problems, where=where)

    samples = [
        Sample(name=stem, image_path=images_by_stem[stem], mask_path=mask_for.get(stem), text=text_for.get(stem, ""))
        for stem in sorted(images_by_stem)
    ]
    logger.info("%s: %d samples (%d with masks)", split_dir, len(samples), sum(sample.labeled for sample in samples))
    return samples


def _detect_mask_prefix(
    images_by_stem: dict[str, Path], masks_by_stem: dict[str, Path], rows: list[TextRow] | None
) -> bool:
    """Whether this split names masks ``mask_<image name>`` rather than ``<image stem>.png``.

    Decided by which convention pairs more images with masks; without masks (an
    unlabeled split), by which convention the text rows follow.
    """
    same_stem = sum(stem in masks_by_stem for stem in images_by_stem)
    prefixed = sum(f"{MASK_PREFIX}{stem}" in masks_by_stem for stem in images_by_stem)
    if same_stem or prefixed:
        return prefixed > same_stem
    keys = {_strip_image_extension(row.key) for row in rows or []}
    prefixed_rows = sum(f"{MASK_PREFIX}{stem}" in keys for stem in images_by_stem)
    same_stem_rows = sum(stem in keys for stem in images_by_stem)
    return prefixed_rows > same_stem_rows


def unreadable_reports(model: Any, splits: dict[str, list[Any]]) -> list[str]:
    """The reports of ``splits`` ({split or folder: samples, anything with ``name`` and ``text``}) that
    ``model``'s text front end cannot read, one line each naming the split, the image and what is wrong
    (see ``SegmentationModel.report_problems``)."""
    lines = []
    for split, samples in splits.items():
        problems = model.report_problems([sample.text for sample in samples])
        lines += [f"{split}: image '{samples[index].name}': {why}" for index, why in sorted(problems.items())]
    return lines


def check_reports(model: Any, splits: dict[str, list[Any]]) -> list[str]:
    """Raise :class:`DataValidationError` listing every report of ``splits`` that ``model`` cannot read
    (before any work starts), unless the model accepts them as empty input; returns those lines then."""
    problems = unreadable_reports(model, splits)
    if problems and not model.accepts_unreadable_reports:
        raise DataValidationError(problems, where=f"the reports, as model '{model.model_name}' reads them")
    return problems
