"""What the ticket store answers: tickets with their routing, SLA, messages and audit trail,
handlers and teams with their load, agents' feedback. The API returns these shapes as they are."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from triage.schemas import ReplyDraft, TriageResult
from triage.sla import SlaState, SlaStatus

TicketStatus = Literal["queued", "assigned", "resolved"]
MessageKind = Literal["opening", "new_complaint", "resolved", "thanks", "update", "agent_reply"]
FollowupAction = Literal["none", "reopened", "escalated", "first_response"]


class RoutingView(BaseModel):
    rule: str = Field(description="id of the rule that fired; topic_team when none applied")
    team: str
    skill: str | None = Field(description="skill the handler needs; null: anyone in the team")
    handler: str | None
    notify: list[str] = Field(description="supervisors notified about this ticket")
    reason: str = Field(description="why this team")
    assignment: str = Field(description="why this handler, or why the ticket waits in the queue")


class TicketSummary(BaseModel):
    id: int
    status: TicketStatus
    topic: str
    urgency: str
    sentiment: str
    is_complaint: bool
    team: str
    handler: str | None
    rule: str
    customer_id: str | None
    channel: str | None
    escalated: bool
    linked_ticket_id: int | None = Field(description="the earlier ticket this one repeats")
    created_at: datetime
    updated_at: datetime
    due_at: datetime | None = Field(description="the next SLA deadline; null once resolved")
    sla_state: SlaState


class TicketMessageView(BaseModel):
    id: int
    created_at: datetime
    author: Literal["customer", "agent"]
    author_id: str | None
    kind: MessageKind
    masked_text: str
    sentiment: str | None
    sentiment_score: float | None
    is_complaint: bool | None
    urgency: str | None
    explanation: list[str]


class TicketEventView(BaseModel):
    at: datetime
    kind: str
    actor: str | None
    detail: dict[str, Any]


class SentimentPoint(BaseModel):
    message_id: int
    at: datetime
    sentiment: str
    score: float


class SentimentTrend(BaseModel):
    """How the customer's mood moved over their messages on this ticket."""

    direction: Literal["improving", "worsening", "steady"]
    change: float = Field(description="score of the last message minus score of the first")
    points: list[SentimentPoint]


class FeedbackView(BaseModel):
    id: int
    ticket_id: int
    message_id: int
    agent: str
    created_at: datetime
    labels: dict[str, Any] = Field(description="all labels of the message after the correction")
    corrected: list[str] = Field(description="the labels the agent changed")
    note: str | None


class TicketDetail(TicketSummary):
    routing: RoutingView
    sla: SlaStatus
    triage: TriageResult = Field(description="the triage result of the opening message")
    replies: list[ReplyDraft] = Field(description="reply drafts for the opening message")
    sentiment_trend: SentimentTrend
    messages: list[TicketMessageView]
    events: list[TicketEventView]
    feedback: list[FeedbackView]


class TicketPage(BaseModel):
    items: list[TicketSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


class MessageOutcome(BaseModel):
    """The effect of a follow-up on its ticket, with the reasons."""

    ticket: TicketDetail
    message: TicketMessageView
    action: FollowupAction
    explanation: list[str]
    replies: list[ReplyDraft] = Field(description="reply drafts for this follow-up")
    replayed: bool = Field(description="true when this message id had been received before")


class HandlerView(BaseModel):
    id: str
    name: str
    team: str
    skills: list[str]
    capacity: int
    load: int = Field(description="tickets assigned now")
    on_duty: bool
    active: bool = Field(description="false once removed from the routing file")


class TeamView(BaseModel):
    id: str
    name: str
    escalation_team: str | None
    supervisor: str | None
    queued: int = Field(description="tickets waiting for a handler")
    handlers: list[HandlerView]


class DutyChange(BaseModel):
    handler: HandlerView
    reassigned: list[int] = Field(description="tickets moved to another handler")
    queued: list[int] = Field(description="tickets that wait in the queue for lack of capacity")
    assigned_from_queue: list[int] = Field(description="queued tickets this change assigned")


class SlaReport(BaseModel):
    now: datetime
    breached: list[TicketSummary] = Field(description="open tickets past a deadline")
    at_risk: list[TicketSummary] = Field(description="open tickets close to a deadline")


class FeedbackRequest(BaseModel):
    """An agent's corrected labels; labels left out are taken as right."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200, description="who corrects")
    message_id: int | None = Field(
        default=None, description="the customer message corrected (default: the opening one)"
    )
    topic: str | None = None
    secondary_topics: list[str] | None = None
    sentiment: str | None = None
    urgency: str | None = None
    is_complaint: bool | None = None
    note: str | None = Field(default=None, max_length=2000)
