"""Prediction for a whole folder: ``predict_folder(segmenter, folder, out)``.

The folder has the LViT layout without masks: ``img/`` plus a ``*_text.xlsx`` or ``*_text.csv`` with
columns ``Image`` = output mask name, ``Description`` = report (image-only models need no table); or it is
a plain folder of images, with the text table (if any) beside them.
Writes ``out/masks/<Image>`` (PNG, 0/255), ``out/overlays/<Image>`` (unless ``overlays=False``) and
``out/predictions.csv``.
Images are matched to table rows by file stem (``x.tif`` <-> ``x.png``, also ``mask_x.png``). Every file
is written atomically.

With ``classes`` (several structures of a multi-class checkpoint, :mod:`lvseg.inference.multiclass`):
``out/masks/<Image>`` is the label map (8- or 16-bit PNG of class values; with one class, the 0/255 mask),
each overlay has the classes' colours and a legend below, and ``predictions.csv`` gains per class the
columns ``<name>_area_px``, ``<name>_area_percent``, ``<name>_area_mm2`` (DICOM with a pixel size, else
empty) and ``<name>_regions``. The text table is optional then; its ``Description_<name>`` column, when
present, is the prompt of class ``<name>`` for that image (else the class's own prompt), and its
``Description`` is recorded in the ``text`` column, not sent to the model.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lvseg.data.dicom import file_row_direction
from lvseg.data.layout import (
    IMAGE_COLUMN,
    IMAGE_DIR,
    MASK_PREFIX,
    TEXT_COLUMN,
    check_reports,
    find_text_table,
    read_text_table,
)
from lvseg.data.report_text import BLANK_REPORT, is_blank_report
from lvseg.errors import DataValidationError, LvsegError
from lvseg.inference.pipeline import run_overlapped

if TYPE_CHECKING:
    from lvseg.data.classes import ClassInfo
    from lvseg.inference.consistency import ConsistencyWarning
    from lvseg.inference.multiclass import ClassPrediction
    from lvseg.inference.segmenter import Segmenter

log = logging.getLogger(__name__)

#: zlib level of the masks and overlays folder prediction writes: 1 encodes several times faster than the
#: default 6 on photographic overlays for files a few percent larger (masks compress as well either way).
FOLDER_PNG_LEVEL = 1


@dataclass(frozen=True)
class FolderItem:
    """One image of a prediction folder: its file, its report and the name of the mask to write."""

    image_path: Path
    text: str
    mask_name: str

    @property
    def name(self) -> str:
        return self.image_path.name


# ----------------------------------------------------------------------------------------------- reading


def _png_name(name: str) -> str:
    return f"{Path(name).stem}.png"


def _image_files(folder: Path) -> dict[str, Path]:
    """{stem: path} of the image files directly in ``folder`` (hidden files skipped)."""
    from lvseg.data.images import IMAGE_EXTENSIONS

    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    }


def read_prediction_folder(folder: Path, requires_text: bool) -> list[FolderItem]:
    """The images of ``folder/img`` (the LViT layout), or of ``folder`` itself when it has no ``img/``, with
    their reports and output mask names.

    Raises :class:`LvsegError` when the folder, its images or (for a text model) its text table is missing, and
    :class:`DataValidationError` listing every row without an image or report.
    """
    if folder.is_file():
        raise LvsegError(f"--folder '{folder}' is a file; give a folder of images (or one image with --image)")
    if not folder.is_dir():
        raise LvsegError(f"folder '{folder}' not found")
    image_dir = folder / IMAGE_DIR if (folder / IMAGE_DIR).is_dir() else folder
    images = _image_files(image_dir)
    if not images:
        where = "" if image_dir != folder else f" (neither directly nor in an '{IMAGE_DIR}/' subfolder)"
        raise LvsegError(f"image folder '{image_dir}' holds no PNG/JPEG/TIFF/BMP images{where}")
    table = find_text_table(folder)
    if table is None:
        if requires_text:
            raise LvsegError(
                f"folder '{folder}' has no *_text.xlsx or *_text.csv; this model reads a report "
                "per image (columns 'Image' and 'Description')"
            )
        return [FolderItem(path, "", _png_name(path.name)) for path in images.values()]

    items, problems, seen = [], [], set()
    for row, key, text in read_text_table(table):
        stem = Path(key).stem
        if stem not in images and stem.startswith(MASK_PREFIX):
            stem = stem[len(MASK_PREFIX) :]
        if stem not in images:
            problems.append(f"{table.name} row {row}: no image named '{stem}.*' in '{image_dir}'")
            continue
        if stem in seen:
            problems.append(f"{table.name} row {row}: image '{stem}' is listed twice")
            continue
        if requires_text and is_blank_report(text):
            problems.append(
                f"{table.name} row {row}: the Description of '{key}' is empty or {BLANK_REPORT}; this model reads it"
            )
            continue
        seen.add(stem)
        items.append(FolderItem(images[stem], text, _png_name(key)))
    unlisted = sorted(set(images) - seen)
    if unlisted and not problems:
        log.warning(
            "%d image(s) in %s are not in %s and are skipped: %s",
            len(unlisted),
            image_dir,
            table.name,
            ", ".join(unlisted[:5]),
        )
    if problems:
        raise DataValidationError(problems, where=str(folder))
    if not items:
        raise LvsegError(f"text table '{table}' lists no images")
    return items


# ----------------------------------------------------------------------------------------------- writing


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """Write a (H, W) {0, 1} mask as an 8-bit PNG with values 0/255, atomically."""
    from lvseg.data.images import mask_to_uint8, write_png

    return write_png(path, mask_to_uint8(mask), compress_level=FOLDER_PNG_LEVEL)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    """Write ``mask`` blended over ``image`` ((C, H, W) float or (H, W, 3) uint8) as a PNG, atomically."""
    from lvseg.data.images import write_png
    from lvseg.rendering import overlay_mask

    return write_png(path, overlay_mask(image, mask), compress_level=FOLDER_PNG_LEVEL)


def write_class_outputs(
    mask_path: Path, overlay_path: Path | None, image: np.ndarray, prediction: ClassPrediction
) -> Path:
    """Write a :class:`~lvseg.inference.multiclass.ClassPrediction`: with one class its 0/255 mask and red
    overlay, exactly as a binary prediction; with several the label map (class values) and an overlay in
    the classes' colours with a legend below. Returns the mask path."""
    from lvseg.data.images import write_png
    from lvseg.inference.multiclass import write_label_map
    from lvseg.rendering import overlay_classes, with_legend

    if len(prediction.classes) == 1:
        write_mask(mask_path, prediction.classes[0].mask)
        if overlay_path is not None:
            write_overlay(overlay_path, image, prediction.classes[0].mask)
        return mask_path
    write_label_map(mask_path, prediction.label_map, compress_level=FOLDER_PNG_LEVEL)
    if overlay_path is not None:
        shown = overlay_classes(image, prediction.label_map, prediction.colours)
        write_png(overlay_path, with_legend(shown, prediction.legend()), compress_level=FOLDER_PNG_LEVEL)
    return mask_path


