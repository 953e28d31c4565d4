"""The one error type the service raises for bad requests, turned into ``{"error", "detail"}`` JSON."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A client error with its HTTP status, a plain-words message and optional machine-readable detail."""

    def __init__(self, status_code: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": self.error, "detail": self.detail}
