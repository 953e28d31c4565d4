"""Prediction for a whole folder: ``predict_folder(segmenter, folder, out)``.

The folder has the LViT layout without masks: ``img/`` plus a ``*_text.xlsx`` or ``*_text.csv`` with
columns ``Image`` = output mask name, ``Description`` = report (image-only models need no table); or it is
a plain folder of images, with the text table (if any) beside them.
Writes ``out/masks/<Image>`` (PNG, 0/255), ``out/overlays/<Image>`` and ``out/predictions.csv``.
Images are matched to table rows by file stem (``x.tif`` <-> ``x.png``, also ``mask_x.png``). Every file
is written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvseg.data.dicom import file_row_direction
from lvseg.data.layout import IMAGE_DIR, MASK_PREFIX, check_reports, find_text_table, read_text_table
from lvseg.data.report_text import BLANK_REPORT, is_blank_report
from lvseg.errors import DataValidationError, LvsegError

if TYPE_CHECKING:
    from lvseg.inference.segmenter import Segmenter

log = logging.getLogger(__name__)


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

    return write_png(path, mask_to_uint8(mask))


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    """Write ``mask`` blended over ``image`` ((C, H, W) float or (H, W, 3) uint8) as a PNG, atomically."""
    from lvseg.data.images import write_png
    from lvseg.rendering import overlay_mask

    return write_png(path, overlay_mask(image, mask))


def read_hwc(path: Path) -> np.ndarray:
    """Read an image once as float (H, W, C) in [0, 1] (what predict_batch and overlays both accept)."""
    from lvseg.data.images import read_image

    return np.transpose(read_image(path, channels=None), (1, 2, 0))


def predict_folder(
    segmenter: Segmenter, folder: Path, out: Path, threshold: float | None = None, batch_size: int = 8
) -> list[dict[str, object]]:
    """Segment every image of ``folder`` into ``out/masks`` and ``out/overlays``; one summary row per image.
    ``threshold``: the probability above which a pixel is lesion (default: the segmenter's
    ``decision_threshold``, the model's declared one)."""
    from lvseg.files import atomic_write_text

    items = read_prediction_folder(folder, segmenter.requires_text)
    model = getattr(segmenter, "model", None)
    if model is not None:
        check_reports(model, {str(folder): items})
    rows: list[dict[str, object]] = []
    for start in range(0, len(items), batch_size):
        chunk: Sequence[FolderItem] = items[start : start + batch_size]
        arrays = [read_hwc(item.image_path) for item in chunk]
        directions = [file_row_direction(item.image_path) for item in chunk]
        predictions = segmenter.predict_batch(
            arrays, [item.text for item in chunk], threshold=threshold, row_directions=directions
        )
        for item, array, prediction in zip(chunk, arrays, predictions):
            mask_path = write_mask(out / "masks" / item.mask_name, prediction.mask)
            write_overlay(out / "overlays" / item.mask_name, array, prediction.mask)
            rows.append(
                {
                    "image": item.image_path.name,
                    "mask": str(mask_path.relative_to(out)),
                    "text": item.text,
                    "lesion_pixels": int(prediction.mask.sum()),
                    "max_probability": round(prediction.max_probability, 6),
                    "text_warnings": " | ".join(prediction.warnings),
                    # the result against its report and the training images (lvseg.inference.consistency)
                    "consistency": ";".join(warning.code for warning in prediction.consistency),
                    "consistency_warnings": " | ".join(warning.message for warning in prediction.consistency),
                    "height": prediction.mask.shape[0],
                    "width": prediction.mask.shape[1],
                }
            )
        log.info("predicted %d / %d images", min(start + batch_size, len(items)), len(items))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "predictions.csv", buffer.getvalue())
    return rows
