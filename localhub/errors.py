"""The HTTP error every route raises: a status, a message, and the Hub's `X-Error-Code`."""

from __future__ import annotations


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
