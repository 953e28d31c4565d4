"""Who may use the app: security headers and the cross-origin refusal, the API key, the Host allow-list."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lvseg.serving.errors import ApiError

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
#: The names of this machine's loopback interface, as clients write them in the Host header.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
#: The Host allow-list that accepts any name.
ANY_HOST = ["*"]
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def machine_names() -> set[str]:
    """This machine's host name, fully qualified name and the addresses they resolve to."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
        except OSError:
            continue
    return {name for name in names if name}


def allowed_hosts_for(bind_host: str, api_key_set: bool, extra_hosts: Sequence[str] = ()) -> list[str]:
    """The Host header values a server listening on ``bind_host`` accepts (a DNS-rebinding guard).

    Without an API key: the loopback names, ``bind_host``, this machine's names when ``bind_host`` is not
    loopback (how LAN clients reach it) and ``extra_hosts``. With an API key: any name (:data:`ANY_HOST`),
    unless ``extra_hosts`` restricts them. ``"*"`` in ``extra_hosts`` accepts any name.
    """
    if "*" in extra_hosts or (api_key_set and not extra_hosts):
        return list(ANY_HOST)
    own_names = machine_names() if not is_loopback(bind_host) else set()
    return sorted({*LOOPBACK_NAMES, bind_host, *own_names, *extra_hosts})


_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The service's API key.")


async def require_api_key(request: Request, provided: str | None = Depends(_key_header)) -> None:
    """Refuse (401) a request without the app's API key (``app.state.api_key``; None: no key needed)."""
    api_key: str | None = request.app.state.api_key
    if api_key is None:
        return
    if not provided or not hmac.compare_digest(provided.encode("utf-8"), api_key.encode("utf-8")):
        raise ApiError(401, f"missing or wrong API key; send it in the {API_KEY_HEADER} header")


def _cross_origin(scope: Scope) -> bool:
    """Whether a request comes from a page of another origin (browsers send Origin / Sec-Fetch-Site)."""
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
    if headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = headers.get("origin")
    if not origin:
        return False  # not a browser form post (curl, scripts, same-origin navigations)
    return origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


class SecurityHeaders:
    """Pure ASGI middleware: security headers, no caching of API results, cross-origin POSTs refused (403),
    one log line per API request."""

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
            response = JSONResponse(
                {
                    "error": "cross-origin requests are not accepted: use this server's own page "
                    "or a client that sends no Origin header",
                    "detail": None,
                },
                status_code=403,
            )
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
                    "%s %s -> %s in %.0f ms",
                    scope.get("method"),
                    path,
                    status["code"],
                    (time.perf_counter() - start) * 1000.0,
                )
