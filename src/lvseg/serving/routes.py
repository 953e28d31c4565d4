"""The endpoints: the web page, health, model info, segmentation and the PDF reports.

They read the app's parts from ``app.state`` (set by :func:`lvseg.serving.app.create_app`): ``service``
(:class:`~lvseg.serving.service.Service`), ``admission`` (:class:`~lvseg.serving.service.Admission`) and
``api_key``. The ``/api`` router is built per app, because its schema states that app's limits.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from lvseg.data.images import mask_to_uint8, png_bytes
from lvseg.data.provenance import describe_training_data
from lvseg.data.report_text import BLANK_REPORT, is_blank_report
from lvseg.inference.multiclass import ALL_CLASSES, ClassSelectionError, label_map_png, select_classes
from lvseg.rendering import hex_color
from lvseg.serving.errors import ApiError
from lvseg.serving.forms import MIB, ParsedForm, read_multipart
from lvseg.serving.openapi import FormField, _error_responses, _multipart_body
from lvseg.serving.report_pdf import ReportContent, find_validation_dice
from lvseg.serving.results import RESULT_ID_PATTERN, KeptResult
from lvseg.serving.schemas import (
    ClassEntry,
    ClassResultInfo,
    ConsistencyInfo,
    HealthResponse,
    LesionInfo,
    Limits,
    ModelInfo,
    SegmentResponse,
)
from lvseg.serving.security import require_api_key
from lvseg.serving.service import Admission, Service, ServiceConfig

STATIC_DIR = Path(__file__).resolve().parent / "static"
ACCEPTED_FORMATS = ["png", "jpeg", "tiff", "bmp", "dicom"]
#: The optional form fields printed on a PDF report.
DETAIL_FIELDS = ("study_id", "patient_id", "referrer", "notes", "recommendations")
#: Longest accepted value of the 'classes' field (comma-separated class names).
MAX_CLASSES_CHARS = 2000


def current_service(request: Request) -> Service:
    """The app's :class:`Service` (a dependency)."""
    service: Service = request.app.state.service
    return service


def current_admission(request: Request) -> Admission:
    """The app's upload counter (a dependency)."""
    admission: Admission = request.app.state.admission
    return admission


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(array: np.ndarray) -> bytes:
    """PNG bytes with fast compression (latency over size)."""
    return png_bytes(array, compress_level=1)


def _device_name(device: Any) -> str:
    return str(device) if device is not None else "cpu"


def _text_encoder_config(encoder: Any) -> dict[str, Any] | None:
    """What ``/api/model`` says of a text encoder: its ``config()``, long lists summarised."""
    if encoder is None:
        return None
    config = getattr(encoder, "config", None)
    try:
        value = config() if callable(config) else config
    except Exception:  # descriptive only
        return {"type": type(encoder).__name__}
    if not isinstance(value, dict):
        return {"type": type(encoder).__name__}
    # Long lists (a learned vocabulary) are summarised: the endpoint describes, it does not dump.
    return {
        key: (f"{len(item)} entries" if isinstance(item, (list, tuple)) and len(item) > 32 else item)
        for key, item in value.items()
    }


def _training_data(service: Service) -> str | None:
    """The training data as the checkpoint recorded it, in one phrase (None when it did not)."""
    return describe_training_data(service.segmenter.hparams.get("training_data"))


#: At most this many vocabulary words in /api/model (a learned vocabulary of a large report set is long).
MAX_VOCABULARY_SHOWN = 2000


def _vocabulary(encoder: Any) -> list[str] | None:
    """The words a learned-vocabulary text encoder knows, without its special tokens; None for others."""
    vocab = getattr(encoder, "vocab", None)
    if not isinstance(vocab, list):
        return None
    return [word for word in vocab if not (word.startswith("<") and word.endswith(">"))][:MAX_VOCABULARY_SHOWN]


def _validation_data(service: Service) -> Any:
    """What the model's validation metrics were measured on, if its hyperparameters say."""
    return service.segmenter.hparams.get("validation_data")


