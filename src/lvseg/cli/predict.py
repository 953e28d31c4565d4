"""``lvseg predict``: segment one image described by a report, or a whole folder of them.

Single image::

    lvseg predict --checkpoint model.ckpt --image x.png --text "Bilateral ..." --out mask.png [--overlay o.png]

Folder (the LViT layout without masks: ``img/`` plus a ``*_text.xlsx`` or ``*_text.csv`` with columns
``Image`` = output mask name, ``Description`` = report)::

    lvseg predict --checkpoint model.ckpt --folder Test_Folder --out predictions/

writes ``predictions/masks/<Image>`` (PNG, 0/255), ``predictions/overlays/<Image>`` and
``predictions/predictions.csv``. Images are matched to table rows by file stem (``x.tif`` <-> ``x.png``,
also ``mask_x.png``). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from lvseg.data.layout import IMAGE_DIR, MASK_PREFIX, find_text_table, read_text_table
from lvseg.errors import DataValidationError, LvsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderItem:
    """One image of a prediction folder: its file, its report and the name of the mask to write."""

    image_path: Path
    text: str
    mask_name: str


# ----------------------------------------------------------------------------------------------- reading


def _png_name(name: str) -> str:
    return f"{Path(name).stem}.png"


def read_prediction_folder(folder: Path, requires_text: bool) -> list[FolderItem]:
    """The images of ``folder/img`` with their reports and output mask names.

    Raises :class:`LvsegError` when the folder, its ``img/`` or (for a text model) its text table is
    missing, and :class:`DataValidationError` listing every row without an image or report.
    """
    from lvseg.data.images import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise LvsegError(f"folder '{folder}' not found")
    image_dir = folder / IMAGE_DIR
    if not image_dir.is_dir():
        raise LvsegError(f"folder '{folder}' has no '{IMAGE_DIR}/' subfolder with the images")
    images = {p.stem: p for p in sorted(image_dir.iterdir())
              if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS}
    if not images:
        raise LvsegError(f"image folder '{image_dir}' holds no PNG/JPEG/TIFF/BMP images")
    table = find_text_table(folder)
    if table is None:
        if requires_text:
            raise LvsegError(f"folder '{folder}' has no *_text.xlsx or *_text.csv; this model reads a report "
                             "per image (columns 'Image' and 'Description')")
        return [FolderItem(path, "", _png_name(path.name)) for path in images.values()]

    items, problems, seen = [], [], set()
    for row, key, text in read_text_table(table):
        stem = Path(key).stem
        if stem not in images and stem.startswith(MASK_PREFIX):
            stem = stem[len(MASK_PREFIX):]
        if stem not in images:
            problems.append(f"{table.name} row {row}: no image named '{stem}.*' in '{image_dir}'")
            continue
        if stem in seen:
            problems.append(f"{table.name} row {row}: image '{stem}' is listed twice")
            continue
        if requires_text and not text:
            problems.append(f"{table.name} row {row}: the Description of '{key}' is empty; this model reads it")
            continue
        seen.add(stem)
        items.append(FolderItem(images[stem], text, _png_name(key)))
    unlisted = sorted(set(images) - seen)
    if unlisted and not problems:
        log.warning("%d image(s) in %s are not in %s and are skipped: %s", len(unlisted), image_dir,
                    table.name, ", ".join(unlisted[:5]))
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
    from lvseg.evaluation.overlay import overlay_mask

    return write_png(path, overlay_mask(image, mask))


def _check_png(path: Path, flag: str) -> None:
    if path.suffix.lower() != ".png":
        raise LvsegError(f"{flag} '{path}' must be a .png file (masks must be stored losslessly)")


def _read_hwc(path: Path) -> np.ndarray:
    """Read an image once as float (H, W, C) in [0, 1] (what predict_batch and overlays both accept)."""
    from lvseg.data.images import read_image

    return np.transpose(read_image(path, channels=None), (1, 2, 0))


def predict_folder(segmenter: object, folder: Path, out: Path, threshold: float = 0.5,
                   batch_size: int = 8) -> list[dict[str, object]]:
    """Segment every image of ``folder`` into ``out/masks`` and ``out/overlays``; one summary row per image."""
    from lvseg.files import atomic_write_text

    items = read_prediction_folder(folder, segmenter.requires_text)
    rows: list[dict[str, object]] = []
    for start in range(0, len(items), batch_size):
        chunk: Sequence[FolderItem] = items[start:start + batch_size]
        arrays = [_read_hwc(item.image_path) for item in chunk]
        predictions = segmenter.predict_batch(arrays, [item.text for item in chunk], threshold=threshold)
        for item, array, prediction in zip(chunk, arrays, predictions):
            mask_path = write_mask(out / "masks" / item.mask_name, prediction.mask)
            write_overlay(out / "overlays" / item.mask_name, array, prediction.mask)
            rows.append({"image": item.image_path.name, "mask": str(mask_path.relative_to(out)),
                         "text": item.text, "lesion_pixels": int(prediction.mask.sum()),
                         "height": prediction.mask.shape[0], "width": prediction.mask.shape[1]})
        log.info("predicted %d / %d images", min(start + batch_size, len(items)), len(items))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "predictions.csv", buffer.getvalue())
    return rows


# ------------------------------------------------------------------------------------------------ command


def predict_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="An lvseg checkpoint (.ckpt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Mask PNG (with --image) or output folder (with --folder)."),
    image: Path = typer.Option(None, "--image", "-i", help="One image to segment."),
    text: str = typer.Option("", "--text", "-t", help="The image's report (required by text models)."),
    overlay: Path = typer.Option(None, "--overlay", help="Also write the mask over the image here (PNG)."),
    folder: Path = typer.Option(None, "--folder", help="A folder with img/ and a *_text.xlsx or *_text.csv."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability above which a pixel is lesion."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass (--folder)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: CUDA if available)."),
) -> None:
    """Segment an image described by its report (or every image of a folder)."""
    from lvseg.inference import load_model

    if (image is None) == (folder is None):
        raise LvsegError("give either --image (one image, with --text) or --folder (img/ and a text table)")
    if not 0.0 < threshold < 1.0:
        raise LvsegError(f"--threshold must be between 0 and 1, got {threshold}")
    console = Console()
    if image is not None:
        _check_png(out, "--out")
        if overlay is not None:
            _check_png(overlay, "--overlay")
        if not image.is_file():
            raise LvsegError(f"image '{image}' not found")
        segmenter = load_model(checkpoint, device=device)
        if segmenter.requires_text and not text.strip():
            raise LvsegError(f"model '{segmenter.model_name}' in '{checkpoint}' reads the report: "
                             "give the image's report with --text")
        if text.strip() and not segmenter.requires_text:
            log.info("model '%s' is image-only: the text is ignored", segmenter.model_name)
        array = _read_hwc(image)
        prediction = segmenter.predict(array, text, threshold=threshold)
        write_mask(out, prediction.mask)
        console.print(f"mask ({prediction.mask.shape[1]}x{prediction.mask.shape[0]}, "
                      f"{int(prediction.mask.sum())} lesion pixels): {out}", highlight=False)
        if overlay is not None:
            write_overlay(overlay, array, prediction.mask)
            console.print(f"overlay: {overlay}", highlight=False)
        return
    if overlay is not None:
        raise LvsegError("--overlay is for --image; with --folder the overlays go to OUT/overlays/")
    if out.suffix.lower() == ".png":
        raise LvsegError(f"with --folder, --out must be a folder, got the file name '{out}'")
    segmenter = load_model(checkpoint, device=device)
    rows = predict_folder(segmenter, folder, out, threshold=threshold, batch_size=batch_size)
    console.print(f"{len(rows)} masks in {out / 'masks'}, overlays in {out / 'overlays'}, "
                  f"summary {out / 'predictions.csv'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
