"""The FastAPI app: health, model info, segmentation, PDF report and the web page.

Build it with :func:`create_app` around any object with the ``Segmenter`` interface; the model is
injected, so tests pass a small fake. Uploads are read by a streaming, size-capped multipart reader
and processed in memory; CPU work runs in the thread pool, model calls one at a time under a lock.
Logs name routes, statuses, sizes and timings only: never image data or report text.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import importlib.util
import logging
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lvseg.data.images import mask_to_uint8, png_bytes
from lvseg.errors import LvsegError
from lvseg.evaluation.overlay import (
    draw_side_markers,
    label_lesions,
    overlay_lesions,
    probability_heatmap,
    side_markers,
)
from lvseg.serving.errors import ApiError
from lvseg.serving.forms import MIB, FormLimits, read_multipart
from lvseg.serving.rendering import Measurements, measure
from lvseg.serving.report_pdf import ReportContent, build_report_pdf, find_validation_dice
from lvseg.serving.schemas import ErrorResponse, HealthResponse, LesionInfo, Limits, ModelInfo, SegmentResponse
from lvseg.serving.uploads import DecodeBudget, DecodedImage, ImageLimits, decode_image

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS_PATH = "/docs-assets"
# The Swagger UI 5.x files that /docs loads, served from the swagger-ui-py package (no CDN: the API docs
# must work on an offline hospital network). Only these are served, not the rest of that folder.
_SWAGGER_JS = "swagger-ui-bundle.js"
_SWAGGER_CSS = "swagger-ui.css"
_SWAGGER_FAVICON = "favicon-32x32.png"
_DOCS_ASSET_TYPES = {_SWAGGER_JS: "text/javascript", _SWAGGER_CSS: "text/css", _SWAGGER_FAVICON: "image/png"}
API_KEY_HEADER = "X-API-Key"
ACCEPTED_FORMATS = ["png", "jpeg", "tiff", "bmp", "dicom"]
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "application/dicom")
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class SegmenterLike(Protocol):
    """What the app needs from a model (``lvseg.inference.Segmenter`` or a test fake)."""

    model_name: str
    img_size: int
    requires_text: bool
    metrics: dict[str, Any]
    text_encoder: Any
    device: Any

    def predict(self, image: Any, text: str, threshold: float = 0.5) -> Any: ...


@dataclass
class Analysis:
    """The result of one segmentation, before it is encoded for a response.

    text: the report it was computed from; text_warnings / unknown_words / report_parsed: how the model read
    that report (:class:`lvseg.text.base.TextReading`).
    """

    image: DecodedImage
    mask: np.ndarray
    overlay: np.ndarray
    measurements: Measurements
    inference_ms: float
    heatmap: np.ndarray | None = None
    side_markers: tuple[str, str] | None = None
    text: str = ""
    text_warnings: list[str] = field(default_factory=list)
    unknown_words: list[str] = field(default_factory=list)
    report_parsed: bool | None = None



@dataclass(frozen=True)
class KeptResult:
    """What a PDF report needs of an :class:`Analysis`: the image and overlay reduced to the PDF's size, the
    measurements, the report and how it was read (a few MB, whatever the upload's size)."""

    pixels: np.ndarray
    overlay: np.ndarray
    measurements: Measurements
    text: str
    text_warnings: list[str]
    image_format: str
    image_size: tuple[int, int]
    analysed_size: tuple[int, int]
    inference_ms: float

    @classmethod
    def of(cls, analysis: Analysis) -> "KeptResult":
        image = analysis.image
        return cls(pixels=_reduced_for_pdf(image.pixels), overlay=_reduced_for_pdf(analysis.overlay),
                   measurements=analysis.measurements, text=analysis.text, text_warnings=list(analysis.text_warnings),
                   image_format=image.format, image_size=(image.original_width, image.original_height),
                   analysed_size=(image.width, image.height), inference_ms=analysis.inference_ms)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes + self.overlay.nbytes)


