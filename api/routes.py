"""The endpoints. Routes stay thin: validation, loading and error mapping live elsewhere."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import TypeAdapter

from triage.api.deps import (
    PipelineDep,
    RegistryDep,
    ServedModelDep,
    SettingsDep,
    SingleTriageDep,
)
from triage.api.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ModelListResponse,
    ReadyResponse,
    RegistryVersion,
    ReplyCheckRequest,
    ReplyCheckResponse,
    ReplySuggestResponse,
    ToneFinding,
)
from triage.api.validation import (
    check_batch_size,
    check_draft_request,
    check_messages,
    empty_after_markup,
    prepare_batch,
)
from triage.errors import EmptyTextError
from triage.pipeline import TriagePipeline
from triage.replies import ToneRules, check_reply, load_tone_rules
from triage.schemas import Message, TriageResult

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "the request cannot be triaged"},
    503: {"model": ErrorResponse, "description": "the model is not loaded"},
}

router = APIRouter()
# Serialises a result straight to JSON bytes: the same bytes as ``model_dump_json``, without
# that method's argument handling and the str-to-bytes copy (a few µs of every request).
RESULT_JSON = TypeAdapter(TriageResult)


def tone_rules(pipeline: TriagePipeline) -> ToneRules:
    """The rules the pipeline's suggester uses, or the packaged ones when it has none."""
    return pipeline.suggester.rules if pipeline.suggester else load_tone_rules()


@router.post("/v1/triage", tags=["triage"], responses=_ERRORS, response_model=TriageResult)
async def triage(message: Message, triage_one: SingleTriageDep) -> Response:
    """Triage one message: topic, sentiment, urgency with its cues, complaint, review flags."""
    # One message takes well under a millisecond of CPU: running it on the event loop is
    # cheaper than a thread hand-off (concurrent requests share one model call), and the
    # result is serialised once, without re-validation.
    result = await triage_one(message)
    return Response(RESULT_JSON.dump_json(result), media_type="application/json")


@router.post("/v1/triage/batch", tags=["triage"], responses=_ERRORS)
def triage_batch(
    batch: BatchRequest, settings: SettingsDep, pipeline: PipelineDep
) -> BatchResponse:
    """Triage up to `max_batch_items` messages in one model call (the limit is in the API
    description). Every item is checked first; one bad item rejects the batch and is named by
    its index."""
    check_batch_size(len(batch.items), settings)
    check_messages(batch.items, settings, pipeline.taxonomy, batch=True)
    results = pipeline.run_prepared(prepare_batch(pipeline, batch.items), replies=True)
    return BatchResponse(results=results, count=len(results))


@router.post("/v1/replies/suggest", tags=["replies"], responses=_ERRORS)
async def suggest_replies(message: Message, triage_one: SingleTriageDep) -> ReplySuggestResponse:
    """Up to three reply drafts for a customer message, best first, each with its reason."""
    result = await triage_one(message)
    return ReplySuggestResponse(replies=result.replies, topic=result.topic, urgency=result.urgency)


@router.post("/v1/replies/check", tags=["replies"], responses=_ERRORS)
def check_draft(
    request: ReplyCheckRequest, settings: SettingsDep, pipeline: PipelineDep
) -> ReplyCheckResponse:
    """Check an agent's draft before it is sent: blame, refusals, sarcasm, over-promising,
    missing apology, next step, time frame or follow-up, and length for chat. When the
    customer's message is given, it decides whether an apology and collections wording are due."""
    check_draft_request(request.draft, request.channel, pipeline.taxonomy)
    complaint, collections = True, False
    if request.message is not None:
        customer = Message(text=request.message, channel=request.channel)
        check_messages([customer], settings, pipeline.taxonomy, batch=False, text_field="message")
        try:
            result = pipeline([customer])[0]
        except EmptyTextError:
            raise empty_after_markup("message") from None
        complaint, collections = result.is_complaint, result.topic == "collections"
    report = check_reply(
        request.draft,
        tone_rules(pipeline),
        complaint=complaint,
        collections=collections,
        chat=request.channel == "chat",
    )
    return ReplyCheckResponse(
        score=report.score,
        passed=report.passed,
        findings=[ToneFinding(**vars(finding)) for finding in report.findings],
    )


@router.get("/v1/models", tags=["models"], responses={500: {"model": ErrorResponse}})
def list_models(registry: RegistryDep, serving: ServedModelDep) -> ModelListResponse:
    """The versions in the model registry with their dev metrics, the promoted one, and the one
    this process serves (a process started with TRIAGE_MODEL_DIR may serve an unregistered
    model: then no version is marked as serving)."""
    served = (serving.name, serving.version) if serving else None
    return ModelListResponse(
        serving=serving,
        models=[
            RegistryVersion(**v.describe(), serving=(v.record.name, v.record.version) == served)
            for v in registry.versions()
        ],
    )


@router.get("/healthz", tags=["health"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers. Says nothing about the model."""
    return HealthResponse()


@router.get("/readyz", tags=["health"], responses={503: _ERRORS[503]})
async def readyz(pipeline: PipelineDep) -> ReadyResponse:
    """Readiness: the model is loaded and requests can be triaged."""
    return ReadyResponse(model=pipeline.model_info)
