"""Google-style API errors: an HTTP error body ``{"error": {"code", "message", "status"}}``, and the
``google.rpc.Status`` of a row or a job, which has ``code`` and ``message`` only (no ``status`` string)."""

from __future__ import annotations

import json

from .config import STATUS_NAMES


class ApiError(Exception):
    """An error the service answers with; the SDK turns the body into APIError."""

    def __init__(self, http_code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.http_code = http_code
        self.message = message
        self.status = status or STATUS_NAMES.get(http_code, "UNKNOWN")

    def body(self) -> dict:
        return {"error": {"code": self.http_code, "message": self.message, "status": self.status}}


HTTP_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
HTTP_OF_GRPC = {3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 13: 500, 14: 503}


def row_status(code: int, message: str) -> dict:
    """A ``google.rpc.Status`` (a row's or a job's error): ``code`` and ``message``, as the service sends it."""
    return {"code": code, "message": message}


def vertex_row_status(status: dict) -> str:
    """A failed Vertex AI output row's ``status``: the HTTP reason, then the error body as JSON, as in Google's
    example (``Bad Request: {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}``)."""
    http = status["code"] if status["code"] >= 100 else HTTP_OF_GRPC.get(status["code"], 500)
    body = {
        "error": {"code": http, "message": status["message"], "status": STATUS_NAMES.get(status["code"], "UNKNOWN")}
    }
    return f"{HTTP_REASONS.get(http, 'Error')}: {json.dumps(body)}"


def invalid(message: str) -> ApiError:
    return ApiError(400, message, "INVALID_ARGUMENT")


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "NOT_FOUND")


def precondition(message: str) -> ApiError:
    return ApiError(400, message, "FAILED_PRECONDITION")
