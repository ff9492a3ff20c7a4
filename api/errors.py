"""Every failure leaves the API as ``{"error": {"code", "message", "details"}}`` with a 4xx or 5xx.

Library errors (:class:`triage.errors.TriageError`) are mapped here, at the boundary, so routes
stay free of ``try``/``except``. Messages never include submitted text: it may hold personal data.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from triage.api.schemas import ErrorBody, ErrorDetail, ErrorResponse
from triage.errors import (
    ConfigError,
    ConflictError,
    InputError,
    ModelError,
    NotFoundError,
    StoreError,
    TriageError,
)

logger = logging.getLogger("triage.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
_TRIAGE_ERROR_STATUS: dict[type[TriageError], int] = {
    InputError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    ModelError: 503,
    StoreError: 503,
    ConfigError: 500,
}
# Errors about the request itself; the others name server paths or database URLs.
_CLIENT_ERRORS = (InputError, NotFoundError, ConflictError)


class ApiError(Exception):
    """An error the API answers as-is: HTTP status, stable code, message for people, details."""

    def __init__(
        self, status_code: int, code: str, message: str, details: Sequence[ErrorDetail] = ()
    ):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = list(details)


def describe_loc(loc: Sequence[str | int]) -> str:
    """``["body", "items", 2, "text"]`` → ``items[2].text``, as a client would write it."""
    label = ""
    for part in loc[1:]:
        label += f"[{part}]" if isinstance(part, int) else f".{part}" if label else part
    return label or "body"


def _describe(detail: ErrorDetail) -> str:
    if detail.type == "json_invalid":  # its loc is ["body", <character offset>]
        return f"body is not valid JSON (error at character {detail.loc[-1]})"
    return f"{describe_loc(detail.loc)}: {detail.msg}"


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[ErrorDetail] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=list(details)))
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers that give every error the one JSON shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        body_errors = any(tuple(e["loc"][:1]) == ("body",) for e in exc.errors())
        if body_errors and content_type and "json" not in content_type.lower():
            # The body was not read as JSON at all: say so rather than "not a valid dictionary".
            message = f"expected a JSON body (content-type application/json), got {content_type!r}"
            return error_response(415, "unsupported_media_type", message)
        # Only location, message and type are passed on: pydantic's "input" would echo raw text.
        details = [
            ErrorDetail(loc=list(e["loc"]), msg=str(e["msg"]), type=str(e["type"]))
            for e in exc.errors()
        ]
        summary = "; ".join(_describe(d) for d in details[:3])
        more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
        return error_response(422, "invalid_request", f"invalid request: {summary}{more}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    async def triage_error(request: Request, exc: TriageError) -> JSONResponse:
        status = next(s for cls, s in _TRIAGE_ERROR_STATUS.items() if isinstance(exc, cls))
        if isinstance(exc, _CLIENT_ERRORS):
            return error_response(status, exc.code, str(exc))
        # Model, store and configuration errors name server paths: logged, not shown.
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, exc.code, exc)
        return error_response(status, exc.code, "the service cannot process requests right now")

    for error_class in _TRIAGE_ERROR_STATUS:
        app.exception_handler(error_class)(triage_error)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback is logged without the exception's message, which could quote input.
        logger.error(
            "%s %s: unexpected %s\n%s",
            request.method,
            request.url.path,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
        )
        return error_response(500, "internal_error", "an unexpected error occurred")
