"""The endpoints. Routes stay thin: validation, loading and error mapping live elsewhere."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from triage.api.deps import PipelineDep, SettingsDep
from triage.api.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
)
from triage.api.validation import check_batch_size, check_messages
from triage.schemas import Message, TriageResult

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "the request cannot be triaged"},
    503: {"model": ErrorResponse, "description": "the model is not loaded"},
}

router = APIRouter()


@router.post("/v1/triage", tags=["triage"], responses=_ERRORS, response_model=TriageResult)
async def triage(message: Message, settings: SettingsDep, pipeline: PipelineDep) -> Response:
    """Triage one message: topic, sentiment, urgency with its cues, complaint, review flags."""
    # One message takes well under a millisecond of CPU: running it on the event loop is
    # cheaper than a thread hand-off, and the result is serialised once, without re-validation.
    check_messages([message], settings, pipeline.taxonomy, batch=False)
    return Response(pipeline([message])[0].model_dump_json(), media_type="application/json")


@router.post("/v1/triage/batch", tags=["triage"], responses=_ERRORS)
def triage_batch(
    batch: BatchRequest, settings: SettingsDep, pipeline: PipelineDep
) -> BatchResponse:
    """Triage up to `max_batch_items` messages in one model call (the limit is in the API
    description). Every item is checked first; one bad item rejects the batch and is named by
    its index."""
    check_batch_size(len(batch.items), settings)
    check_messages(batch.items, settings, pipeline.taxonomy, batch=True)
    results = pipeline(batch.items)
    return BatchResponse(results=results, count=len(results))


@router.get("/healthz", tags=["health"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers. Says nothing about the model."""
    return HealthResponse()


@router.get("/readyz", tags=["health"], responses={503: _ERRORS[503]})
async def readyz(pipeline: PipelineDep) -> ReadyResponse:
    """Readiness: the model is loaded and requests can be triaged."""
    return ReadyResponse(model=pipeline.model_info)
