"""The FastAPI application: ``uvicorn triage.api.app:app`` serves it with settings from the
environment. Creating the app is cheap; the model is loaded in the lifespan, at startup."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from triage import __version__
from triage.api.batching import MicroBatcher
from triage.api.errors import add_error_handlers
from triage.api.middleware import RequestLogMiddleware
from triage.api.routes import router
from triage.api.tickets import router as tickets_router
from triage.config import Settings
from triage.errors import TriageError
from triage.schemas import Message
from triage.service import load_pipeline, load_ticket_service

logger = logging.getLogger("triage.api")

# Net new container objects (allocations minus frees) that start a young garbage collection.
YOUNG_GC_THRESHOLD = 10_000

DESCRIPTION = """\
Triage of Chinese customer messages: topic, sentiment, urgency (with the cues that raised it),
complaint detection and review flags; tickets that are stored, routed to a team and a handler
with SLA deadlines (see docs/tickets.md). Personal data (phone numbers, e-mail addresses, ID and
bank card numbers) is masked before anything is stored, logged or returned.

**Limits:** `text` is at most {max_text_length} characters; a batch holds 1 to
{max_batch_items} items.

**Errors** always have the body `{{"error": {{"code", "message", "details"}}}}`; `details`
lists each problem with its location (`loc`), e.g. `["body", "items", 2, "text"]`.
"""


class LogFormatter(logging.Formatter):
    """``logging.Formatter`` with the default time format, the date and time part of which is
    formatted once per second: converting and formatting the time took about a quarter of
    writing each request's log line. The lines are the same."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._cached: tuple[int, str] | None = None  # (second, its date and time), one object

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)  # what ``time.localtime`` reads of it
        cached = self._cached
        if cached is None or cached[0] != second:
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._cached = cached = (second, stamp)
        msec_format = self.default_msec_format
        return msec_format % (cached[1], record.msecs) if msec_format else cached[1]


def _configure_logging(level: str) -> None:
    """Make ``triage`` logs visible under plain uvicorn, which only sets up its own loggers."""
    triage_logger = logging.getLogger("triage")
    triage_logger.setLevel(level.upper())
    if not triage_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        triage_logger.addHandler(handler)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and open the ticket store once. If either fails the process keeps
    serving: ``/healthz`` is 200 while the endpoints that need it answer 503 and the log says
    why."""
    settings: Settings = app.state.settings
    _configure_logging(settings.log_level)
    try:
        pipeline = load_pipeline(settings)
    except TriageError as exc:
        logger.error("model not loaded, serving 503 until restarted: %s", exc)
    else:
        # One message through everything (word segmenter, lexicons, the reply bank's index)
        # builds what is built on first use, before any request waits for it.
        pipeline([Message(text="你好，快递三天了还没到")], replies=True)
        info = pipeline.model_info
        logger.info("model %s %s (%s) loaded", info.name, info.version, info.engine)
        app.state.pipeline = pipeline
        try:
            app.state.tickets = load_ticket_service(settings, pipeline)
        except TriageError as exc:
            logger.error("ticket store not opened, /v1/tickets answers 503: %s", exc)
        else:
            logger.info("ticket store %s ready", app.state.tickets.db.display_url)
    # The loaded model, lexicons and libraries are some 170,000 objects that live as long as
    # the process: moved out of the garbage collector's reach, a full collection no longer
    # walks them (about 100 ms, a pause that every request in flight would wait for).
    gc.freeze()
    # Requests make no reference cycles: at the default threshold (700) a young collection ran
    # about every eight requests under load (the results of one micro-batch alive at once)
    # and freed nothing, some 2-3 % of the server's CPU.
    thresholds = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *thresholds[1:])
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    if app.state.tickets is not None:
        app.state.tickets.db.dispose()
    app.state.pipeline = app.state.tickets = None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="triage",
        summary="Triage of Chinese customer messages",
        description=DESCRIPTION.format(
            max_text_length=settings.max_text_length, max_batch_items=settings.max_batch_items
        ),
        version=__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pipeline = None
    app.state.tickets = None
    app.state.batcher = MicroBatcher(settings.micro_batch_max_items)
    app.add_middleware(RequestLogMiddleware)
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(tickets_router)
    return app


app = create_app()