def class_area_columns(prediction: ClassPrediction) -> dict[str, object]:
    """``<name>_area_px``, ``<name>_area_percent``, ``<name>_area_mm2`` ("" without a pixel size) and
    ``<name>_regions`` of every class of ``prediction``."""
    columns: dict[str, object] = {}
    for result in prediction.classes:
        columns[f"{result.name}_area_px"] = result.area_px
        columns[f"{result.name}_area_percent"] = result.area_percent
        columns[f"{result.name}_area_mm2"] = "" if result.area_mm2 is None else result.area_mm2
        columns[f"{result.name}_regions"] = result.regions
    return columns


def read_class_texts(folder: Path, classes: Sequence[ClassInfo]) -> dict[str, dict[str, str]]:
    """{image stem: {class name: text}} from the non-empty ``Description_<name>`` cells of the folder's text
    table, for the names of ``classes`` ({} without a table or such columns)."""
    import pandas as pd

    table_path = find_text_table(folder)
    if table_path is None:
        return {}
    try:
        if table_path.suffix.lower() == ".csv":
            table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        else:
            table = pd.read_excel(table_path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas/openpyxl raise many different types for a bad file
        raise LvsegError(f"text file '{table_path}' cannot be read: {type(error).__name__}: {error}") from None
    table.columns = [str(column).strip() for column in table.columns]
    columns = {f"{TEXT_COLUMN}_{info.name}": info.name for info in classes}
    present = [column for column in table.columns if column in columns]
    if not present or IMAGE_COLUMN not in table.columns:
        return {}
    texts: dict[str, dict[str, str]] = {}
    for _, row in table.iterrows():
        stem = Path(str(row[IMAGE_COLUMN]).strip()).stem
        own = {columns[column]: str(row[column]).strip() for column in present if str(row[column]).strip()}
        if own:
            texts[stem] = own
            if stem.startswith(MASK_PREFIX):
                texts[stem[len(MASK_PREFIX) :]] = own
    return texts


def read_hwc(path: Path) -> np.ndarray:
    """Read an image once as (H, W, C) for both the model and the overlay (:func:`lvseg.data.images.read_samples`:
    uint8 for 8-bit files, no float copy made until the model's input; float32 in [0, 1] otherwise)."""
    from lvseg.data.images import read_samples

    return read_samples(path)


def predict_folder(
    segmenter: Segmenter,
    folder: Path,
    out: Path,
    threshold: float | None = None,
    batch_size: int = 8,
    classes: str | Sequence[str] | None = None,
    modality: str | None = None,
    overlays: bool = True,
) -> list[dict[str, object]]:
    """Segment every image of ``folder`` into ``out/masks`` and ``out/overlays``; one summary row per image.
    ``threshold``: the probability above which a pixel is lesion (default: the segmenter's
    ``decision_threshold``, the model's declared one). ``classes``: the classes of a multi-class checkpoint
    to segment into label maps (names, or ``"all"``; module docstring); ``modality``: said in their prompts.
    ``overlays=False``: masks and the summary only (encoding the overlay PNGs costs more than the network with
    the fastest backends)."""
    if classes is not None:
        return _predict_folder_classes(segmenter, folder, out, classes, threshold, batch_size, modality, overlays)
    items = read_prediction_folder(folder, segmenter.requires_text)
    model = getattr(segmenter, "model", None)
    if model is not None:
        check_reports(model, {str(folder): items})

    def read(chunk: Sequence[FolderItem]) -> tuple[list[np.ndarray], list[str | None]]:
        return [read_hwc(item.image_path) for item in chunk], [file_row_direction(item.image_path) for item in chunk]

    def segment(chunk: Sequence[FolderItem], loaded: tuple[list[np.ndarray], list[str | None]]) -> list[Any]:
        arrays, directions = loaded
        return segmenter.predict_batch(
            arrays, [item.text for item in chunk], threshold=threshold, row_directions=directions
        )

    def write(
        chunk: Sequence[FolderItem], loaded: tuple[list[np.ndarray], list[str | None]], predictions: list[Any]
    ) -> list[dict[str, object]]:
        written = []
        for item, array, prediction in zip(chunk, loaded[0], predictions):
            mask_path = write_mask(out / "masks" / item.mask_name, prediction.mask)
            if overlays:
                write_overlay(out / "overlays" / item.mask_name, array, prediction.mask)
            written.append(
                {
                    "image": item.image_path.name,
                    "mask": str(mask_path.relative_to(out)),
                    "text": item.text,
                    "lesion_pixels": int(prediction.mask.sum()),
                    "max_probability": round(prediction.max_probability, 6),
                    "text_warnings": " | ".join(prediction.warnings),
                    **consistency_columns(prediction.consistency),
                    "height": prediction.mask.shape[0],
                    "width": prediction.mask.shape[1],
                }
            )
        return written

    return _predict_in_batches(items, batch_size, read, segment, write, out / "predictions.csv")


def consistency_columns(consistency: Sequence[ConsistencyWarning]) -> dict[str, str]:
    """``consistency`` (the codes) and ``consistency_warnings`` (the sentences) of one result: how it stands
    against its report and the training images (:mod:`lvseg.inference.consistency`)."""
    return {
        "consistency": ";".join(warning.code for warning in consistency),
        "consistency_warnings": " | ".join(warning.message for warning in consistency),
    }


def _predict_in_batches(
    items: Sequence[FolderItem],
    batch_size: int,
    read: Callable[[Sequence[FolderItem]], Any],
    segment: Callable[[Sequence[FolderItem], Any], Any],
    write: Callable[[Sequence[FolderItem], Any, Any], list[dict[str, object]]],
    summary: Path,
) -> list[dict[str, object]]:
    """``items`` in batches of ``batch_size`` through read -> segment -> write, decoding the next batch and
    writing the previous one while the network runs (:func:`lvseg.inference.pipeline.run_overlapped`); the
    rows go to ``summary`` (CSV) and come back."""
    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]

    def progress(done: int) -> None:
        if done == len(chunks) or done % 10 == 0:
            log.info("predicted %d / %d images", min(done * batch_size, len(items)), len(items))

    rows = [row for batch in run_overlapped(chunks, read, segment, write, on_batch=progress) for row in batch]
    _write_rows(summary, rows)
    return rows


