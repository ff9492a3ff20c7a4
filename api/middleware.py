"""Request logging: method, path, status and duration only; bodies are never logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

logger = logging.getLogger("triage.api")


async def log_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    started = time.perf_counter()
    status = 500  # stays 500 if the app raises past its handlers
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info("%s %s %d %.1fms", request.method, request.url.path, status, elapsed_ms)