async def _read_form(request: Request, config: ServiceConfig, fields: tuple[str, ...]) -> ParsedForm:
    """The request's multipart form (size- and time-capped), refusing fields other than ``fields`` (422)."""
    form = await read_multipart(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        {"image"},
        config.form_limits,
    )
    unknown = sorted((set(form.fields) | set(form.files)) - set(fields))
    if unknown:
        raise ApiError(
            422,
            f"unknown field(s) {', '.join(repr(name) for name in unknown)}; this endpoint takes {', '.join(fields)}",
            {"fields": unknown},
        )
    return form


def _segment_fields(service: Service) -> tuple[str, ...]:
    """The fields a segment endpoint reads: ``classes`` too for a multi-class checkpoint."""
    return ("image", "text", "classes") if service.segmenter.class_table else ("image", "text")


def _chosen_classes(form: ParsedForm, service: Service) -> list[str] | None:
    """The class names the 'classes' field chooses (comma-separated, or 'all'), checked against the
    checkpoint's table; None when it chooses none (one structure, from the report), which a model with one
    output channel per class refuses (422 naming the accepted names)."""
    segmenter = service.segmenter
    accepted = [info.name for info in segmenter.class_table]
    raw = form.fields.get("classes", "")
    if len(raw) > MAX_CLASSES_CHARS:
        raise ApiError(
            422,
            f"field 'classes' is {len(raw)} characters long; at most {MAX_CLASSES_CHARS} are accepted",
            {"field": "classes", "max": MAX_CLASSES_CHARS},
        )
    if not raw.strip():
        if segmenter.output_classes > 1:
            raise ApiError(
                422,
                f"this model segments {segmenter.output_classes} classes at once: choose some in the field "
                f"'classes' ({', '.join(accepted)}, or {ALL_CLASSES!r})",
                {"field": "classes", "accepted": accepted},
            )
        return None
    try:
        chosen = select_classes(segmenter.class_table, raw)
    except ClassSelectionError as error:
        raise ApiError(
            422, str(error), {"field": "classes", "unknown": error.unknown, "accepted": error.accepted or accepted}
        ) from None
    return [info.name for info in chosen]


def _image_and_text(form: ParsedForm, service: Service, text_required: bool = True) -> tuple[bytes, str]:
    """The uploaded image and the report to segment it with (empty for an image-only model), checked.
    ``text_required`` False (classes chosen: each class is asked for with its own prompt): the report may
    be empty; it is kept with the result."""
    config = service.config
    requires_text = service.segmenter.requires_text and text_required
    image = form.files.get("image")
    if image is None:
        raise ApiError(422, "missing field 'image' (the image file)", {"field": "image"})
    text = form.fields.get("text")
    if text is None and requires_text:
        raise ApiError(422, "missing field 'text' (the clinician's report)", {"field": "text"})
    text = text or ""
    if len(text) > config.max_text_chars:
        raise ApiError(
            422,
            f"the report text is {len(text)} characters long; at most {config.max_text_chars} are accepted",
            {"field": "text", "max": config.max_text_chars},
        )
    if requires_text and is_blank_report(text):
        raise ApiError(
            422,
            f"the report text is empty or {BLANK_REPORT}; this model needs the clinician's report",
            {"field": "text"},
        )
    # an image-only model's result has no report
    return image, text.strip() if service.segmenter.requires_text else ""


def _form_extras(form: ParsedForm, config: ServiceConfig) -> dict[str, str]:
    """The report's optional fields (:data:`DETAIL_FIELDS`), stripped, each within its length limit."""
    extras: dict[str, str] = {}
    for name in DETAIL_FIELDS:
        value = form.fields.get(name, "")
        limit = config.max_note_chars if name in ("notes", "recommendations") else config.max_study_id_chars
        if len(value) > limit:
            raise ApiError(
                422,
                f"field '{name}' is {len(value)} characters long; at most {limit} are accepted",
                {"field": name, "max": limit},
            )
        extras[name] = value.strip()
    return extras


def _stored_result(service: Service, result_id: str) -> KeptResult:
    """The kept result ``result_id`` (the PDF then shows exactly what the page showed)."""
    result = service.results.get(result_id)
    if result is None:
        raise ApiError(
            404,
            "this result is no longer kept (the server keeps the last "
            f"{service.results.max_items} results for {service.results.ttl_s / 60:.0f} minutes, in "
            "memory only): segment the image again",
            {"field": "result_id"},
        )
    return result


