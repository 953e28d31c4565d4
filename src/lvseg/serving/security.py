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
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
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


#: The scope key :class:`HostAllowList` sets on a request whose Host it accepted.
_HOST_ACCEPTED = "lvseg.host_accepted"


class HostAllowList:
    """Pure ASGI middleware: Starlette's :class:`TrustedHostMiddleware` (the Host allow-list, a DNS-rebinding
    guard), its refusal answered in the API's JSON error shape ``{error, detail}`` instead of plain text.

    Which names are accepted is the Starlette middleware's rule; this only rewrites what it sends when it
    refuses (a request it passes on is marked in its scope, so the app's own answers go out unchanged).
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        async def accepted(scope: Scope, receive: Receive, send: Send) -> None:
            scope[_HOST_ACCEPTED] = True
            await app(scope, receive, send)

        self.guard = TrustedHostMiddleware(accepted, allowed_hosts=list(allowed_hosts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.guard(scope, receive, send)
            return
        refusal: dict[str, int] = {}

        async def send_refusal_as_json(message: Message) -> None:
            if scope.get(_HOST_ACCEPTED):
                await send(message)
            elif message["type"] == "http.response.start" and message["status"] >= 400:
                refusal["status"] = message["status"]  # the plain-text body that follows is replaced
            elif message["type"] == "http.response.body" and refusal:
                if not message.get("more_body", False):
                    await self._refusal(scope, refusal["status"])(scope, receive, send)
            else:  # not a refusal (the www. redirect Starlette may send)
                await send(message)

        await self.guard(scope, receive, send_refusal_as_json)

    def _refusal(self, scope: Scope, status: int) -> JSONResponse:
        host = Headers(scope=scope).get("host")
        shown = host[:100] if host else None
        logger.info("%s %s -> %d (Host %r not accepted)", scope.get("method"), scope.get("path", ""), status, shown)
        return JSONResponse(
            {
                "error": (
                    f"the Host header {shown!r} names no host this server answers to; use one of its own names "
                    "(lvseg serve --allowed-host NAME adds one)"
                    if host
                    else "the request has no Host header; send the name of this server in it"
                ),
                "detail": {"host": shown},
            },
            status_code=status,
        )


class UploadsPerClient:
    """Pure ASGI middleware: at most ``max_per_client`` POST requests to ``/api`` (the uploads) from one client
    address at once; more are answered 429 (JSON), so one client cannot hold every upload slot of the server
    (:class:`~lvseg.serving.service.Admission`) with slow uploads. An event-loop counter: no lock.

    The address is the ASGI ``client`` (uvicorn puts a trusted proxy's ``X-Forwarded-For`` there).
    """

    def __init__(self, app: ASGIApp, max_per_client: int) -> None:
        if max_per_client < 1:
            raise ValueError(f"max_uploads_per_client must be at least 1, got {max_per_client}")
        self.app = app
        self.max_per_client = max_per_client
        self.active: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").startswith("/api"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        if self.active.get(address, 0) >= self.max_per_client:
            logger.info("POST %s -> 429 (%d uploads of one client in progress)", scope.get("path"), self.max_per_client)
            response = JSONResponse(
                {
                    "error": f"this client already has {self.max_per_client} uploads in progress, the most the "
                    "server takes from one client at once; wait for one to finish",
                    "detail": {"max_uploads_per_client": self.max_per_client},
                },
                status_code=429,
                headers={"retry-after": "5"},
            )
            await response(scope, receive, send)
            return
        self.active[address] = self.active.get(address, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[address] -= 1
            if not self.active[address]:
                del self.active[address]


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
