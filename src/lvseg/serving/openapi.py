"""The API's description: hand-written OpenAPI pieces for the multipart endpoints and the offline /docs page."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lvseg.serving.schemas import ErrorResponse

DOCS_ASSETS_PATH = "/docs-assets"
# The Swagger UI 5.x files that /docs loads, served from the swagger-ui-py package (no CDN: the API docs
# must work on an offline hospital network). Only these are served, not the rest of that folder.
_SWAGGER_JS = "swagger-ui-bundle.js"
_SWAGGER_CSS = "swagger-ui.css"
_SWAGGER_FAVICON = "favicon-32x32.png"
_DOCS_ASSET_TYPES = {_SWAGGER_JS: "text/javascript", _SWAGGER_CSS: "text/css", _SWAGGER_FAVICON: "image/png"}
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "application/dicom")
#: A multipart form field as the schema shows it: kind ("file" or "text"), description, maximum length.
FormField = tuple[str, str, int | None]


def _multipart_body(
    fields: dict[str, FormField], required: list[str], non_blank: tuple[str, ...] = ()
) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a multipart form (the reader is custom, so it is declared by hand): exactly the
    fields the server reads (it refuses others); ``non_blank``: text fields that must hold a letter or digit
    (:func:`lvseg.data.report_text.is_blank_report`).
    """
    properties: dict[str, Any] = {}
    for name, (kind, description, max_length) in fields.items():
        prop: dict[str, Any] = {"type": "string", "description": description}
        if kind == "file":
            prop.update(format="binary", minLength=1)
        if max_length:
            prop["maxLength"] = max_length
        if name in non_blank:
            # Not blank: some letter or digit. [\W_] is "neither letter nor digit" (Unicode \W as Python reads it).
            prop.update(minLength=1, **{"not": {"pattern": r"^[\W_]*$"}})
        properties[name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }
    media: dict[str, Any] = {"schema": schema}
    files = [name for name, (kind, _, _) in fields.items() if kind == "file"]
    if files:  # the image formats the server decodes (their validity is checked by decoding: 415/422)
        media["encoding"] = {name: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)} for name in files}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": media}}}


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers ``codes``, each an :class:`ErrorResponse` with its meaning."""
    meaning = {
        400: "A request the server cannot parse: a multipart boundary longer than the parser accepts, or a Host "
        "name this server does not answer to.",
        401: "Missing or wrong API key (X-API-Key header).",
        404: "The result_id names no result the server still keeps: segment again.",
        429: "This client already has the most uploads in progress that one client may have: wait for one.",
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
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>lvseg - API docs</title></head><body>'
        "<h1>lvseg API</h1><p>The interactive API documentation needs the <code>swagger-ui-py</code> package "
        "(part of the <code>serve</code> extra: <code>pip install 'lvseg[serve]'</code>). "
        f'The OpenAPI schema is at <a href="{openapi_url}">{openapi_url}</a>.</p></body></html>'
    )


#: ``/docs`` and its assets; the app sets ``state.swagger_dir`` (:func:`swagger_ui_dir`).
docs_router = APIRouter()


@docs_router.get("/docs", include_in_schema=False)
async def api_docs(request: Request) -> HTMLResponse:
    """``/docs``: Swagger UI from the app's ``state.swagger_dir``, or a plain page when that is None."""
    swagger_dir: Path | None = request.app.state.swagger_dir
    root = str(request.scope.get("root_path", "")).rstrip("/")
    openapi_url = root + str(request.app.openapi_url)
    if swagger_dir is None:
        return _docs_unavailable_page(openapi_url)
    assets = root + DOCS_ASSETS_PATH
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title="lvseg - API docs",
        swagger_js_url=f"{assets}/{_SWAGGER_JS}",
        swagger_css_url=f"{assets}/{_SWAGGER_CSS}",
        swagger_favicon_url=f"{assets}/{_SWAGGER_FAVICON}",
        swagger_ui_parameters={"validatorUrl": None},  # no calls to the online spec validator
    )


@docs_router.get(DOCS_ASSETS_PATH + "/{name}", include_in_schema=False)
async def docs_asset(request: Request, name: str) -> FileResponse:
    """One of the few Swagger UI files /docs loads (404 for any other name)."""
    swagger_dir: Path | None = request.app.state.swagger_dir
    if swagger_dir is None or name not in _DOCS_ASSET_TYPES:
        raise StarletteHTTPException(404, "Not Found")
    return FileResponse(
        swagger_dir / name, media_type=_DOCS_ASSET_TYPES[name], headers={"cache-control": "public, max-age=86400"}
    )
