"""Pydantic models of the API's JSON, so that ``/docs`` describes every field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error: a plain-words message and optional details (which field, which limit)."""

    error: str = Field(description="What was wrong with the request, in plain words.")
    detail: Any = Field(default=None, description="Machine-readable details, e.g. the field or the limit.")


class HealthResponse(BaseModel):
    status: str = Field(description="'ok' when the service is up.")
    ready: bool = Field(description="True once the model is loaded and requests can be served.")
    model: str = Field(description="Name of the loaded network.")
    device: str = Field(description="Where inference runs, e.g. 'cpu' or 'cuda:0'.")
    auth_required: bool = Field(description="True when /api routes need the X-API-Key header.")


class Limits(BaseModel):
    max_upload_mb: float = Field(description="Largest accepted upload, in MiB.")
    max_side_px: int = Field(description="Largest accepted image width or height, in pixels.")
    max_pixels: int = Field(description="Largest accepted number of pixels (decompression-bomb guard).")
    max_working_side_px: int = Field(
        description="Larger images are analysed reduced to this many pixels on "
        "their longer side (the model sees its own input size)."
    )
    max_text_chars: int = Field(description="Longest accepted report text, in characters.")
    max_note_chars: int = Field(description="Longest accepted notes or recommendations, in characters.")


class ClassEntry(BaseModel):
    value: int = Field(description="The class's value in the label map (0 is background).")
    name: str = Field(description="The class's name, as the 'classes' form field takes it.")
    colour: str = Field(description="The class's overlay colour, '#rrggbb' (fixed by its place in the table).")
    prompt: str = Field(
        description="What a text model is asked for this class (its template, else its name); '' for a model "
        "with one output channel per class."
    )


class ModelInfo(BaseModel):
    model: str = Field(description="Name of the network, e.g. 'lvit' or 'unet'.")
    input_size: int = Field(description="Side of the square input the network sees; images are resized to it.")
    requires_text: bool = Field(description="True when the model needs the report text.")
    text_encoder: dict[str, Any] | None = Field(description="Configuration of the text encoder, or null.")
    metrics: dict[str, Any] = Field(description="Metrics stored in the checkpoint (e.g. validation Dice).")
    validation_dice: float | None = Field(description="The validation Dice among the metrics, if recorded.")
    validation_data: str | None = Field(default=None, description="What the validation Dice was measured on.")
    device: str = Field(description="Where inference runs.")
    training_data: str | None = Field(
        default=None, description="The data the model was trained on, as its checkpoint recorded it."
    )
    example_reports: list[str] = Field(
        default_factory=list, description="Reports in the wording the model reads (its declared examples)."
    )
    vocabulary: list[str] | None = Field(
        default=None,
        description="The words a learned-vocabulary model knows (others are ignored), at most 2000; null "
        "for other text encoders.",
    )
    threshold: float = Field(
        description="Probability above which a pixel is lesion (the model's declared "
        "decision threshold unless the server was given another)."
    )
    accepted_formats: list[str] = Field(description="Image formats accepted by the upload endpoints.")
    limits: Limits
    classes: list[ClassEntry] = Field(
        default_factory=list,
        description="The classes of a multi-class checkpoint, in table order (empty for a binary one): the "
        "segment endpoints' 'classes' field chooses among them and the result is a label map.",
    )
    classes_required: bool = Field(
        default=False,
        description="True for a model with one output channel per class: every request chooses classes. A "
        "multi-class text model without a choice segments what the report describes, as a binary one.",
    )


class LesionInfo(BaseModel):
    label: int = Field(description="Lesion number (1-based), as in the overlay.")
    area_px: int = Field(description="Lesion area in pixels.")
    area_mm2: float | None = Field(default=None, description="Lesion area in mm² (DICOM with PixelSpacing), else null.")
    colour: str = Field(description="The lesion's overlay colour, '#rrggbb'.")
    bbox: list[int] = Field(description="Bounding box [x, y, width, height] in pixels.")


class ClassResultInfo(BaseModel):
    name: str = Field(description="The class's name.")
    value: int = Field(description="Its value in the label map.")
    colour: str = Field(description="Its overlay colour, '#rrggbb'.")
    prompt: str = Field(description="What the model was asked for it ('' for a model with one channel per class).")
    finding: str = Field(description="'<name> found', or 'no <name> found (highest probability p)'.")
    area_px: int = Field(description="Its pixels in the label map (overlaps go to the most probable class).")
    area_percent: float = Field(description="Its pixels as a percentage of the image.")
    area_mm2: float | None = Field(description="Its area in mm² when the image gives its pixel size, else null.")
    regions: int = Field(description="Its connected regions (8-connected).")
    max_probability: float = Field(description="Its highest probability anywhere in the image.")
    mean_probability: float | None = Field(description="Its mean probability inside its pixels (null when absent).")
    outvoted_px: int = Field(description="Pixels above the threshold for this class that a more probable class took.")


