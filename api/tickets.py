"""Ticket endpoints: create (triage, store, route), list, read, follow-ups, status changes,
feedback, handlers' duty, team queues and the SLA report. Thin: the work is in
:class:`triage.store.service.TicketService`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status

from triage.api.deps import SettingsDep, TicketsDep
from triage.api.errors import ApiError
from triage.api.schemas import (
    AssignRequest,
    DutyRequest,
    ErrorDetail,
    ErrorResponse,
    FollowupRequest,
    StatusRequest,
    TicketQuery,
)
from triage.api.validation import check_messages
from triage.schemas import Message
from triage.store.schemas import (
    DutyChange,
    FeedbackRequest,
    FeedbackView,
    HandlerView,
    MessageOutcome,
    SlaReport,
    TeamView,
    TicketDetail,
    TicketPage,
)
from triage.store.service import InvalidFieldsError

router = APIRouter(prefix="/v1", tags=["tickets"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        404: "no such ticket, message or handler",
        409: "the request conflicts with the ticket's state or an earlier request",
        422: "the request is invalid",
        503: "the model or the ticket store is not available",
    }
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": described[code]} for code in codes
    }
    return responses


@contextmanager
def _named_by_loc(where: Literal["body", "query"]) -> Iterator[None]:
    """The store's :class:`InvalidFieldsError` as any input error is answered (422, its code
    and message), with details naming each field by its ``loc`` as request validation does."""
    try:
        yield
    except InvalidFieldsError as exc:
        details = [
            ErrorDetail(loc=[where, *p.field], msg=p.message, type=exc.code) for p in exc.problems
        ]
        raise ApiError(422, exc.code, str(exc), details) from exc


@router.post(
    "/tickets",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "a retry: the ticket made the first time"},
        **_errors(409, 422, 503),
    },
)
def create_ticket(
    message: Message,
    response: Response,
    settings: SettingsDep,
    tickets: TicketsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> TicketDetail:
    """Triage a message, store it as a ticket and route it to a team and a handler (or the
    team's queue). With an `Idempotency-Key` header, or else a message `id`, a retry returns
    the first ticket (200, `Idempotent-Replayed: true`) instead of creating another."""
    check_messages([message], settings, tickets.taxonomy, batch=False)
    ticket, created = tickets.create(message, idempotency_key)
    response.headers["Location"] = f"/v1/tickets/{ticket.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return ticket


@router.get("/tickets", responses=_errors(422, 503))
def list_tickets(query: Annotated[TicketQuery, Query()], tickets: TicketsDep) -> TicketPage:
    """Tickets matching every filter given, newest first, one page at a time. An unknown
    parameter, team, urgency or topic is a 422, not an empty or unfiltered page."""
    with _named_by_loc("query"):
        return tickets.list_tickets(query, limit=query.limit, offset=query.offset)


@router.get("/tickets/{ticket_id}", responses=_errors(404, 503))
def get_ticket(ticket_id: int, tickets: TicketsDep) -> TicketDetail:
    """A ticket with its routing, SLA, messages, sentiment trend, audit trail and feedback."""
    return tickets.get(ticket_id)


@router.post("/tickets/{ticket_id}/messages", responses=_errors(404, 409, 422, 503))
def add_message(
    ticket_id: int, request: FollowupRequest, settings: SettingsDep, tickets: TicketsDep
) -> MessageOutcome:
    """A follow-up from the customer (thanks or a confirmation never reopen; a new complaint
    escalates; anything else reopens a resolved ticket) or an agent's reply (the first one
    stops the first-response clock). A message `id` sent again with the same text answers
    `replayed: true`; with another text, 409 `idempotency_key_reused`."""
    check_messages([Message(text=request.text)], settings, tickets.taxonomy, batch=False)
    return tickets.add_message(
        ticket_id,
        request.text,
        author=request.author,
        author_id=request.author_id,
        client_message_id=request.id,
    )


@router.post("/tickets/{ticket_id}/assign", responses=_errors(404, 409, 503))
def assign_ticket(
    ticket_id: int, tickets: TicketsDep, request: AssignRequest | None = None
) -> TicketDetail:
    """Give the ticket to a handler (on duty and below capacity, else 409), or let routing pick
    one in its team when no handler is named. Every field is optional, so is the body."""
    request = request or AssignRequest()
    return tickets.assign(ticket_id, request.handler_id, request.actor)


@router.post("/tickets/{ticket_id}/resolve", responses=_errors(404, 409, 503))
def resolve_ticket(
    ticket_id: int, tickets: TicketsDep, request: StatusRequest | None = None
) -> TicketDetail:
    """Resolve the ticket (the reason is kept, masked, in its events); its handler's freed
    capacity goes to the team's queue. Every field is optional, so is the body."""
    request = request or StatusRequest()
    return tickets.resolve(ticket_id, request.actor, request.reason)


@router.post("/tickets/{ticket_id}/reopen", responses=_errors(404, 409, 503))
def reopen_ticket(
    ticket_id: int, tickets: TicketsDep, request: StatusRequest | None = None
) -> TicketDetail:
    """Reopen a resolved ticket: back to its last handler when they have room. Every field is
    optional, so is the body."""
    request = request or StatusRequest()
    return tickets.reopen(ticket_id, request.actor, request.reason)


@router.post(
    "/tickets/{ticket_id}/feedback",
    status_code=status.HTTP_201_CREATED,
    responses=_errors(404, 422, 503),
)
def add_feedback(ticket_id: int, request: FeedbackRequest, tickets: TicketsDep) -> FeedbackView:
    """An agent's corrected labels for a customer message, stored with who and when; `triage
    feedback export` turns them into training data."""
    with _named_by_loc("body"):
        return tickets.add_feedback(ticket_id, request)


@router.get("/handlers", responses=_errors(503))
def list_handlers(tickets: TicketsDep) -> list[HandlerView]:
    """Every handler with their load, capacity and duty."""
    return tickets.handlers()


@router.post("/handlers/{handler_id}/duty", responses=_errors(404, 503))
def set_duty(handler_id: str, request: DutyRequest, tickets: TicketsDep) -> DutyChange:
    """Put a handler on or off duty. Off duty hands their tickets to colleagues with room (or
    the queue); on duty takes tickets from the team's queue."""
    return tickets.set_duty(handler_id, request.on_duty, request.actor)


@router.get("/teams", responses=_errors(503))
def list_teams(tickets: TicketsDep) -> list[TeamView]:
    """Teams with their queue length and handlers."""
    return tickets.teams()


@router.get("/sla", responses=_errors(503))
def sla_report(tickets: TicketsDep) -> SlaReport:
    """Open tickets that breached a deadline, and those close to one."""
    return tickets.sla_report()
