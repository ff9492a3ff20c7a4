"""The ticket store's tables as typed SQLAlchemy 2 models. Changing them needs a migration in
``triage/store/migrations/versions`` (a test compares the two)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, ForeignKey, Index, String, Text, TypeDecorator
from sqlalchemy import DateTime as SqlDateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Ticket statuses. A ticket waits in its team's queue until a handler with the skill has room.
QUEUED, ASSIGNED, RESOLVED = "queued", "assigned", "resolved"
STATUSES = (QUEUED, ASSIGNED, RESOLVED)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database: SQLite has no time zones, and
    one representation keeps comparisons identical on both backends."""

    impl = SqlDateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ticket store; use UTC-aware times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    escalation_team_id: Mapped[str | None] = mapped_column(String(64))
    supervisor_id: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(default=True)


class Handler(Base):
    __tablename__ = "handlers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    skills: Mapped[list[str]]
    capacity: Mapped[int]
    on_duty: Mapped[bool]
    active: Mapped[bool] = mapped_column(default=True, comment="listed in the routing file")
    last_assigned_at: Mapped[datetime | None]


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_team_status", "team_id", "status"),
        Index("ix_tickets_handler_status", "handler_id", "status"),
        Index("ix_tickets_customer_created", "customer_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    customer_id: Mapped[str | None] = mapped_column(String(200))
    customer_tier: Mapped[str | None] = mapped_column(String(50))
    channel: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16), index=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    handler_id: Mapped[str | None] = mapped_column(ForeignKey("handlers.id"))
    skill: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    route_reason: Mapped[str] = mapped_column(Text)
    assignment_reason: Mapped[str] = mapped_column(Text)
    notify: Mapped[list[str]]
    topic: Mapped[str] = mapped_column(String(64))
    sentiment: Mapped[str] = mapped_column(String(32))
    urgency: Mapped[str] = mapped_column(String(8), index=True)
    is_complaint: Mapped[bool]
    escalated: Mapped[bool] = mapped_column(default=False)
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_response_due_at: Mapped[datetime]
    resolution_due_at: Mapped[datetime]
    first_responded_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]

    messages: Mapped[list[TicketMessage]] = relationship(
        back_populates="ticket", order_by="TicketMessage.id"
    )
    events: Mapped[list[TicketEvent]] = relationship(order_by="TicketEvent.id")


class TicketMessage(Base):
    __tablename__ = "ticket_messages"
    __table_args__ = (
        # A client message id names one message per ticket, even when retries race.
        Index("ux_ticket_messages_client_id", "ticket_id", "client_message_id", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    created_at: Mapped[datetime]
    author: Mapped[str] = mapped_column(String(16), comment="customer or agent")
    author_id: Mapped[str | None] = mapped_column(String(200))
    client_message_id: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), comment="opening, follow-up kind or reply")
    masked_text: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(comment="the triage result, as JSON")
    explanation: Mapped[list[str]]

    ticket: Mapped[Ticket] = relationship(back_populates="messages")


class TicketEvent(Base):
    """The audit trail: every routing, assignment, status change and notification."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]]


class Feedback(Base):
    """An agent's corrected labels for one customer message."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("ticket_messages.id"), index=True)
    agent: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    labels: Mapped[dict[str, Any]] = mapped_column(comment="all labels after the correction")
    corrected: Mapped[list[str]] = mapped_column(comment="the labels the agent changed")
    note: Mapped[str | None] = mapped_column(Text)
