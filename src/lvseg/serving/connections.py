"""Connections that never finish their request: uvicorn's h11 protocol with a header read timeout.

uvicorn closes a keep-alive connection that stays idle (``timeout_keep_alive``), but not one that keeps sending
a request's line and headers a byte at a time: every byte cancels the idle timer, and the app only ever sees a
request once its headers are complete, so no ASGI middleware can close it. :func:`guarded_h11_protocol` gives
uvicorn's own h11 protocol (``uvicorn.run(app, http=...)``) one more timer: a request's headers must arrive
within ``header_timeout_s`` of its first byte (or of the connection opening); otherwise the connection is
answered 408 and closed. Both the 408 and uvicorn's 400 for a request h11 cannot parse are sent in the API's
JSON error shape ``{error, detail}``. A body that stalls once the headers are in is the app's to time out
(:class:`lvseg.serving.forms.FormLimits`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

#: Seconds a client has, from the first byte of a request, to send its request line and headers.
HEADER_TIMEOUT_S = 10.0


def _json_error(message: str) -> bytes:
    return json.dumps({"error": message, "detail": None}).encode("utf-8")


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than
    :attr:`header_timeout_s` (answered 408, JSON), and answering unparsable requests with a JSON 400."""

    header_timeout_s: float = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._start_header_timer()  # the first bytes of the next request on a keep-alive connection
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # h11 parsed a request's headers: the app has it now
            self._stop_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next pipelined request, whose headers are already in
        if not self._between_requests():
            self._stop_header_timer()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._between_requests():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.info("closing the connection of %s: no complete request headers in %g s", client, self.header_timeout_s)
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            # h11 answers only a request it has parsed; this one never finished, so the 408 is written as is.
            body = _json_error(
                f"the request headers did not arrive within {self.header_timeout_s:g} s; the connection is closed"
            )
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            self.transport.write(head.encode("ascii") + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, in the API's JSON error shape."""
        body = _json_error(f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body)):
            output = self.conn.send(event)
            if output:
                self.transport.write(output)
        output = self.conn.send(h11.EndOfMessage())
        if output:
            self.transport.write(output)
        self.transport.close()


def guarded_h11_protocol(header_timeout_s: float = HEADER_TIMEOUT_S) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class to pass as ``uvicorn.run(app, http=...)``, closing connections whose request headers take
    longer than ``header_timeout_s`` seconds."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be a positive number of seconds, got {header_timeout_s!r}")
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(header_timeout_s)})
