"""``lvseg predict``: segment one image described by a report, or a whole folder of them.

Single image::

    lvseg predict --checkpoint model.ckpt --image x.png --text "Bilateral ..." --out mask.png [--overlay o.png]

Folder (the LViT layout without masks: ``img/`` plus a ``*_text.xlsx`` or ``*_text.csv`` with columns
``Image`` = output mask name, ``Description`` = report; or a plain folder of images with the table beside them)::

    lvseg predict --checkpoint model.ckpt --folder Test_Folder --out predictions/

writes ``predictions/masks/<Image>`` (PNG, 0/255), ``predictions/overlays/<Image>`` and
``predictions/predictions.csv`` (:func:`lvseg.inference.folder.predict_folder`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from lvseg.cli.limits import check_inference_memory
from lvseg.cli.output import console as make_console
from lvseg.cli.output import count
from lvseg.data.dicom import file_row_direction
from lvseg.data.report_text import BLANK_REPORT, is_blank_report
from lvseg.errors import LvsegError
from lvseg.files import check_output
from lvseg.inference.backend_choice import BACKEND_HELP, CHECKPOINT_HELP
from lvseg.inference.folder import predict_folder, read_hwc, write_mask, write_overlay
from lvseg.inference.threshold import THRESHOLD_HELP, check_threshold

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from lvseg.inference.segmenter import Segmenter

log = logging.getLogger(__name__)

CLASSES_HELP = (
    "Multi-class checkpoints: the classes to segment, e.g. 'liver,kidney', or 'all'. Several give a label map "
    "(PNG of class values), an overlay with a legend and per-class areas (OUT stem + '_areas.csv'); one gives "
    "its 0/255 mask. Each class is asked for with its own prompt (its template, else its name), not --text."
)


def _check_png(path: Path, flag: str) -> None:
    if path.suffix.lower() != ".png":
        raise LvsegError(f"{flag} '{path}' must be a .png file (masks must be stored losslessly)")


# ------------------------------------------------------------------------------------------------ command


def _check_distinct_outputs(image: Path, out: Path, overlay: Path | None) -> None:
    """The mask must not overwrite its image, nor the overlay the mask (or the image)."""
    same = lambda first, second: first.resolve() == second.resolve()  # noqa: E731
    if same(out, image):
        raise LvsegError(f"--out '{out}' is the image itself; write the mask to another file")
    if overlay is not None and same(overlay, out):
        raise LvsegError(f"--overlay '{overlay}' is the --out file; give the overlay and the mask different files")
    if overlay is not None and same(overlay, image):
        raise LvsegError(f"--overlay '{overlay}' is the image itself; write the overlay to another file")


def predict_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Mask PNG (with --image) or output folder (with --folder)."),
    image: Path = typer.Option(None, "--image", "-i", help="One image to segment."),
    text: str = typer.Option("", "--text", "-t", help="The image's report (required by text models)."),
    overlay: Path = typer.Option(None, "--overlay", help="Also write the mask over the image here (PNG)."),
    folder: Path = typer.Option(
        None,
        "--folder",
        help="A folder of images (or with img/ holding them) and a *_text.xlsx or *_text.csv (text models).",
    ),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass (--folder)."),
    overlays: bool = typer.Option(
        True, "--overlays/--no-overlays", help="--folder: also write OUT/overlays/ (--no-overlays: masks and CSV)."
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: CUDA if available)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    class_text: Optional[list[str]] = typer.Option(
        None,
        "--class-text",
        help="With --classes and --image: NAME=TEXT, the prompt of class NAME instead of its own (repeatable). "
        "A folder's per-class prompts are its text table's Description_<name> columns.",
    ),
    modality: Optional[str] = typer.Option(
        None,
        "--modality",
        help="With --classes: the modality said in the prompts, e.g. 'CT slice' (default: training's).",
    ),
) -> None:
    """Segment an image described by its report (or every image of a folder)."""
    from lvseg.inference import load_model

    if (image is None) == (folder is None):
        raise LvsegError("give either --image (one image, with --text) or --folder (images and a text table)")
    if threshold is not None:
        check_threshold(threshold, "--threshold")
    console = make_console()
    if image is not None:
        if not overlays:
            raise LvsegError("--no-overlays is for --folder; with --image an overlay is written only with --overlay")
        _check_png(out, "--out")
        if overlay is not None:
            _check_png(overlay, "--overlay")
        if image.is_dir():
            raise LvsegError(f"--image '{image}' is a folder; give one image file, or the folder with --folder")
        if not image.is_file():
            raise LvsegError(f"image '{image}' not found")
        _check_distinct_outputs(image, out, overlay)
        check_output(out, "--out", "file", "the mask PNG")
        if overlay is not None:
            check_output(overlay, "--overlay", "file", "the overlay PNG")
        check_inference_memory(checkpoint, 1, device, None)
        segmenter = load_model(checkpoint, device=device, backend=backend, expected_images=1)
        if classes is not None:
            # a text model asks once per class: up to 16 rows (segment_classes' batch) in one forward pass
            check_inference_memory(checkpoint, min(_rows_per_image(segmenter, classes), 16), device, None)
            _predict_image_classes(
                segmenter, image, out, overlay, classes, text, class_text or [], modality, threshold, console
            )
            return
        if class_text or modality:
            raise LvsegError("--class-text and --modality are for --classes (the prompts of a multi-class checkpoint)")
        if segmenter.requires_text and is_blank_report(text):
            raise LvsegError(
                f"model '{segmenter.model_name}' in '{checkpoint}' reads the report: "
                f"give the image's report with --text{f' (this one {BLANK_REPORT})' if text else ''}"
            )
        if text.strip() and not segmenter.requires_text:
            log.info("model '%s' is image-only: the text is ignored", segmenter.model_name)
        array = read_hwc(image)
        prediction = segmenter.predict(array, text, threshold=threshold, row_direction=file_row_direction(image))
        write_mask(out, prediction.mask)
        for warning in prediction.warnings:  # how the model read the report, before the result it produced
            console.print(f"warning: {warning}", style="yellow", highlight=False)
        finding = (
            count(int(prediction.mask.sum()), "lesion pixel")
            if prediction.lesion_found
            else f"no lesion found, highest probability {prediction.max_probability:.3f}"
        )
        console.print(
            f"mask ({prediction.mask.shape[1]}x{prediction.mask.shape[0]}, {finding}): {out}", highlight=False
        )
        for check in prediction.consistency:  # the result against its report and the training images
            console.print(f"check this result: {check.message}", style="yellow", highlight=False)
        if overlay is not None:
            write_overlay(overlay, array, prediction.mask)
            console.print(f"overlay: {overlay}", highlight=False)
        return
    if overlay is not None:
        raise LvsegError("--overlay is for --image; with --folder the overlays go to OUT/overlays/")
    if out.suffix.lower() == ".png":
        raise LvsegError(f"with --folder, --out must be a folder, got the file name '{out}'")
    check_output(out, "--out", "folder", "for masks/, overlays/ and predictions.csv")
    if class_text:
        raise LvsegError(
            "--class-text is for --image; with --folder, give per-class prompts in the text table's "
            "Description_<name> columns"
        )
    if modality and classes is None:
        raise LvsegError("--modality is for --classes (the prompts of a multi-class checkpoint)")
    check_inference_memory(checkpoint, batch_size, device, "--batch-size")
    segmenter = load_model(checkpoint, device=device, backend=backend)
    if classes is not None and _rows_per_image(segmenter, classes) > batch_size:  # one row per class at least
        check_inference_memory(checkpoint, _rows_per_image(segmenter, classes), device, "--batch-size")
    rows = predict_folder(
        segmenter,
        folder,
        out,
        threshold=threshold,
        batch_size=batch_size,
        classes=classes,
        modality=modality,
        overlays=overlays,
    )
    written = f", overlays in {out / 'overlays'}" if overlays else ""
    console.print(
        f"{count(len(rows), 'mask')} in {out / 'masks'}{written}, summary {out / 'predictions.csv'}", highlight=False
    )
    flagged = sum(bool(row["consistency"]) for row in rows)
    if flagged:
        console.print(
            f"check {count(flagged, 'result')}: the predictions.csv column 'consistency_warnings' says why",
            style="yellow",
            highlight=False,
        )


def _class_texts(items: list[str]) -> dict[str, str]:
    """``--class-text NAME=TEXT`` values -> {name: text}; every malformed or repeated item in one error."""
    texts: dict[str, str] = {}
    problems = []
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name.strip() or not value.strip():
            problems.append(f"{item!r} is not NAME=TEXT")
        elif name.strip().lower() in {key.lower() for key in texts}:
            problems.append(f"class {name.strip()!r} is given twice")
        else:
            texts[name.strip()] = value.strip()
    if problems:
        raise LvsegError("--class-text: " + "; ".join(problems))
    return texts


def _rows_per_image(segmenter: Segmenter, classes: str) -> int:
    """How many rows one image becomes with ``--classes``: one per class for a text model (each class is its own
    prompt), one for a model with an output channel per class."""
    return len(segmenter.select_classes(classes)) if segmenter.requires_text else 1


def _predict_image_classes(
    segmenter: Segmenter,
    image: Path,
    out: Path,
    overlay: Path | None,
    classes: str,
    text: str,
    class_text: list[str],
    modality: str | None,
    threshold: float | None,
    console: Console,
) -> None:
    """``--image`` with ``--classes``: the label map (or one class's mask), its overlay, per-class areas."""
    from lvseg.inference.folder import write_class_outputs
    from lvseg.inference.multiclass import pixel_spacing_of, write_area_table

    if text.strip():
        raise LvsegError(
            "with --classes each class is asked for with its own prompt, not with --text; give a class's own "
            "text with --class-text NAME=TEXT"
        )
    array: np.ndarray = read_hwc(image)
    prediction = segmenter.segment_classes(
        array,
        classes,
        threshold=threshold,
        prompts=_class_texts(class_text),
        modality=modality,
        pixel_spacing_mm=pixel_spacing_of(image),
    )
    write_class_outputs(out, overlay, array, prediction)
    areas = write_area_table(out.with_name(f"{out.stem}_areas.csv"), prediction)
    for warning in prediction.warnings():  # how the model read each class's prompt
        console.print(f"warning: {warning}", style="yellow", highlight=False)
    height, width = prediction.label_map.shape
    kind = "mask" if len(prediction.classes) == 1 else "label map"
    console.print(f"{kind} ({width}x{height}): {out}", highlight=False)
    for result in prediction.classes:
        prompt = f" (asked: {result.prompt!r})" if result.prompt else ""
        console.print(f"  {result.summary()}{prompt}", highlight=False)
    console.print(f"areas: {areas}", highlight=False)
    for check in prediction.consistency:
        console.print(f"check this result: {check.message}", style="yellow", highlight=False)
    if overlay is not None:
        console.print(f"overlay: {overlay}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
