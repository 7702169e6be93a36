"""HTTP error mapping: every failure becomes ``{"success": false, "error": "..."}``.

Client mistakes get a 4xx whose message names the offending field (camelCase, as the client
sent it); only our own bugs and unreachable dependencies produce a 5xx.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ApiError(Exception):
    """An error the client can act on; ``status`` is the HTTP status code."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequestError(ApiError):
    status = 400


class UnauthorizedError(ApiError):
    status = 401

    def __init__(self, message: str = "missing or invalid bearer token"):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ApiError):
    status = 403


class NotFoundError(ApiError):
    status = 404


class ConflictError(ApiError):
    status = 409


class RateLimitedError(ApiError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: float):
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after_s = retry_after_s


class UpstreamUnavailableError(ApiError):
    """A dependency we call (the model, a machine provider) failed; not the client's fault."""

    status = 503


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


def describe_validation_error(exc: ValidationError, *, location: str = "") -> str:
    """Render pydantic errors as ``field: problem; other.field: problem`` (aliases, as sent)."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
        field = ".".join(p for p in (location, loc) if p) or "body"
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{field}: {message}")
    # Several errors for one field (union members) add little beyond the first few.
    return "; ".join(parts[:8]) or "invalid request"


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "not found", 405: "method not allowed"}
    message = exc.detail if exc.detail and exc.detail not in {"Not Found", "Method Not Allowed"} else None
    return error_response(
        exc.status_code, message or messages.get(exc.status_code, "request failed"), dict(exc.headers or {})
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return error_response(422, describe_validation_error(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The message never reaches the client: it may contain internals (SQL, paths, secrets).
    logger.opt(exception=exc).error("unhandled error on {} {}", request.method, request.url.path)
    return error_response(500, "internal error")


def exception_handlers() -> dict[Any, Any]:
    """The handlers to pass to ``Starlette(exception_handlers=...)``."""
    return {
        ApiError: _api_error,
        HTTPException: _http_error,
        ValidationError: _validation_error,
        Exception: _unexpected,
    }