def _reduced_for_pdf(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    from lvseg.serving.report_pdf import PDF_IMAGE_SIDE

    if max(pixels.shape[:2]) <= PDF_IMAGE_SIDE:
        return pixels
    picture = Image.fromarray(pixels)
    picture.thumbnail((PDF_IMAGE_SIDE, PDF_IMAGE_SIDE))
    return np.asarray(picture)


#: What a result id looks like (``secrets.token_urlsafe(16)``: 22 URL-safe characters).
RESULT_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


class RecentResults:
    """The last results, in memory only (never on disk), so a PDF is made of the result the user saw.

    At most ``max_items`` results and ``max_bytes`` of images, each for ``ttl_s`` seconds; ids are random
    (``secrets.token_urlsafe``), so one client cannot guess another's.
    """

    def __init__(self, max_items: int = 32, max_bytes: int = 128 * MIB, ttl_s: float = 1800.0) -> None:
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self._items: OrderedDict[str, tuple[float, KeptResult]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, analysis: Analysis) -> str:
        result_id = secrets.token_urlsafe(16)
        kept = KeptResult.of(analysis)
        with self._lock:
            self._items[result_id] = (time.monotonic(), kept)
            self._expire()
        return result_id

    def get(self, result_id: str) -> KeptResult | None:
        with self._lock:
            self._expire()
            entry = self._items.get(result_id)
            return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items and (len(self._items) > self.max_items or sum(
                item.nbytes for _, item in self._items.values()) > self.max_bytes
                or now - next(iter(self._items.values()))[0] > self.ttl_s):
            self._items.popitem(last=False)


@dataclass
class ServiceConfig:
    """Limits and options of one app instance."""

    form_limits: FormLimits
    image_limits: ImageLimits
    max_text_chars: int
    max_note_chars: int
    max_study_id_chars: int
    threshold: float


class Service:
    """The model plus the synchronous work of a request (run in the thread pool)."""

    def __init__(self, segmenter: SegmenterLike, config: ServiceConfig, max_concurrent_jobs: int) -> None:
        self.segmenter = segmenter
        self.config = config
        # Every model call runs on this one thread: one at a time (identical inputs give identical masks), and
        # torch's per-calling-thread state (OpenMP team, oneDNN scratch, malloc arena) exists once, not once per
        # request thread (8 concurrent requests otherwise cost gigabytes).
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvseg-model")
        # Decoding, measuring and rendering run on a fixed set of ``max_concurrent_jobs`` threads, not on the
        # request threads: at most that many large images are in memory at once, and the memory each thread's
        # allocator keeps after a large image exists for those threads only.
        self.workers = ThreadPoolExecutor(max_workers=max_concurrent_jobs, thread_name_prefix="lvseg-job")
        self.decode_budget = DecodeBudget()
        self.results = RecentResults()

    def close(self) -> None:
        """Stop the worker and model threads (the app's shutdown)."""
        for executor in (self.workers, self.model_thread):
            executor.shutdown(wait=False, cancel_futures=True)

    def analyse(self, image_bytes: bytes, text: str) -> Analysis:
        """Decode, segment, measure and render, with at most ``max_concurrent_jobs`` at once."""
        return self.workers.submit(self._analyse, image_bytes, text).result()

    def report(self, original: np.ndarray, overlay: np.ndarray, content: ReportContent) -> bytes:
        """Render the PDF report, counted as a job like a segmentation."""
        return self.workers.submit(build_report_pdf, original, overlay, content).result()

    def _analyse(self, image_bytes: bytes, text: str) -> Analysis:
        image = decode_image(image_bytes, self.config.image_limits, self.decode_budget)
        start = time.perf_counter()
        try:
            # The float array of lvseg.data.images.read_image, as training and `lvseg predict` read the file.
            prediction = self.model_thread.submit(self._predict, image.model_input, text).result()
        except LvsegError as error:  # the model refused this input (e.g. its text), in plain words
            raise ApiError(422, str(error)) from error
        inference_ms = (time.perf_counter() - start) * 1000.0
        mask = np.asarray(prediction.mask).astype(np.uint8, copy=False)
        probability = np.asarray(prediction.probability, dtype=np.float32)
        expected = (image.height, image.width)
        if mask.shape != expected or probability.shape != expected:
            raise RuntimeError(f"the model returned a {mask.shape} mask for a {expected} image")
        labels, count = label_lesions(mask)
        measurements = measure(mask, probability, labels, count, pixel_spacing_mm=image.pixel_spacing_mm)
        reading = getattr(prediction, "reading", None)
        heatmap = probability_heatmap(probability)
        del probability, prediction  # full-size float maps: not kept past the measurements
        overlay = overlay_lesions(image.pixels, labels, count)
        markers = side_markers(image.row_direction) if image.row_direction else None
        if markers:  # the patient's sides, from DICOM PatientOrientation, on what is shown (not on the mask)
            overlay, heatmap = draw_side_markers(overlay, markers), draw_side_markers(heatmap, markers)
        return Analysis(image.without_model_input(), mask, overlay, measurements, round(inference_ms, 2),
                        heatmap=heatmap, side_markers=markers, text=text,
                        text_warnings=reading.warnings() if reading is not None else [],
                        unknown_words=list(dict.fromkeys(reading.unknown_words)) if reading is not None else [],
                        report_parsed=reading.parsed if reading is not None else None)


    def _predict(self, model_input: np.ndarray, text: str) -> Any:
        with _inference_mode():
            return self.segmenter.predict(model_input, text, threshold=self.config.threshold)


def _inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode()`` when torch is in use (a real model), else nothing."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's static files in the ``swagger-ui-py`` package, or None if it is missing."""
    try:
        spec = importlib.util.find_spec("swagger_ui")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).resolve().parent / "static"
    return folder if all((folder / name).is_file() for name in _DOCS_ASSET_TYPES) else None


