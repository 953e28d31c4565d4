"""A streaming ``multipart/form-data`` reader that enforces size limits while it reads.

Starlette's own form parser spools uploads over 1 MB to a temporary file and only checks sizes
after reading; this reader keeps every part in memory (uploads never touch the disk) and stops
reading as soon as a limit is crossed, whatever ``Content-Length`` claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from lvseg.serving.errors import ApiError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class FormLimits:
    """Size limits of one request; file fields may be large, text fields are small."""

    max_file_bytes: int = 20 * MIB
    max_field_bytes: int = 64 * 1024
    max_parts: int = 16
    overhead_bytes: int = 256 * 1024
    #: Longest wait for the next piece of the body, and longest whole upload, in seconds (stalled uploads
    #: would otherwise hold a connection open for ever).
    chunk_timeout_s: float = 30.0
    upload_timeout_s: float = 120.0

    @property
    def max_body_bytes(self) -> int:
        """The largest body accepted: one full-size file, the text fields and multipart framing."""
        return self.max_file_bytes + self.overhead_bytes


@dataclass
class ParsedForm:
    """The parts of a form: raw bytes of file fields and decoded text of the others."""

    files: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    name: str | None = None
    disposition: bytes = b""
    header_name: bytes = b""
    header_value: bytes = b""
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """The callbacks of python-multipart's streaming parser, with per-part limits."""

    def __init__(self, file_fields: Collection[str], limits: FormLimits) -> None:
        self.file_fields = set(file_fields)
        self.limits = limits
        self.part = _Part()
        self.parts = 0
        self.raw: dict[str, bytes] = {}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise ApiError(422, f"too many form fields (at most {self.limits.max_parts})")
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.part.header_name.strip().lower() == b"content-disposition":
            self.part.disposition = self.part.header_value
        self.part.header_name = b""
        self.part.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        name = options.get(b"name")
        if name is None:
            raise ApiError(422, "a form part has no field name in its Content-Disposition header")
        self.part.name = name.decode("utf-8", errors="replace")
        if self.part.name in self.raw:
            raise ApiError(422, f"field '{self.part.name}' was sent more than once", {"field": self.part.name})

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.part.data += data[start:end]
        name = self.part.name or ""
        if name in self.file_fields:
            if len(self.part.data) > self.limits.max_file_bytes:
                limit_mb = self.limits.max_file_bytes / MIB
                raise ApiError(413, f"the upload in '{name}' is larger than {limit_mb:g} MB", {"field": name})
        elif len(self.part.data) > self.limits.max_field_bytes:
            raise ApiError(422, f"field '{name}' is too long", {"field": name})

    def on_part_end(self) -> None:
        if self.part.name is not None:
            self.raw[self.part.name] = bytes(self.part.data)
        self.part = _Part()


async def read_multipart(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    file_fields: Collection[str],
    limits: FormLimits,
) -> ParsedForm:
    """Read a multipart body chunk by chunk, keeping parts in memory and enforcing ``limits``.

    Raises :class:`ApiError` 415 for another content type, 400 for a boundary the parser does not accept
    (longer than python-multipart's limit), 413 when the body or a file is too large (checked on the bytes
    actually received, and early on a too-large ``Content-Length``), and 422 for malformed bodies,
    oversized or non-UTF-8 text fields and duplicate fields.
    """
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise ApiError(
            415,
            "expected a multipart/form-data request (an 'image' file and a 'text' field)",
            {"content_type": (content_type or "")[:100]},
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(422, "the multipart/form-data request has no boundary")
    if content_length is not None and content_length.strip().isdigit():
        if int(content_length) > limits.max_body_bytes:
            raise ApiError(413, f"the request is larger than {limits.max_file_bytes / MIB:g} MB")

    collector = _Collector(file_fields, limits)
    callbacks: MultipartCallbacks = {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
    except FormParserError as error:  # python-multipart refuses the boundary itself (longer than it accepts)
        raise ApiError(
            400,
            f"the multipart/form-data boundary ({len(boundary)} characters) is not accepted: {error}",
            {"field": "content-type", "boundary_length": len(boundary)},
        ) from error
    received = 0
    deadline = time.monotonic() + limits.upload_timeout_s
    chunks = stream.__aiter__()
    try:
        while True:
            wait = min(limits.chunk_timeout_s, deadline - time.monotonic())
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), timeout=max(wait, 0.0))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"the upload stalled: no data for {limits.chunk_timeout_s:g} s, or not complete "
                    f"within {limits.upload_timeout_s:g} s",
                    {"received_bytes": received},
                ) from None
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise ApiError(413, f"the request is larger than {limits.max_file_bytes / MIB:g} MB")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise ApiError(422, "the multipart/form-data body is malformed") from error

    form = ParsedForm()
    for name, data in collector.raw.items():
        if name in file_fields:
            form.files[name] = data
            continue
        try:
            form.fields[name] = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ApiError(422, f"field '{name}' is not valid UTF-8 text", {"field": name}) from error
    logger.debug("read multipart body: %d bytes, %d parts", received, len(collector.raw))
    return form
