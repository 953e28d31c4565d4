"""The FastAPI app: health, model info, segmentation, PDF report and the web page.

Build it with :func:`create_app` around any object with the ``Segmenter`` interface
(:class:`~lvseg.serving.protocols.SegmenterLike`); the model is injected, so tests pass a small fake.
Uploads are read by a streaming, size-capped multipart reader and processed in memory; CPU work runs on
fixed worker threads, model calls one at a time on one thread. Logs name routes, statuses, sizes and
timings only: never image data or report text.

The parts: :mod:`~lvseg.serving.service` (the work), :mod:`~lvseg.serving.results` (kept results),
:mod:`~lvseg.serving.security` (headers, API key, Host names), :mod:`~lvseg.serving.openapi` (schema
pieces, /docs) and :mod:`~lvseg.serving.routes` (the endpoints).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lvseg.inference.threshold import threshold_or_default
from lvseg.serving.errors import ApiError
from lvseg.serving.forms import MIB, FormLimits
from lvseg.serving.openapi import _validation_message, docs_router, swagger_ui_dir
from lvseg.serving.protocols import SegmenterLike
from lvseg.serving.routes import STATIC_DIR, api_router, page_router
from lvseg.serving.security import (
    LOOPBACK_NAMES,
    HostAllowList,
    SecurityHeaders,
    UploadsPerClient,
    allowed_hosts_for,
)
from lvseg.serving.service import Admission, Service, ServiceConfig
from lvseg.serving.uploads import ImageLimits

__all__ = ["SegmenterLike", "create_app", "swagger_ui_dir"]

logger = logging.getLogger(__name__)


async def _api_error(_: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code)


async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        {"error": str(error.detail), "detail": None}, status_code=error.status_code, headers=error.headers
    )


async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    message, cleaned = _validation_message(list(error.errors()))
    return JSONResponse({"error": message, "detail": cleaned}, status_code=422)


async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    logger.error("internal error: %s", type(error).__name__, exc_info=error)
    return JSONResponse({"error": "internal error while processing the request", "detail": None}, status_code=500)


def create_app(
    segmenter: SegmenterLike,
    api_key: str | None = None,
    *,
    max_upload_bytes: int = 20 * MIB,
    image_limits: ImageLimits | None = None,
    max_text_chars: int = 2000,
    max_note_chars: int = 4000,
    max_concurrent_jobs: int = 2,
    threshold: float | None = None,
    read_timeout_s: float = 30.0,
    max_pending_requests: int = 16,
    allowed_hosts: list[str] | None = None,
    max_uploads_per_client: int | None = None,
) -> FastAPI:
    """Build the app around ``segmenter`` (loaded once, by the caller).

    ``api_key``: when set, every ``/api`` route needs it in the ``X-API-Key`` header (401 without).
    ``threshold``: the probability above which a pixel is lesion, in (0, 1) (default: the segmenter's
    ``decision_threshold``, the model's declared one); ``/api/model`` shows it.
    ``max_concurrent_jobs`` bounds how many uploads are decoded and rendered at once (memory);
    model calls are serialised on one thread, so identical inputs always give identical masks.
    ``read_timeout_s``: an upload that sends nothing for this long is answered 408 and closed.
    ``max_pending_requests``: uploads being received or waiting for a worker at once; more are answered 503
    (each may hold up to ``max_upload_bytes`` in memory). ``max_uploads_per_client``: uploads one client address
    may have in progress at once (default: half of ``max_pending_requests``); more get 429, so slow uploads from
    one client cannot take every slot.
    ``allowed_hosts``: the Host header values accepted (others get 400, a DNS-rebinding guard); ``["*"]``
    accepts any. By default, as ``lvseg serve`` on loopback (:func:`~lvseg.serving.security.allowed_hosts_for`):
    only the loopback names without an API key, any name with one. POSTs from a page of another origin
    (``Origin`` not this server, or ``Sec-Fetch-Site: cross-site``) are refused with 403 whatever the setting.
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be empty; pass None to disable authentication")
    config = ServiceConfig(
        form_limits=FormLimits(
            max_file_bytes=max_upload_bytes,
            chunk_timeout_s=read_timeout_s,
            upload_timeout_s=max(4 * read_timeout_s, 120.0),
        ),
        image_limits=image_limits or ImageLimits(),
        max_text_chars=max_text_chars,
        max_note_chars=max_note_chars,
        max_study_id_chars=128,
        threshold=threshold_or_default(threshold, segmenter.decision_threshold, "threshold"),
    )
    admission = Admission(max_pending_requests)
    service = Service(segmenter, config, max_concurrent_jobs)
    # Anyone who can reach the API chooses the reports: frozen-encoder features stay in a bounded memory cache,
    # never written to disk by the server (the disk cache is for training).
    segmenter.keep_text_cache_in_memory()
    hosts = allowed_hosts_for(LOOPBACK_NAMES[0], api_key is not None) if allowed_hosts is None else allowed_hosts
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
        # from local files (lvseg.serving.openapi); ReDoc has no local copy, so there is no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.admission = admission
    app.state.api_key = api_key
    app.state.swagger_dir = swagger_ui_dir()
    if app.state.swagger_dir is None:
        logger.warning("swagger-ui-py is not installed: /docs shows a plain page (the schema is at /openapi.json)")
    app.router.on_shutdown.append(service.close)
    per_client = max(1, max_pending_requests // 2) if max_uploads_per_client is None else max_uploads_per_client
    if per_client < 1:
        raise ValueError(f"max_uploads_per_client must be at least 1, got {per_client}")
    if per_client < max_pending_requests:  # a cap as high as the server's own adds nothing
        app.add_middleware(UploadsPerClient, max_per_client=per_client)
    if "*" not in hosts:
        app.add_middleware(HostAllowList, allowed_hosts=list(hosts))  # refusals in the JSON error shape
    app.add_middleware(SecurityHeaders)  # outermost: its headers go on every answer, the Host refusal's too
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]  # Starlette types a handler as taking any Exception
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]  # Starlette types a handler as taking any Exception
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]  # Starlette types a handler as taking any Exception
    app.add_exception_handler(Exception, _internal_error)

    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(docs_router)
    app.include_router(
        api_router(
            config,
            bool(segmenter.requires_text),
            api_key is not None,
            [info.name for info in segmenter.class_table],
        )
    )
    logger.info("lvseg app ready: model %s, auth %s", segmenter.model_name, "on" if api_key else "off")
    return app