def _pdf_response(service: Service, result: KeptResult, extras: dict[str, str]) -> Response:
    """The PDF report of ``result`` as a download named after the study id (runs in the thread pool)."""
    segmenter = service.segmenter
    content = ReportContent(
        report_text=result.text,
        measurements=result.measurements,
        model_name=str(segmenter.model_name),
        validation_dice=find_validation_dice(segmenter.metrics),
        validation_data=_validation_data(service),
        training_data=_training_data(service),
        image_size=result.image_size,
        analysed_size=result.analysed_size,
        image_format=result.image_format,
        inference_ms=result.inference_ms,
        text_warnings=result.text_warnings,
        consistency_warnings=[message for _, message in result.consistency],
        classes=result.classes,
        study_id=extras["study_id"] or result.study_id,  # the form first, then the DICOM's own
        patient_id=extras["patient_id"] or result.patient_id,
        referrer=extras["referrer"],
        notes=extras["notes"],
        recommendations=extras["recommendations"],
    )
    pdf = service.report(result.pixels, result.overlay, content)
    safe_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", content.study_id)[:64].strip("._")
    filename = f"lvseg-report-{safe_id}.pdf" if safe_id else "lvseg-report.pdf"
    return Response(
        pdf, media_type="application/pdf", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


#: The web page and the liveness check.
page_router = APIRouter()


@page_router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The web page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@page_router.get("/healthz", response_model=HealthResponse, tags=["service"], summary="Liveness and readiness")
async def healthz(request: Request, service: Service = Depends(current_service)) -> HealthResponse:
    return HealthResponse(
        status="ok",
        ready=True,
        model=str(service.segmenter.model_name),
        device=_device_name(service.segmenter.device),
        auth_required=request.app.state.api_key is not None,
    )


async def model_info(service: Service = Depends(current_service)) -> ModelInfo:
    segmenter, config = service.segmenter, service.config
    metrics = dict(segmenter.metrics)
    return ModelInfo(
        model=str(segmenter.model_name),
        input_size=int(segmenter.img_size),
        requires_text=bool(segmenter.requires_text),
        text_encoder=_text_encoder_config(segmenter.text_encoder),
        metrics=metrics,
        validation_dice=find_validation_dice(metrics),
        validation_data=_validation_data(service),
        training_data=_training_data(service),
        example_reports=list(segmenter.example_reports) if segmenter.requires_text else [],
        vocabulary=_vocabulary(segmenter.text_encoder) if segmenter.requires_text else None,
        device=_device_name(segmenter.device),
        threshold=config.threshold,
        accepted_formats=ACCEPTED_FORMATS,
        limits=Limits(
            max_upload_mb=config.form_limits.max_file_bytes / MIB,
            max_side_px=config.image_limits.max_side,
            max_pixels=config.image_limits.max_pixels,
            max_working_side_px=config.image_limits.max_working_side,
            max_text_chars=config.max_text_chars,
            max_note_chars=config.max_note_chars,
        ),
        classes=_class_entries(service),
        classes_required=segmenter.output_classes > 1,
    )


def _class_entries(service: Service) -> list[ClassEntry]:
    """The checkpoint's classes as /api/model lists them: value, name, colour, the prompt each is asked with."""
    from lvseg.inference.multiclass import table_colours

    table = service.segmenter.class_table
    if not table:
        return []
    colours = table_colours(table)
    prompts = service.segmenter.class_prompts(table)
    return [
        ClassEntry(value=info.value, name=info.name, colour=hex_color(colours[info.value]), prompt=prompt)
        for info, prompt in zip(table, prompts)
    ]


def _class_results(result: Any) -> list[ClassResultInfo] | None:
    if result.classes is None:
        return None
    return [
        ClassResultInfo(
            name=row.name,
            value=row.value,
            colour=row.colour,
            prompt=row.prompt,
            finding=row.finding,
            area_px=row.area_px,
            area_percent=row.area_percent,
            area_mm2=row.area_mm2,
            regions=row.regions,
            max_probability=row.max_probability,
            mean_probability=row.mean_probability,
            outvoted_px=row.outvoted_px,
        )
        for row in result.classes
    ]


def _mask_png(result: Any) -> bytes:
    """The mask PNG of a result: 0/255, or with classes the label map (class values)."""
    if result.label_map is not None:
        return label_map_png(result.label_map, compress_level=1)
    return _png(mask_to_uint8(result.mask))


async def segment(
    request: Request,
    format: Literal["json", "png"] = Query("json", description="'png' returns the mask PNG itself."),
    include_original: bool = Query(False, description="Also return the decoded image as PNG (for display)."),
    service: Service = Depends(current_service),
    admission: Admission = Depends(current_admission),
) -> Any:
    with admission.admitted():
        form = await _read_form(request, service.config, _segment_fields(service))
        classes = _chosen_classes(form, service)
        image, text = _image_and_text(form, service, text_required=classes is None)
        result = await run_in_threadpool(service.analyse, image, text, classes)
    result_id = await run_in_threadpool(service.results.add, result)  # reduces images: off the event loop
    m = result.measurements
    if format == "png":
        class_headers = (
            {"X-Class-Areas-Px": ",".join(f"{quote(row.name)}={row.area_px}" for row in result.classes)}
            if result.classes is not None
            else {}
        )
        return Response(
            await run_in_threadpool(_mask_png, result),
            media_type="image/png",
            headers={
                **class_headers,
                "X-Area-Px": str(m.area_px),
                "X-Lesions": str(m.lesions),
                "X-Inference-Ms": f"{result.inference_ms}",
                "X-Finding": m.finding,
                "X-Max-Probability": f"{m.max_probability:.6f}",
                "X-Result-Id": result_id,
                "X-Text-Warnings": str(len(result.text_warnings)),
                "X-Consistency-Warnings": ",".join(code for code, _ in result.consistency),
            },
        )
    mask_png, overlay_png, heatmap_png = await run_in_threadpool(
        lambda: (_mask_png(result), _png(result.overlay), _png(result.heatmap))
    )
    original = await run_in_threadpool(_png, result.image.pixels) if include_original else None
    return SegmentResponse(
        mask=_b64(mask_png),
        overlay=_b64(overlay_png),
        heatmap=_b64(heatmap_png),
        side_markers=list(result.side_markers) if result.side_markers else None,
        original=_b64(original) if original else None,
        width=result.image.width,
        height=result.image.height,
        original_width=result.image.original_width,
        original_height=result.image.original_height,
        image_format=result.image.format,
        area_px=m.area_px,
        area_percent=m.area_percent,
        area_mm2=m.area_mm2,
        pixel_spacing_mm=list(result.image.pixel_spacing_mm) if result.image.pixel_spacing_mm else None,
        lesions=m.lesions,
        lesion_details=[
            LesionInfo(label=x.label, area_px=x.area_px, area_mm2=x.area_mm2, colour=x.colour, bbox=list(x.bbox))
            for x in m.lesion_list
        ],
        finding=m.finding,
        confidence=m.confidence,
        max_probability=m.max_probability,
        inference_ms=result.inference_ms,
        model=str(service.segmenter.model_name),
        validation_dice=find_validation_dice(service.segmenter.metrics),
        validation_data=_validation_data(service),
        training_data=_training_data(service),
        report_text=result.text,
        text_warnings=result.text_warnings,
        unknown_words=result.unknown_words,
        report_parsed=result.report_parsed,
        consistency=[ConsistencyInfo(code=code, message=message) for code, message in result.consistency],
        classes=_class_results(result),
        result_id=result_id,
    )


async def result_report(
    request: Request,
    result_id: str = PathParam(..., pattern=RESULT_ID_PATTERN, description="The result_id of a segmentation."),
    service: Service = Depends(current_service),
) -> Response:
    extras = _form_extras(await _read_form(request, service.config, DETAIL_FIELDS), service.config)
    return await run_in_threadpool(_pdf_response, service, _stored_result(service, result_id), extras)


async def report(
    request: Request, service: Service = Depends(current_service), admission: Admission = Depends(current_admission)
) -> Response:
    with admission.admitted():
        form = await _read_form(request, service.config, (*_segment_fields(service), *DETAIL_FIELDS))
        extras = _form_extras(form, service.config)
        classes = _chosen_classes(form, service)
        image, text = _image_and_text(form, service, text_required=classes is None)
        result = KeptResult.of(await run_in_threadpool(service.analyse, image, text, classes))
    return await run_in_threadpool(_pdf_response, service, result, extras)


def api_router(
    config: ServiceConfig, requires_text: bool, api_key_set: bool, class_names: Sequence[str] = ()
) -> APIRouter:
    """The ``/api`` routes, their schema stating ``config``'s limits and whether the report text is required.

    The API key is declared (and checked) only when one is set: the schema says what the server does.
    ``class_names``: a multi-class checkpoint's classes, which the segment endpoints' ``classes`` field
    chooses among (the field exists only then).
    """
    api = (
        APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], responses=_error_responses(401))
        if api_key_set
        else APIRouter(prefix="/api")
    )
    api.add_api_route(
        "/model",
        model_info,
        methods=["GET"],
        response_model=ModelInfo,
        tags=["model"],
        summary="The loaded model and its metrics",
    )

    image_field: FormField = (
        "file",
        "The image: PNG, JPEG, TIFF, BMP or DICOM, at most "
        f"{config.form_limits.max_file_bytes / MIB:g} MB and "
        f"{config.image_limits.max_side} px per side.",
        None,
    )
    text_field: FormField = (
        "text",
        "The clinician's report (at least one letter or digit)."
        if requires_text
        else "Not used by this image-only model (accepted and ignored).",
        config.max_text_chars,
    )
    text_rule = ("text",) if requires_text else ()
    required = ["image", "text"] if requires_text else ["image"]
    segment_fields: dict[str, FormField] = {"image": image_field, "text": text_field}
    if class_names:  # with classes chosen the report may be empty (each class has its own prompt)
        if requires_text:
            text_field = ("text", "The clinician's report: required unless classes are chosen.", config.max_text_chars)
            segment_fields["text"] = text_field
        text_rule, required = (), ["image"]
        segment_fields["classes"] = (
            "text",
            "Optional: the classes to segment into a label map, comma-separated, or 'all' ("
            + ", ".join(class_names)
            + "). Each class is asked for with its own prompt (its template, else its name; GET /api/model "
            "lists them); the report is then optional and kept with the result, not sent to the model. Where "
            "classes overlap, the most probable one wins.",
            MAX_CLASSES_CHARS,
        )
    api.add_api_route(
        "/segment",
        segment,
        methods=["POST"],
        response_model=SegmentResponse,
        tags=["segmentation"],
        summary="Segment the lesions",
        openapi_extra=_multipart_body(segment_fields, required, non_blank=text_rule),
        responses={
            200: {"content": {"image/png": {}}, "description": "JSON, or the mask PNG with ?format=png."},
            **_error_responses(400, 408, 413, 415, 422, 429, 503),
        },
    )

    descriptions = {
        "study_id": ("Optional study identifier printed on the report.", config.max_study_id_chars),
        "patient_id": ("Optional patient identifier printed on the report.", config.max_study_id_chars),
        "referrer": ("Optional referring clinician printed on the report.", config.max_study_id_chars),
        "notes": ("Optional clinician notes.", config.max_note_chars),
        "recommendations": ("Optional recommendations.", config.max_note_chars),
    }
    detail_fields: dict[str, FormField] = {name: ("text", *descriptions[name]) for name in DETAIL_FIELDS}
    pdf_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/pdf": {}}, "description": "The PDF report."}
    }
    api.add_api_route(
        "/results/{result_id}/report",
        result_report,
        methods=["POST"],
        tags=["segmentation"],
        summary="The PDF report of a segmentation result",
        description="The result that POST /api/segment returned under `result_id`, exactly as it was shown "
        "(image, report, mask, numbers); results are kept in memory for a limited time.",
        openapi_extra=_multipart_body(detail_fields, []),
        response_class=Response,
        responses={**pdf_responses, **_error_responses(400, 404, 408, 413, 415, 422, 429)},
    )
    api.add_api_route(
        "/report",
        report,
        methods=["POST"],
        tags=["segmentation"],
        summary="Segment an image and return the PDF report",
        openapi_extra=_multipart_body({**segment_fields, **detail_fields}, required, non_blank=text_rule),
        response_class=Response,
        responses={**pdf_responses, **_error_responses(400, 408, 413, 415, 422, 429, 503)},
    )
    return api
