"""The ticket service: triage, store and route a complaint; follow-ups, status changes, duty
changes and feedback. Each operation is one transaction; every change of who holds a ticket
happens with the teams involved locked (see :mod:`triage.store.database`), so concurrent workers
never give a handler more tickets than their capacity.

Model work (triage, reply drafts) happens before a transaction starts, so locks are held only
for the few statements that read loads and write the decision.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Select, func, literal, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from triage.errors import (
    CapacityError,
    ConfigError,
    IdempotencyKeyReusedError,
    InputError,
    NotFoundError,
    TransitionError,
)
from triage.followups import FollowupLexicon, classify_followup
from triage.pii import mask_pii
from triage.pipeline import TriagePipeline
from triage.routing import (
    Candidate,
    Choice,
    Facts,
    RouteDecision,
    Router,
    RoutingConfig,
    choose_handler,
)
from triage.schemas import Message, TriageResult
from triage.similarity import char_bigrams, cosine
from triage.sla import Clock, Clocks, SlaStatus, sla_status, utc_now
from triage.store.database import Database
from triage.store.models import (
    ASSIGNED,
    QUEUED,
    RESOLVED,
    Feedback,
    Handler,
    Team,
    Ticket,
    TicketEvent,
    TicketMessage,
    UTCDateTime,
)
from triage.store.schemas import (
    DutyChange,
    FeedbackRequest,
    FeedbackView,
    FollowupAction,
    HandlerView,
    MessageOutcome,
    RoutingView,
    SentimentPoint,
    SentimentTrend,
    SlaReport,
    TeamView,
    TicketDetail,
    TicketEventView,
    TicketMessageView,
    TicketPage,
    TicketStatus,
    TicketSummary,
)
from triage.text import normalize

logger = logging.getLogger("triage.store")

REPEAT_CONTACT_CUE = "repeat_contact"
# Change of sentiment score between the first and the last customer message that counts as a
# trend rather than noise.
TREND_THRESHOLD = 0.3
# Most recent tickets of one customer compared with a new message.
REPEAT_CANDIDATES = 50
FEEDBACK_LABELS = ("topic", "secondary_topics", "sentiment", "urgency", "is_complaint")


class TicketFilter(BaseModel):
    """Which tickets to list. A pydantic model so that the API's query (``TicketQuery``) is this
    with a page added, not a second list of the same fields."""

    model_config = ConfigDict(frozen=True)

    team: str | None = None
    status: TicketStatus | None = None
    urgency: str | None = None
    topic: str | None = None
    handler: str | None = None
    customer_id: str | None = None
    breached: bool | None = Field(
        default=None, description="true: a deadline was missed; false: none was"
    )


@dataclass(frozen=True)
class Problem:
    """A request field the store cannot use: where it is (``("secondary_topics", 0)``; empty:
    the request as a whole) and why."""

    field: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        """``secondary_topics[0]: ...``: the field as a client would write it."""
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.field)
        return f"{where.removeprefix('.')}: {self.message}" if where else self.message


class InvalidFieldsError(InputError):
    """Request fields the store cannot use, kept as :class:`Problem` so that the API can name
    each by its ``loc``, as request validation does."""

    def __init__(self, what: str, problems: Sequence[Problem]):
        super().__init__(f"{what}: " + "; ".join(map(str, problems)))
        self.problems = tuple(problems)


def _refuse(what: str, problems: Sequence[Problem]) -> None:
    if problems:
        raise InvalidFieldsError(what, problems)


@dataclass(frozen=True)
class _Earlier:
    """A customer's earlier ticket, as repeated-contact detection compares it."""

    id: int
    team: str
    handler: str | None
    texts: tuple[str, ...]


def _request_hash(message: Message) -> str:
    return hashlib.sha256(message.model_dump_json().encode("utf-8")).hexdigest()


def _masked(text: str) -> str:
    """An agent's free text as it may be stored: normalised, personal data masked."""
    return mask_pii(normalize(text)).text


def _due(ticket: Ticket) -> tuple[datetime, datetime]:
    return ticket.first_response_due_at, ticket.resolution_due_at


def _event(ticket: Ticket, at: datetime, kind: str, actor: str | None, /, **detail: Any) -> None:
    ticket.events.append(TicketEvent(at=at, kind=kind, actor=actor, detail=detail))


