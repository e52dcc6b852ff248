"""Google-style API errors: ``{"error": {"code", "message", "status"}}``."""

from __future__ import annotations

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


def row_status(code: int, message: str) -> dict:
    """A per-row ``google.rpc.Status``."""
    return {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}


def invalid(message: str) -> ApiError:
    return ApiError(400, message, "INVALID_ARGUMENT")


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "NOT_FOUND")


def precondition(message: str) -> ApiError:
    return ApiError(400, message, "FAILED_PRECONDITION")