class ConsistencyInfo(BaseModel):
    code: str = Field(
        description="What was found: report-finding-not-found, report-states-no-finding, "
        "more-regions-than-report, region-outside-report, image-unlike-training, or image-header-value-ignored "
        "(a value of the file's header, e.g. a DICOM window that is not a finite number, was not used)."
    )
    message: str = Field(description="The same in one plain sentence, as the page and the PDF show it.")


class SegmentResponse(BaseModel):
    mask: str = Field(
        description="The mask as a base64 PNG (8-bit, 255 = lesion) at the original resolution; with classes, the "
        "label map (pixel = class value, 8-bit, or 16-bit for values over 255)."
    )
    overlay: str = Field(
        description="The image with each lesion (with classes: each class) in its own colour, base64 PNG, "
        "original resolution."
    )
    heatmap: str = Field(
        description="The lesion probability of every pixel as a colour map (dark blue 0 ... "
        "yellow 1), base64 PNG at the mask's size; with classes, the highest class probability."
    )
    side_markers: list[str] | None = Field(
        description="The patient's sides at the image's [left, right] edges "
        "(e.g. ['R', 'L']), drawn on the overlay and heat-map, when the "
        "DICOM gives PatientOrientation; else null."
    )
    original: str | None = Field(
        default=None, description="The decoded image as base64 PNG (only with ?include_original=true)."
    )
    width: int = Field(
        description="Width of the analysed image (and of mask and overlay) in pixels: the file's "
        "own, or less for an image reduced to the server's working size (see original_width)."
    )
    height: int = Field(description="Height of the analysed image (and of mask and overlay) in pixels.")
    original_width: int = Field(description="Width of the uploaded image in pixels (upright).")
    original_height: int = Field(description="Height of the uploaded image in pixels (upright).")
    image_format: str = Field(description="The sniffed format: png, jpeg, tiff or dicom.")
    area_px: int = Field(description="Number of lesion pixels.")
    area_percent: float = Field(description="Lesion pixels as a percentage of the image.")
    area_mm2: float | None = Field(
        description="Lesion area in mm² when the image gives its pixel size (DICOM "
        "PixelSpacing or ImagerPixelSpacing), else null."
    )
    pixel_spacing_mm: list[float] | None = Field(description="(row, column) size of an analysed pixel in mm, or null.")
    lesions: int = Field(description="Number of connected lesions (8-connected).")
    lesion_details: list[LesionInfo] = Field(
        description="The largest lesions (at most 50), largest first; empty with classes (see 'classes')."
    )
    finding: Literal["lesion found", "no lesion found"] = Field(description="Whether the mask holds any lesion.")
    confidence: float = Field(
        description="Mean probability inside the mask; with no lesion, the highest "
        "probability anywhere (how close the model came to marking one)."
    )
    max_probability: float = Field(description="The highest lesion probability anywhere in the image.")
    inference_ms: float = Field(description="Model inference time in milliseconds.")
    model: str = Field(description="Name of the network that made the mask.")
    validation_dice: float | None = Field(description="That model's validation Dice, if recorded.")
    validation_data: str | None = Field(description="What that validation Dice was measured on, if recorded.")
    training_data: str | None = Field(
        default=None, description="What that model was trained on, as its checkpoint recorded it."
    )
    report_text: str = Field(description="The report text this result was computed from.")
    text_warnings: list[str] = Field(
        description="How the model read the report, when it did not read all of it: "
        "unknown words, a report outside its grammar. Empty when read as written."
    )
    unknown_words: list[str] = Field(
        description="Report words outside the model's vocabulary (learned vocabularies only)."
    )
    consistency: list[ConsistencyInfo] = Field(
        default_factory=list,
        description="Where the result contradicts its report (an empty mask for a report that names a "
        "lesion, far more regions than it counts, regions in a lung or zone it does not name), the image is "
        "unlike the model's training images, or the file could not be read as written (first). Empty when "
        "nothing was found.",
    )
    report_parsed: bool | None = Field(
        description="For a report-grammar model (c2fvl): whether the report "
        "followed the grammar; null for other models."
    )
    classes: list[ClassResultInfo] | None = Field(
        default=None,
        description="With classes chosen: one entry per class, in table order (area_px, lesions, finding and "
        "confidence above then describe all of them together); null for a binary result.",
    )
    result_id: str = Field(
        description="Identifies this result for POST /api/results/{result_id}/report (kept in "
        "memory for a limited time), so the PDF describes exactly this result."
    )