def _write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    from lvseg.files import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _predict_folder_classes(
    segmenter: Segmenter,
    folder: Path,
    out: Path,
    classes: str | Sequence[str],
    threshold: float | None,
    batch_size: int,
    modality: str | None,
    overlays: bool,
) -> list[dict[str, object]]:
    """:func:`predict_folder` with ``classes``: label maps, class overlays, per-class areas."""
    from lvseg.inference.multiclass import pixel_spacing_of

    chosen = segmenter.select_classes(classes)
    names = [info.name for info in chosen]
    items = read_prediction_folder(folder, requires_text=False)  # the prompts are the classes'
    texts = read_class_texts(folder, chosen)
    Loaded = tuple[list[np.ndarray], list[tuple[float, float] | None]]

    def read(chunk: Sequence[FolderItem]) -> Loaded:
        return [read_hwc(item.image_path) for item in chunk], [pixel_spacing_of(item.image_path) for item in chunk]

    def segment(chunk: Sequence[FolderItem], loaded: Loaded) -> list[ClassPrediction]:
        return segmenter.segment_classes_batch(
            loaded[0],
            names,
            threshold=threshold,
            prompts=[texts.get(item.image_path.stem) for item in chunk],
            modality=modality,
            pixel_spacings=loaded[1],
            batch_size=max(batch_size, len(chosen)),
        )

    def write(
        chunk: Sequence[FolderItem], loaded: Loaded, predictions: list[ClassPrediction]
    ) -> list[dict[str, object]]:
        written: list[dict[str, object]] = []
        for item, array, prediction in zip(chunk, loaded[0], predictions):
            mask_path = write_class_outputs(
                out / "masks" / item.mask_name,
                out / "overlays" / item.mask_name if overlays else None,
                array,
                prediction,
            )
            written.append(
                {
                    "image": item.image_path.name,
                    "mask": str(mask_path.relative_to(out)),
                    "text": item.text,
                    "classes": ";".join(names),
                    "labelled_pixels": int((prediction.label_map > 0).sum()),
                    **class_area_columns(prediction),
                    "text_warnings": " | ".join(prediction.warnings()),
                    **consistency_columns(prediction.consistency),
                    "height": prediction.label_map.shape[0],
                    "width": prediction.label_map.shape[1],
                }
            )
        return written

    return _predict_in_batches(items, batch_size, read, segment, write, out / "predictions.csv")