def _docs_unavailable_page(openapi_url: str) -> HTMLResponse:
    """What /docs shows when swagger-ui-py is not installed: still offline, still useful."""
    return HTMLResponse(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>lvseg - API docs</title></head><body>"
        "<h1>lvseg API</h1><p>The interactive API documentation needs the <code>swagger-ui-py</code> package "
        "(part of the <code>serve</code> extra: <code>pip install 'lvseg[serve]'</code>). "
        f"The OpenAPI schema is at <a href=\"{openapi_url}\">{openapi_url}</a>.</p></body></html>"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(array: np.ndarray) -> bytes:
    """PNG bytes with fast compression (latency over size)."""
    return png_bytes(array, compress_level=1)


def _device_name(device: Any) -> str:
    return str(device) if device is not None else "cpu"


def _text_encoder_config(encoder: Any) -> dict[str, Any] | None:
    if encoder is None:
        return None
    config = getattr(encoder, "config", None)
    try:
        value = config() if callable(config) else config
    except Exception:  # noqa: BLE001 - descriptive only
        return {"type": type(encoder).__name__}
    if not isinstance(value, dict):
        return {"type": type(encoder).__name__}
    # Long lists (a learned vocabulary) are summarised: the endpoint describes, it does not dump.
    return {key: (f"{len(item)} entries" if isinstance(item, (list, tuple)) and len(item) > 32 else item)
            for key, item in value.items()}


def _multipart_body(fields: dict[str, tuple[str, str, int | None]], required: list[str],
                    non_blank: tuple[str, ...] = ()) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a multipart form (the reader is custom, so it is declared by hand): exactly the
    fields the server reads (it refuses others); ``non_blank``: text fields that must hold a non-space character.
    """
    properties: dict[str, Any] = {}
    for name, (kind, description, max_length) in fields.items():
        prop: dict[str, Any] = {"type": "string", "description": description}
        if kind == "file":
            prop.update(format="binary", minLength=1)
        if max_length:
            prop["maxLength"] = max_length
        if name in non_blank:
            prop.update(minLength=1, **{"not": {"pattern": r"^\s*$"}})  # not blank: some non-space character
        properties[name] = prop
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties,
                              "additionalProperties": False}
    media: dict[str, Any] = {"schema": schema}
    files = [name for name, (kind, _, _) in fields.items() if kind == "file"]
    if files:  # the image formats the server decodes (their validity is checked by decoding: 415/422)
        media["encoding"] = {name: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)} for name in files}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": media}}}


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        401: "Missing or wrong API key (X-API-Key header).",
        404: "The result_id names no result the server still keeps: segment again.",
        408: "The upload stalled (no data for the read timeout, 30 s by default) or took too long.",
        503: "The server is busy with the most uploads it takes at once: try again in a moment.",
        413: "Upload over the size limit, or an image too large or a decompression bomb.",
        415: "Not a PNG, JPEG, TIFF, BMP or DICOM image, or not a multipart/form-data request.",
        422: "Missing field, empty or too long text, or a corrupt or truncated image.",
    }
    return {code: {"model": ErrorResponse, "description": meaning[code]} for code in codes}


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A plain-words message and the errors without echoing the submitted input."""
    cleaned = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    parts = []
    for error in cleaned:
        where = ".".join(str(item) for item in error["loc"][1:]) or ".".join(map(str, error["loc"]))
        if error["type"] == "missing":
            parts.append(f"missing field '{where}'")
        else:
            parts.append(f"invalid '{where}': {error['msg']}")
    return "invalid request: " + "; ".join(parts), cleaned


def _cross_origin(scope: Scope) -> bool:
    """Whether a request comes from a page of another origin (browsers send Origin / Sec-Fetch-Site)."""
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
    if headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = headers.get("origin")
    if not origin:
        return False  # not a browser form post (curl, scripts, same-origin navigations)
    from urllib.parse import urlsplit

    return origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


class _SecurityHeaders:
    """Pure ASGI middleware: security headers, no caching of API results, one log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        start = time.perf_counter()
        status = {"code": 0}
        if scope.get("method") == "POST" and _cross_origin(scope):
            response = JSONResponse({"error": "cross-origin requests are not accepted: use this server's own page "
                                     "or a client that sends no Origin header", "detail": None}, status_code=403)
            await response(scope, receive, send)
            logger.info("POST %s -> 403 (cross-origin)", path)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if path.startswith("/api"):
                    headers.append((b"cache-control", b"no-store"))
                if path == "/" or path.startswith("/static"):
                    headers += [(b"content-security-policy", _PAGE_CSP.encode()), (b"x-frame-options", b"DENY")]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:  # the client went away mid-request: nothing to answer, one line to log
            logger.info("%s %s: the client disconnected before the request was read", scope.get("method"), path)
        finally:
            if path.startswith("/api"):
                logger.info(
                    "%s %s -> %s in %.0f ms", scope.get("method"), path, status["code"],
                    (time.perf_counter() - start) * 1000.0,
                )


def create_app(
    segmenter: SegmenterLike,
    api_key: str | None = None,
    *,
    max_upload_bytes: int = 20 * MIB,
    image_limits: ImageLimits | None = None,
    max_text_chars: int = 2000,
    max_note_chars: int = 4000,
    max_concurrent_jobs: int = 2,
    threshold: float = 0.5,
    read_timeout_s: float = 30.0,
    max_pending_requests: int = 16,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """Build the app around ``segmenter`` (loaded once, by the caller).

    ``api_key``: when set, every ``/api`` route needs it in the ``X-API-Key`` header (401 without).
    ``max_concurrent_jobs`` bounds how many uploads are decoded and rendered at once (memory);
    model calls are serialised by a lock, so identical inputs always give identical masks.
    ``read_timeout_s``: an upload that sends nothing for this long is answered 408 and closed.
    ``max_pending_requests``: uploads being received or waiting for a worker at once; more are answered 503
    (each may hold up to ``max_upload_bytes`` in memory).
    ``allowed_hosts``: the Host header values accepted (Starlette's ``TrustedHostMiddleware``; ``lvseg serve``
    passes its address and the loopback names); None accepts any. POSTs from a page of another origin
    (``Origin`` not this server, or ``Sec-Fetch-Site: cross-site``) are refused with 403 whatever the setting.
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be empty; pass None to disable authentication")
    config = ServiceConfig(
        form_limits=FormLimits(max_file_bytes=max_upload_bytes, chunk_timeout_s=read_timeout_s,
                               upload_timeout_s=max(4 * read_timeout_s, 120.0)),
        image_limits=image_limits or ImageLimits(),
        max_text_chars=max_text_chars,
        max_note_chars=max_note_chars,
        max_study_id_chars=128,
        threshold=threshold,
    )
    if max_pending_requests < 1:
        raise ValueError("max_pending_requests must be at least 1")
    service = Service(segmenter, config, max_concurrent_jobs)
    pending = {"uploads": 0}

    @contextlib.contextmanager
    def admitted() -> Any:
        """One of at most ``max_pending_requests`` uploads in the server (an event-loop counter: no lock)."""
        if pending["uploads"] >= max_pending_requests:
            raise ApiError(503, f"the server is busy with {max_pending_requests} uploads; try again in a moment",
                           {"max_pending_requests": max_pending_requests})
        pending["uploads"] += 1
        try:
            yield
        finally:
            pending["uploads"] -= 1
    # Anyone who can reach the API chooses the reports: frozen-encoder features stay in a bounded memory cache,
    # never written to disk by the server (the disk cache is for training).
    keep_in_memory = getattr(segmenter, "keep_text_cache_in_memory", None)
    if callable(keep_in_memory):
        keep_in_memory()
    model_name = str(getattr(segmenter, "model_name", type(segmenter).__name__))
    validation_data = (getattr(segmenter, "hparams", None) or {}).get("validation_data")
    from lvseg import __version__ as lvseg_version

    app = FastAPI(
        title="lvseg",
        version=lvseg_version,
        summary="Language-guided lesion segmentation of medical images. Research use only.",
        description=(
            "Upload an image (PNG, JPEG, TIFF, BMP or DICOM) and the clinician's report; get the lesion mask, a "
            "colour-coded overlay and measurements, or a PDF report. Errors are JSON `{error, detail}`. "
            "Research use only, not a diagnostic device."
        ),
        # The default /docs and /redoc pages load their scripts from a CDN (blank offline). /docs is served
        # below from local files; ReDoc has no local copy, so there is no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.router.on_shutdown.append(service.close)
    app.add_middleware(_SecurityHeaders)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail), "detail": None}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        message, cleaned = _validation_message(list(error.errors()))
        return JSONResponse({"error": message, "detail": cleaned}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, error: Exception) -> JSONResponse:
        logger.error("internal error: %s", type(error).__name__, exc_info=error)
        return JSONResponse({"error": "internal error while processing the request", "detail": None},
                            status_code=500)

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The service's API key.")

    async def require_key(provided: str | None = Depends(key_header)) -> None:
        if api_key is None:
            return
        if not provided or not hmac.compare_digest(provided.encode("utf-8"), api_key.encode("utf-8")):
            raise ApiError(401, f"missing or wrong API key; send it in the {API_KEY_HEADER} header")

    async def read_form(request: Request, fields: tuple[str, ...]) -> Any:
        form = await read_multipart(
            request.headers.get("content-type"), request.headers.get("content-length"),
            request.stream(), {"image"}, config.form_limits,
        )
        unknown = sorted((set(form.fields) | set(form.files)) - set(fields))
        if unknown:
            raise ApiError(422, f"unknown field(s) {', '.join(repr(name) for name in unknown)}; this endpoint takes "
                           f"{', '.join(fields)}", {"fields": unknown})
        return form

    def image_and_text(form: Any) -> tuple[bytes, str]:
        image = form.files.get("image")
        if image is None:
            raise ApiError(422, "missing field 'image' (the image file)", {"field": "image"})
        text = form.fields.get("text")
        if text is None and segmenter.requires_text:
            raise ApiError(422, "missing field 'text' (the clinician's report)", {"field": "text"})
        text = text or ""
        if len(text) > config.max_text_chars:
            raise ApiError(422, f"the report text is {len(text)} characters long; at most "
                           f"{config.max_text_chars} are accepted", {"field": "text", "max": config.max_text_chars})
        if segmenter.requires_text and not text.strip():
            raise ApiError(422, "the report text is empty; this model needs the clinician's report",
                           {"field": "text"})
        return image, text.strip() if segmenter.requires_text else ""  # an image-only model's result has no report

    def form_extras(form: Any, names: tuple[str, ...]) -> dict[str, str]:
        extras: dict[str, str] = {}
        for name in names:
            value = form.fields.get(name, "")
            limit = config.max_note_chars if name in ("notes", "recommendations") else config.max_study_id_chars
            if len(value) > limit:
                raise ApiError(422, f"field '{name}' is {len(value)} characters long; at most {limit} are accepted",
                               {"field": name, "max": limit})
            extras[name] = value.strip()
        return extras

    def stored_result(result_id: str) -> KeptResult:
        """The kept result ``result_id`` (the PDF then shows exactly what the page showed)."""
        result = service.results.get(result_id)
        if result is None:
            raise ApiError(404, "this result is no longer kept (the server keeps the last "
                           f"{service.results.max_items} results for {service.results.ttl_s / 60:.0f} minutes, in "
                           "memory only): segment the image again", {"field": "result_id"})
        return result

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    swagger_dir = swagger_ui_dir()
    if swagger_dir is None:
        logger.warning("swagger-ui-py is not installed: /docs shows a plain page (the schema is at /openapi.json)")

    @app.get("/docs", include_in_schema=False)
    async def api_docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        openapi_url = root + str(app.openapi_url)
        if swagger_dir is None:
            return _docs_unavailable_page(openapi_url)
        assets = root + DOCS_ASSETS_PATH
        return get_swagger_ui_html(
            openapi_url=openapi_url, title="lvseg - API docs",
            swagger_js_url=f"{assets}/{_SWAGGER_JS}", swagger_css_url=f"{assets}/{_SWAGGER_CSS}",
            swagger_favicon_url=f"{assets}/{_SWAGGER_FAVICON}",
            swagger_ui_parameters={"validatorUrl": None},  # no calls to the online spec validator
        )

    @app.get(DOCS_ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if swagger_dir is None or name not in _DOCS_ASSET_TYPES:
            raise StarletteHTTPException(404, "Not Found")
        return FileResponse(swagger_dir / name, media_type=_DOCS_ASSET_TYPES[name],
                            headers={"cache-control": "public, max-age=86400"})

    @app.get("/healthz", response_model=HealthResponse, tags=["service"], summary="Liveness and readiness")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok", ready=True, model=model_name,
                              device=_device_name(getattr(segmenter, "device", None)),
                              auth_required=api_key is not None)

    # The schema says what the server does: the API key is declared (and checked) only when one is set.
    api = (APIRouter(prefix="/api", dependencies=[Depends(require_key)], responses=_error_responses(401))
           if api_key is not None else APIRouter(prefix="/api"))

    @api.get("/model", response_model=ModelInfo, tags=["model"], summary="The loaded model and its metrics")
    async def model_info() -> ModelInfo:
        metrics = dict(getattr(segmenter, "metrics", None) or {})
        return ModelInfo(
            model=model_name,
            input_size=int(getattr(segmenter, "img_size", 0) or 0),
            requires_text=bool(segmenter.requires_text),
            text_encoder=_text_encoder_config(getattr(segmenter, "text_encoder", None)),
            metrics=metrics,
            validation_dice=find_validation_dice(metrics),
            validation_data=validation_data,
            device=_device_name(getattr(segmenter, "device", None)),
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
        )

    image_field = ("file", "The image: PNG, JPEG, TIFF, BMP or DICOM, at most "
                   f"{max_upload_bytes / MIB:g} MB and {config.image_limits.max_side} px per side.", None)
    needs_text = bool(segmenter.requires_text)
    text_field = ("text", "The clinician's report." if needs_text else
                  "Not used by this image-only model (accepted and ignored).", max_text_chars)
    text_rule = ("text",) if needs_text else ()
    segment_body = _multipart_body({"image": image_field, "text": text_field},
                                   ["image", "text"] if needs_text else ["image"], non_blank=text_rule)

    @api.post(
        "/segment", response_model=SegmentResponse, tags=["segmentation"], summary="Segment the lesions",
        openapi_extra=segment_body, responses={
            200: {"content": {"image/png": {}}, "description": "JSON, or the mask PNG with ?format=png."},
            **_error_responses(408, 413, 415, 422, 503),
        },
    )
    async def segment(
        request: Request,
        format: Literal["json", "png"] = Query("json", description="'png' returns the mask PNG itself."),
        include_original: bool = Query(False, description="Also return the decoded image as PNG (for display)."),
    ) -> Any:
        with admitted():
            image, text = image_and_text(await read_form(request, ("image", "text")))
            result = await run_in_threadpool(service.analyse, image, text)
        result_id = await run_in_threadpool(service.results.add, result)  # reduces images: off the event loop
        m = result.measurements
        if format == "png":
            return Response(_png(mask_to_uint8(result.mask)), media_type="image/png", headers={
                "X-Area-Px": str(m.area_px), "X-Lesions": str(m.lesions), "X-Inference-Ms": f"{result.inference_ms}",
                "X-Finding": m.finding, "X-Max-Probability": f"{m.max_probability:.6f}", "X-Result-Id": result_id,
                "X-Text-Warnings": str(len(result.text_warnings)),
            })
        mask_png, overlay_png, heatmap_png = await run_in_threadpool(
            lambda: (_png(mask_to_uint8(result.mask)), _png(result.overlay), _png(result.heatmap)))
        original = await run_in_threadpool(_png, result.image.pixels) if include_original else None
        return SegmentResponse(
            mask=_b64(mask_png), overlay=_b64(overlay_png), heatmap=_b64(heatmap_png),
            side_markers=list(result.side_markers) if result.side_markers else None,
            original=_b64(original) if original else None,
            width=result.image.width, height=result.image.height, original_width=result.image.original_width,
            original_height=result.image.original_height, image_format=result.image.format,
            area_px=m.area_px, area_percent=m.area_percent, area_mm2=m.area_mm2,
            pixel_spacing_mm=list(result.image.pixel_spacing_mm) if result.image.pixel_spacing_mm else None,
            lesions=m.lesions,
            lesion_details=[LesionInfo(label=x.label, area_px=x.area_px, area_mm2=x.area_mm2, colour=x.colour,
                                       bbox=list(x.bbox)) for x in m.lesion_list],
            finding=m.finding, confidence=m.confidence, max_probability=m.max_probability,
            inference_ms=result.inference_ms, model=model_name,
            validation_dice=find_validation_dice(getattr(segmenter, "metrics", None)), validation_data=validation_data,
            report_text=result.text,
            text_warnings=result.text_warnings, unknown_words=result.unknown_words,
            report_parsed=result.report_parsed, result_id=result_id,
        )

    detail_fields = {
        "study_id": ("text", "Optional study identifier printed on the report.", config.max_study_id_chars),
        "patient_id": ("text", "Optional patient identifier printed on the report.", config.max_study_id_chars),
        "referrer": ("text", "Optional referring clinician printed on the report.", config.max_study_id_chars),
        "notes": ("text", "Optional clinician notes.", max_note_chars),
        "recommendations": ("text", "Optional recommendations.", max_note_chars),
    }
    report_body = _multipart_body({"image": image_field, "text": text_field, **detail_fields},
                                  ["image", "text"] if needs_text else ["image"], non_blank=text_rule)
    result_report_body = _multipart_body(detail_fields, [])
    pdf_responses = {200: {"content": {"application/pdf": {}}, "description": "The PDF report."}}

    def pdf_response(result: KeptResult, extras: dict[str, str]) -> Response:
        content = ReportContent(
            report_text=result.text, measurements=result.measurements, model_name=model_name,
            validation_dice=find_validation_dice(getattr(segmenter, "metrics", None)),
            validation_data=validation_data, image_size=result.image_size, analysed_size=result.analysed_size,
            image_format=result.image_format, inference_ms=result.inference_ms, text_warnings=result.text_warnings,
            study_id=extras["study_id"], patient_id=extras["patient_id"], referrer=extras["referrer"],
            notes=extras["notes"], recommendations=extras["recommendations"],
        )
        pdf = service.report(result.pixels, result.overlay, content)
        safe_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", extras["study_id"])[:64].strip("._")
        filename = f"lvseg-report-{safe_id}.pdf" if safe_id else "lvseg-report.pdf"
        return Response(pdf, media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @api.post(
        "/results/{result_id}/report", tags=["segmentation"], summary="The PDF report of a segmentation result",
        description="The result that POST /api/segment returned under `result_id`, exactly as it was shown "
                    "(image, report, mask, numbers); results are kept in memory for a limited time.",
        openapi_extra=result_report_body, response_class=Response,
        responses={**pdf_responses, **_error_responses(404, 408, 413, 415, 422)},
    )
    async def result_report(
        request: Request,
        result_id: str = PathParam(..., pattern=RESULT_ID_PATTERN, description="The result_id of a segmentation."),
    ) -> Response:
        extras = form_extras(await read_form(request, tuple(detail_fields)), tuple(detail_fields))
        return await run_in_threadpool(pdf_response, stored_result(result_id), extras)

    @api.post(
        "/report", tags=["segmentation"], summary="Segment an image and return the PDF report",
        openapi_extra=report_body, response_class=Response,
        responses={**pdf_responses, **_error_responses(408, 413, 415, 422, 503)},
    )
    async def report(request: Request) -> Response:
        with admitted():
            form = await read_form(request, ("image", "text", *detail_fields))
            extras = form_extras(form, tuple(detail_fields))
            image, text = image_and_text(form)
            result = KeptResult.of(await run_in_threadpool(service.analyse, image, text))
        return await run_in_threadpool(pdf_response, result, extras)

    app.include_router(api)
    logger.info("lvseg app ready: model %s, auth %s", model_name, "on" if api_key else "off")
    return app
