"""Request and response shapes that exist only at the HTTP boundary.

A single triage request is :class:`triage.schemas.Message` itself and a result is
:class:`triage.schemas.TriageResult`, so the API, the CLI and the library share one definition.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from triage.schemas import ExternalId, Message, ModelInfo, ReplyDraft, TriageResult
from triage.store.service import TicketFilter


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Message] = Field(
        min_length=1,
        description="messages to triage together; at most the configured max_batch_items",
    )


class BatchResponse(BaseModel):
    results: list[TriageResult] = Field(description="one result per item, in request order")
    count: int


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    pid: int = Field(
        default_factory=os.getpid,
        description="the server process that answered (`triage serve --workers N` runs several)",
    )


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelInfo


class ErrorDetail(BaseModel):
    """One problem with a request; never carries the submitted value, which may be raw text."""

    loc: list[str | int] = Field(description='e.g. ["body", "items", 2, "text"]')
    msg: str
    type: str


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable error code")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorBody


class ReplySuggestResponse(BaseModel):
    replies: list[ReplyDraft]
    topic: str
    urgency: str


class ReplyCheckRequest(BaseModel):
    """An agent's draft, optionally with the customer's message it answers."""

    model_config = ConfigDict(extra="forbid")

    draft: str = Field(min_length=1, max_length=5000)
    message: str | None = Field(default=None, max_length=5000)
    channel: str | None = Field(default=None, max_length=50)


class ToneFinding(BaseModel):
    kind: str
    message: str
    suggestion: str
    text: str
    start: int | None = Field(description="offset in the normalised draft; null when missing")
    end: int | None


class ReplyCheckResponse(BaseModel):
    score: float = Field(ge=0.0, le=1.0)
    passed: bool
    findings: list[ToneFinding]


class HeadMetrics(BaseModel):
    accuracy: float
    macro_f1: float
    ece: float | None = Field(default=None, description="expected calibration error")


class RegistryVersion(BaseModel):
    """One version in the model registry."""

    id: str = Field(description="<name>-<version>: what `triage models promote` takes")
    name: str
    version: str
    engine: str
    created: str = Field(description="when it was trained (else registered), ISO 8601")
    promoted: bool = Field(description="the version the service loads on its next start")
    serving: bool = Field(description="the model this process serves now")
    metrics: dict[str, HeadMetrics] = Field(
        description="dev-set metrics per head saved with the model; empty when none were"
    )


class ModelListResponse(BaseModel):
    serving: ModelInfo | None = Field(description="the model this process serves; null if none")
    models: list[RegistryVersion] = Field(description="registered versions, oldest first")


class FollowupRequest(BaseModel):
    """A message on an existing ticket: the customer's follow-up or an agent's reply."""

    model_config = ConfigDict(extra="forbid")

    text: str
    author: Literal["customer", "agent"] = "customer"
    author_id: ExternalId | None = Field(default=None, description="agent or customer")
    id: ExternalId | None = Field(
        default=None,
        description="client message id: a retry with the same text is answered as the first "
        "time, the id with another text is a conflict",
    )


class TicketQuery(TicketFilter):
    """The filters and page of ``GET /v1/tickets``. An unknown parameter is refused: ignored, a
    misspelt filter would answer with every ticket."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0)


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    handler_id: str | None = Field(
        default=None, description="who takes the ticket; left out: routing picks in its team"
    )
    actor: str | None = Field(default=None, max_length=200, description="who made the change")


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(default=None, max_length=200, description="who made the change")
    reason: str | None = Field(default=None, max_length=500)


class DutyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_duty: bool
    actor: str | None = Field(default=None, max_length=200)