class TicketService:
    """Tickets over a :class:`Database`, routed by a :class:`Router`; time comes from ``clock``
    so that SLA decisions can be tested at fixed moments."""

    def __init__(
        self,
        database: Database,
        pipeline: TriagePipeline,
        router: Router,
        followups: FollowupLexicon,
        clock: Clock = utc_now,
    ):
        self.db = database
        self.pipeline = pipeline
        self.router = router
        self.followups = followups
        self.clock = clock
        self.taxonomy = pipeline.taxonomy
        if REPEAT_CONTACT_CUE not in pipeline.lexicon.kinds:
            raise ConfigError(
                f"the cue lexicon has no {REPEAT_CONTACT_CUE!r} kind, which repeated contact "
                f"raises urgency with (kinds: {sorted(pipeline.lexicon.kinds)})"
            )

    @property
    def config(self) -> RoutingConfig:
        return self.router.config

    # --- roster ---------------------------------------------------------------------------

    def sync_roster(self) -> None:
        """Make teams and handlers match the routing file: new ones are added, changed ones
        updated (``on_duty`` included), missing ones deactivated. Tickets of handlers who are
        no longer available move on; queues are served with any new capacity."""
        now = self.clock()
        with self.db.transaction() as session:
            self.db.setup_lock(session.connection())
            teams = {t.id: t for t in session.scalars(select(Team))}
            for team_id, spec in self.config.teams.items():
                team = teams.get(team_id) or Team(id=team_id)
                team.name, team.escalation_team_id = spec.name, spec.escalation
                team.supervisor_id, team.active = spec.supervisor, True
                session.add(team)
            for team_id, team in teams.items():
                team.active = team_id in self.config.teams
            session.flush()
            handlers = {h.id: h for h in session.scalars(select(Handler))}
            for member in self.config.handlers:
                handler = handlers.get(member.id) or Handler(id=member.id)
                handler.name, handler.team_id, handler.skills = (
                    member.name,
                    member.team,
                    member.skills,
                )
                handler.capacity, handler.on_duty, handler.active = (
                    member.capacity,
                    member.on_duty,
                    True,
                )
                session.add(handler)
            for handler_id, handler in handlers.items():
                if handler_id not in self.config.handler_by_id:
                    handler.active = handler.on_duty = False
            session.flush()
            self.db.lock_teams(session, list(self.config.teams))
            for handler in session.scalars(select(Handler)).all():
                if not (handler.active and handler.on_duty):
                    self._move_tickets_of(session, handler, now, actor="routing-sync")
            for team_id in self.config.teams:
                self._drain(session, team_id, now, actor="routing-sync")

    # --- creation -------------------------------------------------------------------------

    def create(
        self, message: Message, idempotency_key: str | None = None
    ) -> tuple[TicketDetail, bool]:
        """Triage, store and route a message; returns the ticket and whether it is new.

        With an idempotency key (or, without one, a message id) a retry returns the ticket made
        the first time; the same key with a different message is a conflict."""
        customer_id = message.customer.id if message.customer else None
        key = idempotency_key or (
            f"message:{customer_id or ''}:{message.id}" if message.id else None
        )
        digest = _request_hash(message)
        if key is not None:
            with self.db.transaction() as session:
                existing = self._by_key(session, key, digest)
                if existing is not None:
                    return self._detail(session, existing), False
        with self.db.transaction() as session:
            earlier = self._earlier_tickets(session, customer_id)

        prepared = self.pipeline.preprocess(message)
        link = self._repeat_of(prepared.masked_text, earlier)
        route_note = ""
        if link is not None:
            similarity, linked = link
            cue = self.pipeline.metadata_cue(
                REPEAT_CONTACT_CUE, f"ticket {linked.id} (similarity {similarity:.2f})"
            )
            # A cue like any other: it sets an urgency floor and the drafts see the result.
            prepared = replace(prepared, cues=[*prepared.cues, cue])
        result = self.pipeline.run_prepared([prepared], replies=True)[0]
        decision = self.router.decide(Facts.of(result, message.customer))
        preferred = decision.preferred_handler
        if link is not None and preferred is None and link[1].team == decision.team:
            preferred = link[1].handler
            route_note = (
                f"; prefers {preferred}, who holds ticket {link[1].id}" if preferred else ""
            )

        now = self.clock()
        first_due, resolution_due = self.config.sla.deadlines(result.urgency, now)
        ticket = Ticket(
            idempotency_key=key,
            request_hash=digest,
            customer_id=customer_id,
            customer_tier=message.customer.tier if message.customer else None,
            channel=message.channel,
            status=QUEUED,
            team_id=decision.team,
            skill=decision.skill,
            rule=decision.rule,
            route_reason=decision.reason + route_note,
            assignment_reason="",
            notify=list(decision.notify),
            topic=result.topic,
            sentiment=result.sentiment,
            urgency=result.urgency,
            is_complaint=result.is_complaint,
            escalated=False,
            linked_ticket_id=link[1].id if link else None,
            created_at=now,
            updated_at=now,
            first_response_due_at=first_due,
            resolution_due_at=resolution_due,
        )
        ticket.messages.append(
            TicketMessage(
                created_at=now,
                author="customer",
                author_id=customer_id,
                client_message_id=message.id,
                kind="opening",
                masked_text=result.masked_text,
                result=result.model_dump(mode="json"),
                explanation=list(result.explanation),
            )
        )
        _event(ticket, now, "created", customer_id, channel=message.channel)
        if link is not None:
            _event(ticket, now, "linked", None, ticket=link[1].id, similarity=round(link[0], 3))
        _event(
            ticket,
            now,
            "routed",
            None,
            rule=decision.rule,
            team=decision.team,
            reason=ticket.route_reason,
        )
        for supervisor in decision.notify:
            _event(ticket, now, "notified", None, supervisor=supervisor, rule=decision.rule)
        with self.db.transaction() as session:
            self.db.lock_teams(session, [decision.team])
            try:
                with session.begin_nested():
                    session.add(ticket)
                    session.flush()
            except IntegrityError:
                # Another request with the same key committed first: answer with its ticket.
                assert key is not None
                existing = self._by_key(session, key, digest)
                if existing is None:
                    raise
                return self._detail(session, existing), False
            self._assign(session, ticket, preferred, now, actor=None)
            return self._detail(session, ticket), True

    def _by_key(self, session: Session, key: str, digest: str) -> Ticket | None:
        ticket = session.scalar(select(Ticket).where(Ticket.idempotency_key == key))
        if ticket is not None and ticket.request_hash != digest:
            raise IdempotencyKeyReusedError(
                f"idempotency key {key!r} was used for ticket {ticket.id} with a different "
                "message; use a new key for a new message"
            )
        return ticket

    def _earlier_tickets(self, session: Session, customer_id: str | None) -> list[_Earlier]:
        """The customer's open tickets and those created within the repeat-contact window."""
        if customer_id is None:
            return []
        since = self.clock() - self.config.repeat_contact.window
        tickets = session.scalars(
            select(Ticket)
            .where(
                Ticket.customer_id == customer_id,
                or_(Ticket.status != RESOLVED, Ticket.created_at >= since),
            )
            .order_by(Ticket.created_at.desc())
            .limit(REPEAT_CANDIDATES)
            .options(selectinload(Ticket.messages))
        )
        return [
            _Earlier(
                t.id,
                t.team_id,
                t.handler_id,
                tuple(m.masked_text for m in t.messages if m.author == "customer"),
            )
            for t in tickets
        ]

    def _repeat_of(self, text: str, earlier: Sequence[_Earlier]) -> tuple[float, _Earlier] | None:
        """The most similar earlier ticket when it reaches the configured threshold."""
        grams = char_bigrams(text)
        scored = [
            (max(cosine(grams, char_bigrams(t)) for t in ticket.texts), ticket)
            for ticket in earlier
            if ticket.texts
        ]
        best = max(scored, key=lambda pair: pair[0], default=None)
        if best is None or best[0] < self.config.repeat_contact.threshold:
            return None
        return best

    # --- assignment -----------------------------------------------------------------------

    def _candidates(self, session: Session, team_id: str) -> dict[str, tuple[Handler, Candidate]]:
        handlers = list(
            session.scalars(select(Handler).where(Handler.team_id == team_id, Handler.active))
        )
        loads = self._loads(session, [h.id for h in handlers])
        return {
            h.id: (
                h,
                Candidate(
                    h.id,
                    frozenset(h.skills),
                    h.capacity,
                    loads.get(h.id, 0),
                    h.on_duty,
                    h.last_assigned_at,
                ),
            )
            for h in handlers
        }

    @staticmethod
    def _loads(session: Session, handler_ids: Sequence[str]) -> dict[str, int]:
        rows = session.execute(
            select(Ticket.handler_id, func.count())
            .where(Ticket.status == ASSIGNED, Ticket.handler_id.in_(handler_ids))
            .group_by(Ticket.handler_id)
        )
        return {handler: count for handler, count in rows if handler is not None}

    def _choose(self, session: Session, ticket: Ticket, preferred: str | None) -> Choice:
        candidates = self._candidates(session, ticket.team_id)
        return choose_handler([c for _, c in candidates.values()], ticket.skill, preferred)

    def _assign(
        self,
        session: Session,
        ticket: Ticket,
        preferred: str | None,
        now: datetime,
        actor: str | None,
        *,
        queue_event: bool = True,
    ) -> bool:
        """Give the ticket to a handler of its team, or queue it; True when assigned. The
        caller holds the team's lock."""
        choice = self._choose(session, ticket, preferred)
        ticket.updated_at = now
        if choice.handler is None:
            if queue_event or ticket.status != QUEUED:
                ticket.status, ticket.handler_id = QUEUED, None
                ticket.assignment_reason = f"waiting in the {ticket.team_id} queue: {choice.reason}"
                _event(ticket, now, "queued", actor, team=ticket.team_id, reason=choice.reason)
            return False
        handler = session.get_one(Handler, choice.handler)
        ticket.status, ticket.handler_id = ASSIGNED, handler.id
        ticket.assignment_reason = f"assigned to {handler.id}: {choice.reason}"
        handler.last_assigned_at = now
        session.flush()
        _event(ticket, now, "assigned", actor, handler=handler.id, reason=choice.reason)
        return True

    def _drain(self, session: Session, team_id: str, now: datetime, actor: str | None) -> list[int]:
        """Assign queued tickets of a team, earliest deadline first, while handlers have room."""
        assigned = []
        queued = session.scalars(
            select(Ticket)
            .where(Ticket.team_id == team_id, Ticket.status == QUEUED)
            .order_by(Ticket.first_response_due_at, Ticket.id)
        ).all()
        for ticket in queued:
            candidates = self._candidates(session, team_id)
            if not any(c.on_duty and c.load < c.capacity for _, c in candidates.values()):
                break
            if self._assign(session, ticket, None, now, actor, queue_event=False):
                assigned.append(ticket.id)
        return assigned

    def _release(self, session: Session, ticket: Ticket) -> str | None:
        """Take the ticket from its handler; returns the team whose capacity was freed."""
        if ticket.status != ASSIGNED:
            return None
        ticket.status, ticket.handler_id = QUEUED, None
        session.flush()
        return ticket.team_id

    def _move_tickets_of(
        self, session: Session, handler: Handler, now: datetime, actor: str | None
    ) -> tuple[list[int], list[int]]:
        """Reassign every ticket of an unavailable handler within their team, or queue it."""
        moved: list[int] = []
        queued: list[int] = []
        tickets = session.scalars(
            select(Ticket)
            .where(Ticket.handler_id == handler.id, Ticket.status == ASSIGNED)
            .order_by(Ticket.first_response_due_at, Ticket.id)
            .options(selectinload(Ticket.events))
        ).all()
        for ticket in tickets:
            self._release(session, ticket)
            _event(ticket, now, "unassigned", actor, handler=handler.id, reason="off duty")
            if self._assign(session, ticket, None, now, actor):
                moved.append(ticket.id)
            else:
                queued.append(ticket.id)
        return moved, queued

    # --- reading --------------------------------------------------------------------------

    def _load(self, session: Session, ticket_id: int, *, lock: bool = False) -> Ticket:
        """The ticket with its messages and events; ``lock`` holds its row until the transaction
        ends (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's BEGIN IMMEDIATE already
        serialises), for a change that reads what a concurrent one may be writing."""
        ticket = session.get(
            Ticket,
            ticket_id,
            options=[selectinload(Ticket.messages), selectinload(Ticket.events)],
            with_for_update=lock,
        )
        if ticket is None:
            raise NotFoundError(f"ticket {ticket_id} does not exist")
        return ticket

    def get(self, ticket_id: int) -> TicketDetail:
        with self.db.transaction() as session:
            return self._detail(session, self._load(session, ticket_id))

    def _breached(self, now: datetime) -> ColumnElement[bool]:
        at = literal(now, UTCDateTime())
        return or_(
            func.coalesce(Ticket.first_responded_at, at) > Ticket.first_response_due_at,
            func.coalesce(Ticket.resolved_at, at) > Ticket.resolution_due_at,
        )

    def _filtered(self, query: Select[Any], filters: TicketFilter, now: datetime) -> Select[Any]:
        for column, value in (
            (Ticket.team_id, filters.team),
            (Ticket.status, filters.status),
            (Ticket.urgency, filters.urgency),
            (Ticket.topic, filters.topic),
            (Ticket.handler_id, filters.handler),
            (Ticket.customer_id, filters.customer_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if filters.breached is not None:
            breached = self._breached(now)
            query = query.where(breached if filters.breached else not_(breached))
        return query

    def _filter_problems(self, session: Session, filters: TicketFilter) -> list[Problem]:
        """Filters naming a team, urgency or topic that does not exist: a typo would otherwise
        read as "no such tickets". Teams are those of the store, so that the tickets of a team
        removed from the routing file can still be listed."""
        allowed = {
            "team": list(session.scalars(select(Team.id).order_by(Team.id))),
            "urgency": self.taxonomy.urgency_ids,
            "topic": self.taxonomy.topic_ids,
        }
        return [
            Problem((name,), f"expected one of {values} (got {value!r})")
            for name, values in allowed.items()
            if (value := getattr(filters, name)) is not None and value not in values
        ]

    def list_tickets(self, filters: TicketFilter, limit: int = 50, offset: int = 0) -> TicketPage:
        """Tickets matching every given filter, newest first; an unknown team, urgency or topic
        is an :class:`InvalidFieldsError`, not an empty page."""
        now = self.clock()
        with self.db.transaction() as session:
            _refuse("filters", self._filter_problems(session, filters))
            total = session.scalar(
                self._filtered(select(func.count()).select_from(Ticket), filters, now)
            )
            tickets = session.scalars(
                self._filtered(select(Ticket), filters, now)
                .order_by(Ticket.created_at.desc(), Ticket.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            items = [self._summary(t, now) for t in tickets]
        total = total or 0
        following = offset + len(items)
        return TicketPage(
            items=items,
            total=total,
            limit=limit,
            offset=offset,
            next_offset=following if following < total else None,
        )

    def sla_report(self) -> SlaReport:
        """Open tickets past a deadline, and those close to one, the most urgent first."""
        now = self.clock()
        with self.db.transaction() as session:
            tickets = session.scalars(select(Ticket).where(Ticket.status != RESOLVED)).all()
            summaries = [self._summary(t, now) for t in tickets]
        ordered = sorted(summaries, key=lambda s: (s.due_at or now, s.id))
        return SlaReport(
            now=now,
            breached=[s for s in ordered if s.sla_state == "breached"],
            at_risk=[s for s in ordered if s.sla_state == "at_risk"],
        )

    def _sla(self, ticket: Ticket, now: datetime) -> SlaStatus:
        clocks = Clocks(
            ticket.created_at,
            ticket.first_response_due_at,
            ticket.resolution_due_at,
            ticket.first_responded_at,
            ticket.resolved_at,
        )
        return sla_status(clocks, now, self.config.sla.at_risk_fraction)

    def _summary(self, ticket: Ticket, now: datetime) -> TicketSummary:
        sla = self._sla(ticket, now)
        return TicketSummary(
            id=ticket.id,
            status=ticket.status,  # type: ignore[arg-type]
            topic=ticket.topic,
            urgency=ticket.urgency,
            sentiment=ticket.sentiment,
            is_complaint=ticket.is_complaint,
            team=ticket.team_id,
            handler=ticket.handler_id,
            rule=ticket.rule,
            customer_id=ticket.customer_id,
            channel=ticket.channel,
            escalated=ticket.escalated,
            linked_ticket_id=ticket.linked_ticket_id,
            created_at=ticket.created_at,
            updated_at=ticket.updated_at,
            due_at=sla.due_at,
            sla_state=sla.state,
        )

    def _detail(self, session: Session, ticket: Ticket) -> TicketDetail:
        now = self.clock()
        session.flush()
        feedback = session.scalars(
            select(Feedback).where(Feedback.ticket_id == ticket.id).order_by(Feedback.id)
        ).all()
        opening = ticket.messages[0]
        triage = TriageResult.model_validate(opening.result)
        summary = self._summary(ticket, now)
        return TicketDetail(
            **summary.model_dump(),
            routing=RoutingView(
                rule=ticket.rule,
                team=ticket.team_id,
                skill=ticket.skill,
                handler=ticket.handler_id,
                notify=ticket.notify,
                reason=ticket.route_reason,
                assignment=ticket.assignment_reason,
            ),
            sla=self._sla(ticket, now),
            triage=triage,
            replies=triage.replies,
            sentiment_trend=_trend(ticket.messages),
            messages=[_message_view(m) for m in ticket.messages],
            events=[
                TicketEventView(at=e.at, kind=e.kind, actor=e.actor, detail=e.detail)
                for e in ticket.events
            ],
            feedback=[_feedback_view(f) for f in feedback],
        )

    def handlers(self) -> list[HandlerView]:
        with self.db.transaction() as session:
            handlers = session.scalars(select(Handler).order_by(Handler.team_id, Handler.id)).all()
            loads = self._loads(session, [h.id for h in handlers])
            return [_handler_view(h, loads.get(h.id, 0)) for h in handlers]

    def teams(self) -> list[TeamView]:
        views = self.handlers()
        with self.db.transaction() as session:
            rows = session.execute(
                select(Ticket.team_id, func.count())
                .where(Ticket.status == QUEUED)
                .group_by(Ticket.team_id)
            )
            queued = {team: count for team, count in rows}
            teams = session.scalars(select(Team).where(Team.active).order_by(Team.id)).all()
            return [
                TeamView(
                    id=t.id,
                    name=t.name,
                    escalation_team=t.escalation_team_id,
                    supervisor=t.supervisor_id,
                    queued=queued.get(t.id, 0),
                    handlers=[h for h in views if h.team == t.id],
                )
                for t in teams
            ]

    # --- status changes -------------------------------------------------------------------

    def assign(self, ticket_id: int, handler_id: str | None, actor: str | None) -> TicketDetail:
        """Give a ticket to a named handler (who must be on duty and below capacity), or, with
        no handler named, to whoever routing picks in its team."""
        now = self.clock()
        with self.db.transaction() as session:
            ticket = self._load(session, ticket_id)
            if ticket.status == RESOLVED:
                raise TransitionError(f"ticket {ticket_id} is resolved; reopen it first")
            if handler_id is None:
                self.db.lock_teams(session, [ticket.team_id])
                if ticket.status == QUEUED:
                    self._assign(session, ticket, None, now, actor)
                return self._detail(session, ticket)
            handler = session.get(Handler, handler_id)
            if handler is None or not handler.active:
                raise NotFoundError(f"handler {handler_id!r} does not exist")
            self.db.lock_teams(session, [ticket.team_id, handler.team_id])
            if ticket.handler_id == handler.id:
                return self._detail(session, ticket)
            load = self._loads(session, [handler.id]).get(handler.id, 0)
            if not handler.on_duty or load >= handler.capacity:
                state = (
                    "off duty"
                    if not handler.on_duty
                    else f"at capacity ({load}/{handler.capacity})"
                )
                raise CapacityError(f"handler {handler.id} is {state}")
            freed = self._release(session, ticket)
            ticket.team_id = handler.team_id
            ticket.skill = self.router.skill_in(handler.team_id, ticket.topic)
            ticket.status, ticket.handler_id, ticket.updated_at = ASSIGNED, handler.id, now
            ticket.assignment_reason = f"assigned to {handler.id} by {actor or 'an agent'}"
            handler.last_assigned_at = now
            session.flush()
            _event(ticket, now, "assigned", actor, handler=handler.id, reason="manual")
            if freed is not None:
                self._drain(session, freed, now, actor)
            return self._detail(session, ticket)

    def resolve(self, ticket_id: int, actor: str | None, reason: str | None = None) -> TicketDetail:
        """Resolve the ticket (the reason is kept, masked, in the audit trail); the handler's
        freed capacity goes to the team's queue."""
        now = self.clock()
        with self.db.transaction() as session:
            ticket = self._load(session, ticket_id)
            if ticket.status == RESOLVED:
                raise TransitionError(f"ticket {ticket_id} is already resolved")
            self.db.lock_teams(session, [ticket.team_id])
            was_assigned = ticket.status == ASSIGNED
            ticket.status, ticket.resolved_at, ticket.updated_at = RESOLVED, now, now
            session.flush()
            masked = (_masked(reason) if reason else "") or None
            _event(ticket, now, "resolved", actor, handler=ticket.handler_id, reason=masked)
            if was_assigned:
                self._drain(session, ticket.team_id, now, actor)
            return self._detail(session, ticket)

    def reopen(self, ticket_id: int, actor: str | None, reason: str | None = None) -> TicketDetail:
        now = self.clock()
        with self.db.transaction() as session:
            ticket = self._load(session, ticket_id)
            if ticket.status != RESOLVED:
                raise TransitionError(f"ticket {ticket_id} is {ticket.status}, not resolved")
            self.db.lock_teams(session, [ticket.team_id])
            reason = (_masked(reason) if reason else "") or "reopened by an agent"
            self._reopen(session, ticket, now, actor, reason)
            return self._detail(session, ticket)

    def _reopen(
        self, session: Session, ticket: Ticket, now: datetime, actor: str | None, reason: str
    ) -> None:
        """Back to the handler who resolved it when they have room, else as routing decides."""
        previous = ticket.handler_id
        ticket.resolved_at, ticket.status = None, QUEUED
        _event(ticket, now, "reopened", actor, reason=reason)
        self._assign(session, ticket, previous, now, actor)

    def set_duty(self, handler_id: str, on_duty: bool, actor: str | None) -> DutyChange:
        """Going off duty hands the handler's tickets to colleagues (or the queue); coming on
        duty takes tickets from the team's queue."""
        now = self.clock()
        with self.db.transaction() as session:
            handler = session.get(Handler, handler_id)
            if handler is None or not handler.active:
                raise NotFoundError(f"handler {handler_id!r} does not exist")
            self.db.lock_teams(session, [handler.team_id])
            handler.on_duty = on_duty
            session.flush()
            moved: list[int] = []
            queued: list[int] = []
            drained: list[int] = []
            if on_duty:
                drained = self._drain(session, handler.team_id, now, actor)
            else:
                moved, queued = self._move_tickets_of(session, handler, now, actor)
            load = self._loads(session, [handler.id]).get(handler.id, 0)
            return DutyChange(
                handler=_handler_view(handler, load),
                reassigned=moved,
                queued=queued,
                assigned_from_queue=drained,
            )

    # --- follow-ups -----------------------------------------------------------------------

    def add_message(
        self,
        ticket_id: int,
        text: str,
        *,
        author: str = "customer",
        author_id: str | None = None,
        client_message_id: str | None = None,
    ) -> MessageOutcome:
        """Record a message on a ticket. An agent's message stops the first-response clock. A
        customer's follow-up is triaged and classified: thanks or a confirmation never reopen,
        a new complaint escalates, anything else reopens a resolved ticket.

        A ``client_message_id`` sent again with the same text replays the first outcome; with
        another text it is a conflict, as an idempotency key is for tickets."""
        with self.db.transaction() as session:
            ticket = self._load(session, ticket_id)
            if client_message_id is not None:
                replay = self._replayed(session, ticket, client_message_id, author, _masked(text))
                if replay is not None:
                    return replay
            channel = ticket.channel
        if author == "agent":
            return self._agent_reply(ticket_id, text, author_id, client_message_id)
        result = self.pipeline([Message(text=text, channel=channel)], replies=True)[0]
        decision = classify_followup(result, self.followups, self.taxonomy.urgency_ids[0])
        now = self.clock()
        with self.db.transaction() as session:
            ticket = self._load(session, ticket_id)
            message = TicketMessage(
                created_at=now,
                author="customer",
                author_id=author_id or ticket.customer_id,
                client_message_id=client_message_id,
                kind=decision.kind,
                masked_text=result.masked_text,
                result=result.model_dump(mode="json"),
                explanation=[f"follow-up: {decision.kind}", *decision.reasons],
            )
            replay = self._insert_message(session, ticket, message)
            if replay is not None:
                return replay
            ticket.updated_at = now
            _event(ticket, now, "message", author_id, kind=decision.kind)
            action: FollowupAction = "none"
            if decision.kind == "new_complaint":
                self._escalate(session, ticket, result, now, author_id)
                action = "escalated"
            elif decision.kind == "update" and ticket.status == RESOLVED:
                self.db.lock_teams(session, [ticket.team_id])
                self._reopen(session, ticket, now, author_id, "the customer wrote again")
                action = "reopened"
            # Assigned, not appended: the message is stored already, and an in-place change
            # of a JSON column is not saved.
            message.explanation = [*message.explanation, _action_text(action, ticket)]
            return self._outcome(session, ticket, message, action, replies=result)

    def _agent_reply(
        self, ticket_id: int, text: str, author_id: str | None, client_message_id: str | None
    ) -> MessageOutcome:
        masked = _masked(text)
        if not masked:
            raise InputError("text is empty or whitespace only (after removing markup)")
        now = self.clock()
        with self.db.transaction() as session:
            ticket = self._load(session, ticket_id)
            first = ticket.first_responded_at is None
            explanation = ["agent reply"]
            if first:
                explanation.append("first response: the first-response clock stops")
            message = TicketMessage(
                created_at=now,
                author="agent",
                author_id=author_id,
                client_message_id=client_message_id,
                kind="agent_reply",
                masked_text=masked,
                result=None,
                explanation=explanation,
            )
            replay = self._insert_message(session, ticket, message)
            if replay is not None:
                return replay
            if first:
                ticket.first_responded_at = now
            ticket.updated_at = now
            _event(ticket, now, "first_response" if first else "message", author_id)
            return self._outcome(session, ticket, message, "first_response" if first else "none")

    def _replayed(
        self, session: Session, ticket: Ticket, client_message_id: str, author: str, masked: str
    ) -> MessageOutcome | None:
        """The replay of the ticket's message with this client id, None when there is none; the
        id with another author or text (compared masked, as stored) is a conflict."""
        earlier = session.scalar(
            select(TicketMessage).where(
                TicketMessage.ticket_id == ticket.id,
                TicketMessage.client_message_id == client_message_id,
            )
        )
        if earlier is None:
            return None
        if (earlier.author, earlier.masked_text) != (author, masked):
            raise IdempotencyKeyReusedError(
                f"message id {client_message_id!r} was used for message {earlier.id} of ticket "
                f"{ticket.id} with a different text; use a new id for a new message"
            )
        return self._outcome(session, ticket, earlier, "none", replayed=True)

    def _insert_message(
        self, session: Session, ticket: Ticket, message: TicketMessage
    ) -> MessageOutcome | None:
        """Store the message before anything else changes; None when stored. When a concurrent
        request stored the same client id first (the unique index decides), that message's
        replay, or a conflict when the text differs."""
        try:
            with session.begin_nested():
                ticket.messages.append(message)
                session.flush()
        except IntegrityError:
            if message.client_message_id is None:
                raise
            replay = self._replayed(
                session, ticket, message.client_message_id, message.author, message.masked_text
            )
            if replay is None:
                raise
            return replay
        return None

    def _escalate(
        self,
        session: Session,
        ticket: Ticket,
        result: TriageResult,
        now: datetime,
        actor: str | None,
    ) -> None:
        """A new complaint: reopen if resolved, raise urgency (never lower it; deadlines from
        :meth:`triage.sla.SlaPolicy.raised`, so never already past), and move the ticket to its
        team's escalation team."""
        target = self.router.escalation_of(ticket.team_id) or ticket.team_id
        source = ticket.team_id
        self.db.lock_teams(session, [source, target])
        rank = self.taxonomy.urgency_rank
        if rank(result.urgency) < rank(ticket.urgency):
            ticket.first_response_due_at, ticket.resolution_due_at = self.config.sla.raised(
                result.urgency, now, _due(ticket)
            )
            _event(ticket, now, "urgency_raised", actor, old=ticket.urgency, new=result.urgency)
            ticket.urgency = result.urgency
        if ticket.status == RESOLVED:
            ticket.resolved_at, ticket.status = None, QUEUED
            _event(ticket, now, "reopened", actor, reason="new complaint")
        ticket.escalated = True
        freed = None
        preferred = ticket.handler_id
        if target != source:
            freed = self._release(session, ticket)
            ticket.team_id, preferred = target, None
            ticket.skill = self.router.skill_in(target, ticket.topic)
        _event(ticket, now, "escalated", actor, team=target, from_team=source)
        supervisor = self.config.teams[target].supervisor
        if supervisor and supervisor not in ticket.notify:
            ticket.notify = [*ticket.notify, supervisor]
            _event(ticket, now, "notified", None, supervisor=supervisor, reason="escalation")
        if ticket.status != ASSIGNED:
            self._assign(session, ticket, preferred, now, actor)
        if freed is not None:
            self._drain(session, freed, now, actor)

    def _outcome(
        self,
        session: Session,
        ticket: Ticket,
        message: TicketMessage,
        action: FollowupAction,
        *,
        replies: TriageResult | None = None,
        replayed: bool = False,
    ) -> MessageOutcome:
        session.flush()
        return MessageOutcome(
            ticket=self._detail(session, ticket),
            message=_message_view(message),
            action=action,
            explanation=list(message.explanation),
            replies=replies.replies if replies is not None else [],
            replayed=replayed,
        )

    # --- feedback -------------------------------------------------------------------------

    def _feedback_problems(self, request: FeedbackRequest) -> list[Problem]:
        """Labels the taxonomy does not list, or no label at all."""
        corrections = _corrections(request)
        if not corrections:
            return [Problem((), f"expected at least one of {list(FEEDBACK_LABELS)}")]
        allowed = {
            "topic": self.taxonomy.topic_ids,
            "sentiment": self.taxonomy.sentiments,
            "urgency": self.taxonomy.urgency_ids,
        }
        problems = [
            Problem((name,), f"expected one of {values} (got {corrections[name]!r})")
            for name, values in allowed.items()
            if name in corrections and corrections[name] not in values
        ]
        problems += [
            Problem(
                ("secondary_topics", i),
                f"expected one of {self.taxonomy.topic_ids} (got {topic!r})",
            )
            for i, topic in enumerate(corrections.get("secondary_topics") or [])
            if topic not in self.taxonomy.topic_ids
        ]
        return problems

    def add_feedback(self, ticket_id: int, request: FeedbackRequest) -> FeedbackView:
        """Store an agent's corrected labels for a customer message. Labels left out keep their
        latest value (an earlier correction, else the model's), so a later correction never
        undoes an earlier one. Corrections of the opening message also correct the ticket."""
        _refuse("feedback", self._feedback_problems(request))
        corrections = _corrections(request)
        now = self.clock()
        with self.db.transaction() as session:
            # Locked before the latest correction is read: two agents correcting different
            # labels at once must not both build on the same earlier labels.
            ticket = self._load(session, ticket_id, lock=True)
            customer_messages = [m for m in ticket.messages if m.author == "customer"]
            if request.message_id is None:
                message = customer_messages[0]
            else:
                found = [m for m in customer_messages if m.id == request.message_id]
                if not found:
                    raise NotFoundError(
                        f"ticket {ticket_id} has no customer message {request.message_id}"
                    )
                message = found[0]
            assert message.result is not None
            latest = session.scalar(
                select(Feedback.labels)
                .where(Feedback.message_id == message.id)
                .order_by(Feedback.id.desc())
                .limit(1)
            )
            previous = latest or {name: message.result[name] for name in FEEDBACK_LABELS}
            labels = previous | corrections
            labels["secondary_topics"] = [
                t for t in labels["secondary_topics"] if t != labels["topic"]
            ]
            feedback = Feedback(
                ticket_id=ticket.id,
                message_id=message.id,
                agent=request.agent,
                created_at=now,
                labels=labels,
                corrected=sorted(corrections),
                note=(_masked(request.note) if request.note else "") or None,
            )
            session.add(feedback)
            _event(ticket, now, "feedback", request.agent, corrected=sorted(corrections))
            if message is customer_messages[0]:
                result = TriageResult.model_validate(message.result)
                self._correct_ticket(session, ticket, result, previous, labels, now, request.agent)
            session.flush()
            return _feedback_view(feedback)

    def _correct_ticket(
        self,
        session: Session,
        ticket: Ticket,
        result: TriageResult,
        previous: dict[str, Any],
        labels: dict[str, Any],
        now: datetime,
        agent: str,
    ) -> None:
        """The ticket follows its opening message's corrected labels: deadlines as for an
        escalation when urgency rises, from creation (never earlier) when it falls; and when
        the corrected labels route elsewhere than the ticket's current rule, team and skill,
        routing as a new ticket gets it (rules and their notifications included), unless it is
        resolved. Compared with where the ticket is, not with the labels before, so that a
        correction made while it was resolved applies at the next one. A ticket escalated by
        a follow-up keeps its team and its raised urgency: correcting the opening message does
        not undo the follow-up; one a person assigned moves only when the correction changes
        where its labels route."""
        ticket.topic, ticket.sentiment = labels["topic"], labels["sentiment"]
        ticket.is_complaint = labels["is_complaint"]
        rank = self.taxonomy.urgency_rank
        urgency = labels["urgency"]
        if ticket.escalated:
            urgency = min(urgency, ticket.urgency, key=rank)
        if urgency != ticket.urgency:
            sla = self.config.sla
            ticket.first_response_due_at, ticket.resolution_due_at = (
                sla.raised(urgency, now, _due(ticket))
                if rank(urgency) < rank(ticket.urgency)
                else sla.lowered(urgency, ticket.created_at, _due(ticket))
            )
            _event(ticket, now, "urgency_corrected", agent, old=ticket.urgency, new=urgency)
            ticket.urgency = urgency
        ticket.updated_at = now
        if ticket.status == RESOLVED or ticket.escalated:
            return
        after = self.router.decide(_facts(ticket, result, labels))
        if _route(after) == (ticket.rule, ticket.team_id, ticket.skill):
            return
        if _placed_by_hand(ticket):
            before = self.router.decide(_facts(ticket, result, previous))
            if _route(after) == _route(before):
                return
        self._reroute(session, ticket, after, now, agent)

    def _reroute(
        self, session: Session, ticket: Ticket, decision: RouteDecision, now: datetime, actor: str
    ) -> None:
        """Move an open ticket where routing now sends it, as creation would have; within the
        same team its handler keeps it while they have the skill."""
        source = ticket.team_id
        self.db.lock_teams(session, [source, decision.team])
        preferred = decision.preferred_handler or (
            ticket.handler_id if decision.team == source else None
        )
        freed = self._release(session, ticket)
        ticket.team_id, ticket.skill, ticket.rule = decision.team, decision.skill, decision.rule
        ticket.route_reason = decision.reason
        _event(
            ticket,
            now,
            "rerouted",
            actor,
            rule=decision.rule,
            team=decision.team,
            from_team=source,
            reason=decision.reason,
        )
        for supervisor in decision.notify:
            if supervisor not in ticket.notify:
                ticket.notify = [*ticket.notify, supervisor]
                _event(ticket, now, "notified", None, supervisor=supervisor, rule=decision.rule)
        self._assign(session, ticket, preferred, now, actor)
        if freed is not None:
            self._drain(session, freed, now, actor)


def _corrections(request: FeedbackRequest) -> dict[str, Any]:
    return {
        name: getattr(request, name)
        for name in FEEDBACK_LABELS
        if getattr(request, name) is not None
    }


def _route(decision: RouteDecision) -> tuple[str, str, str | None]:
    """What a reroute changes: rule, team and skill (not the reason's wording)."""
    return decision.rule, decision.team, decision.skill


def _placed_by_hand(ticket: Ticket) -> bool:
    """Whether a person assigned the ticket to a handler since routing last placed it."""
    for event in reversed(ticket.events):
        if event.kind == "rerouted":
            return False
        if event.kind == "assigned" and event.detail.get("reason") == "manual":
            return True
    return False


def _facts(ticket: Ticket, result: TriageResult, labels: dict[str, Any]) -> Facts:
    """What routing sees of the opening message under the given labels."""
    return replace(
        Facts.of(result, None),
        topic=labels["topic"],
        urgency=labels["urgency"],
        sentiment=labels["sentiment"],
        is_complaint=labels["is_complaint"],
        tier=ticket.customer_tier,
        customer_id=ticket.customer_id,
    )


def _trend(messages: Sequence[TicketMessage]) -> SentimentTrend:
    points = [
        SentimentPoint(
            message_id=m.id,
            at=m.created_at,
            sentiment=m.result["sentiment"],
            score=m.result["sentiment_score"],
        )
        for m in messages
        if m.author == "customer" and m.result is not None
    ]
    change = round(points[-1].score - points[0].score, 4) if points else 0.0
    direction: Literal["improving", "worsening", "steady"] = (
        "improving"
        if change >= TREND_THRESHOLD
        else "worsening"
        if change <= -TREND_THRESHOLD
        else "steady"
    )
    return SentimentTrend(direction=direction, change=change, points=points)


def _message_view(message: TicketMessage) -> TicketMessageView:
    result = message.result or {}
    return TicketMessageView(
        id=message.id,
        created_at=message.created_at,
        author=message.author,  # type: ignore[arg-type]
        author_id=message.author_id,
        kind=message.kind,  # type: ignore[arg-type]
        masked_text=message.masked_text,
        sentiment=result.get("sentiment"),
        sentiment_score=result.get("sentiment_score"),
        is_complaint=result.get("is_complaint"),
        urgency=result.get("urgency"),
        explanation=list(message.explanation),
    )


def _feedback_view(feedback: Feedback) -> FeedbackView:
    return FeedbackView(
        id=feedback.id,
        ticket_id=feedback.ticket_id,
        message_id=feedback.message_id,
        agent=feedback.agent,
        created_at=feedback.created_at,
        labels=feedback.labels,
        corrected=feedback.corrected,
        note=feedback.note,
    )


def _handler_view(handler: Handler, load: int) -> HandlerView:
    return HandlerView(
        id=handler.id,
        name=handler.name,
        team=handler.team_id,
        skills=handler.skills,
        capacity=handler.capacity,
        load=load,
        on_duty=handler.on_duty,
        active=handler.active,
    )


def _action_text(action: FollowupAction, ticket: Ticket) -> str:
    if action == "escalated":
        return f"escalated to team {ticket.team_id} (urgency {ticket.urgency})"
    if action == "reopened":
        return "ticket reopened"
    if ticket.status == RESOLVED:
        return "ticket stays resolved"
    return f"ticket stays {ticket.status}"
