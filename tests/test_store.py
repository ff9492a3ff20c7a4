"""The ticket store on SQLite and PostgreSQL: assignment and queues, concurrent workers,
idempotent creation, follow-ups, repeated contact, SLA breaches and feedback into training."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import select

from tests.conftest import postgres_schema
from tests.factories import FakeClock
from triage.cli import main
from triage.errors import (
    CapacityError,
    IdempotencyKeyReusedError,
    InputError,
    NotFoundError,
    TransitionError,
)
from triage.followups import load_followup_lexicon
from triage.pipeline import TriagePipeline
from triage.routing import Router, RoutingConfig
from triage.schemas import Customer, Message
from triage.store.database import MIGRATIONS_DIR, Database
from triage.store.feedback import feedback_records
from triage.store.models import Base, TicketMessage
from triage.store.schemas import FeedbackRequest
from triage.store.service import InvalidFieldsError, Problem, TicketFilter, TicketService
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path

TAXONOMY = load_taxonomy()
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# Complaints without P1 cues: routed by topic to the desk, whatever topic the small model picks.
COMPLAINTS = [
    "快递三天了还没到,怎么回事",
    "洗衣机坏了,维修师傅约了两次都没来",
    "发票开错了,麻烦重新开一张",
    "退款什么时候到账",
]
LEGAL_THREAT = "我要起诉你们"


def desk_config(**handler_capacity: int) -> RoutingConfig:
    """One desk serving every topic (handlers a and b), and an escalation team (handler e)."""
    topics = TAXONOMY.topic_ids
    capacity = {"a": 2, "b": 2, "e": 3} | handler_capacity

    def member(hid: str, team: str, skills: list[str]) -> dict[str, Any]:
        return {"id": hid, "name": hid.upper(), "team": team, "skills": skills,
                "capacity": capacity[hid]}  # fmt: skip

    config = RoutingConfig.model_validate(
        {
            "version": 1,
            "teams": {
                "desk": {"name": "Desk", "topics": topics, "escalation": "escalation"},
                "escalation": {"name": "Escalation", "supervisor": "sup"},
            },
            "supervisors": [{"id": "sup", "name": "Supervisor"}],
            "handlers": [
                member("a", "desk", topics),
                member("b", "desk", topics),
                member("e", "escalation", ["legal"]),
            ],
            "rules": [
                {"id": "legal_threat", "when": {"cues": ["legal"]}, "to": "team:escalation",
                 "notify": ["sup"]},
            ],
            "sla": {
                "targets": {
                    "P1": {"first_response": "30m", "resolution": "4h"},
                    "P2": {"first_response": "2h", "resolution": "1d"},
                    "P3": {"first_response": "8h", "resolution": "3d"},
                    "P4": {"first_response": "1d", "resolution": "5d"},
                }
            },
            "repeat_contact": {"window": "7d", "threshold": 0.4},
        }
    )  # fmt: skip
    assert config.problems(TAXONOMY, ["legal", "repeat_contact"]) == []
    return config


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def make_service(
    database_url: str, small_pipeline: TriagePipeline, clock: FakeClock
) -> Iterator[Callable[..., TicketService]]:
    """Builds services on the test's database; each is one worker with its own engine."""
    built: list[TicketService] = []

    def build(config: RoutingConfig | None = None) -> TicketService:
        service = TicketService(
            Database(database_url),
            small_pipeline,
            Router(config or desk_config()),
            load_followup_lexicon(),
            clock,
        )
        service.sync_roster()
        built.append(service)
        return service

    yield build
    for service in built:
        service.db.dispose()


@pytest.fixture
def service(make_service: Callable[..., TicketService]) -> TicketService:
    return make_service()


def create(service: TicketService, text: str, **fields: Any) -> Any:
    ticket, _ = service.create(Message(text=text, channel="chat", **fields))
    return ticket


def loads(service: TicketService) -> dict[str, int]:
    return {h.id: h.load for h in service.handlers()}


# --- schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_the_schema_the_models_describe(backend, tmp_path):
    def check(url: str) -> None:
        database = Database(url)
        assert database.upgrade() == "0002"
        assert database.upgrade() == "0002"  # a second run changes nothing
        with database.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        database.dispose()
        assert differences == []

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'fresh.db'}")
    else:
        with postgres_schema() as url:
            check(url)


def test_db_upgrade_command_creates_the_database(tmp_path):
    path = tmp_path / "nested" / "tickets.db"
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", f"sqlite:///{path}"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"database sqlite:///{path} is at revision 0002"
    assert path.is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x@y/z", "expected a sqlite or postgresql URL (got 'mysql')"),
        ("sqlite://", "expected sqlite:///PATH to a file (got 'sqlite://')"),
        ("not a url", "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"),
    ],
)
def test_unusable_database_url_is_a_clear_error(url, message):
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 2
    assert message in result.output


# --- assignment ----------------------------------------------------------------------------


def test_least_loaded_assignment_then_queue_then_assignment_when_capacity_frees(service, clock):
    tickets = []
    for text in [*COMPLAINTS, COMPLAINTS[0] + "!"]:
        tickets.append(create(service, text))
        clock.advance(minutes=1)
    assert [t.handler for t in tickets] == ["a", "b", "a", "b", None]
    waiting = tickets[4]
    assert waiting.status == "queued"
    assert waiting.routing.assignment == (
        "waiting in the desk queue: all 2 on-duty handlers with skill "
        f"{waiting.routing.skill} are at capacity"
    )
    assert loads(service) == {"a": 2, "b": 2, "e": 0}
    assert [t.queued for t in service.teams() if t.id == "desk"] == [1]

    service.resolve(tickets[1].id, actor="b")
    now_assigned = service.get(waiting.id)
    assert (now_assigned.status, now_assigned.handler) == ("assigned", "b")
    assert [e.kind for e in now_assigned.events][-2:] == ["queued", "assigned"]
    assert loads(service) == {"a": 2, "b": 2, "e": 0}


def test_queue_is_served_earliest_deadline_first(make_service, clock):
    service = make_service(desk_config(a=1, b=0))
    create(service, COMPLAINTS[0])  # a is now full
    clock.advance(minutes=1)
    later_p3 = create(service, COMPLAINTS[1])
    clock.advance(minutes=1)
    urgent = create(service, LEGAL_THREAT)  # P1, but routed to escalation: not this queue
    assert urgent.team == "escalation"
    p2 = create(service, COMPLAINTS[2], customer=Customer(id="k", tier="vip"))
    assert p2.urgency == "P2" and later_p3.urgency == "P3"
    service.assign(service.list_tickets(TicketFilter(handler="a")).items[0].id, None, None)
    service.resolve(service.list_tickets(TicketFilter(handler="a")).items[0].id, actor="a")
    assert service.get(p2.id).handler == "a"  # P2 deadline comes first
    assert service.get(later_p3.id).status == "queued"


def test_off_duty_hands_tickets_to_colleagues_or_the_queue_and_back(service):
    first, second, third = (create(service, text) for text in COMPLAINTS[:3])
    assert (first.handler, second.handler, third.handler) == ("a", "b", "a")

    change = service.set_duty("a", False, actor="lead")
    assert change.handler.on_duty is False and change.handler.load == 0
    assert change.reassigned == [first.id]  # b had room for one
    assert change.queued == [third.id]
    assert loads(service) == {"a": 0, "b": 2, "e": 0}
    assert service.get(first.id).handler == "b"

    back = service.set_duty("a", True, actor="lead")
    assert back.assigned_from_queue == [third.id]
    assert service.get(third.id).handler == "a"


def test_routing_file_sync_applies_duty_and_removals(make_service, database_url):
    service = make_service()
    ticket = create(service, COMPLAINTS[0])
    assert ticket.handler == "a"
    data = desk_config().model_dump(mode="json")
    data["handlers"] = [h for h in data["handlers"] if h["id"] != "a"]
    service.router = Router(RoutingConfig.model_validate(data))
    service.sync_roster()
    assert service.get(ticket.id).handler == "b"
    assert {h.id: h.active for h in service.handlers()} == {"a": False, "b": True, "e": True}


def test_manual_assignment_respects_duty_and_capacity(make_service):
    service = make_service(desk_config(b=1))
    first, second = create(service, COMPLAINTS[0]), create(service, COMPLAINTS[1])
    with pytest.raises(CapacityError, match=r"handler b is at capacity \(1/1\)"):
        service.assign(first.id, "b", actor="lead")
    moved = service.assign(second.id, "a", actor="lead")
    assert moved.handler == "a"
    assert moved.routing.assignment == "assigned to a by lead"
    service.set_duty("b", False, actor="lead")
    with pytest.raises(CapacityError, match="handler b is off duty"):
        service.assign(first.id, "b", actor="lead")
    with pytest.raises(NotFoundError, match="handler 'zz' does not exist"):
        service.assign(first.id, "zz", actor="lead")
    with pytest.raises(NotFoundError, match="ticket 999 does not exist"):
        service.get(999)
    service.resolve(first.id, actor="a")
    with pytest.raises(TransitionError, match="resolved; reopen it first"):
        service.assign(first.id, "a", actor="lead")
    with pytest.raises(TransitionError, match="already resolved"):
        service.resolve(first.id, actor="a")
    reopened = service.reopen(first.id, actor="lead", reason="customer called")
    assert (reopened.status, reopened.handler) == ("assigned", "a")
    with pytest.raises(TransitionError, match="is assigned, not resolved"):
        service.reopen(first.id, actor="lead")


def _slow_loads(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Widen the window between reading loads and writing the choice, where a race would be."""
    original = TicketService._loads

    def slow(session: Any, handler_ids: Any) -> dict[str, int]:
        counted = original(session, handler_ids)
        time.sleep(seconds)
        return counted

    monkeypatch.setattr(TicketService, "_loads", staticmethod(slow))


def _create_concurrently(workers: list[TicketService], count: int) -> list[Any]:
    start = threading.Barrier(count)

    def one(index: int) -> Any:
        start.wait()
        return create(workers[index % len(workers)], f"{COMPLAINTS[index % 4]}(编号{index})")

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_workers_never_exceed_a_handlers_capacity(make_service, monkeypatch):
    workers = [make_service(), make_service()]  # two engines on one database: two processes
    _slow_loads(monkeypatch, 0.05)
    tickets = _create_concurrently(workers, 8)
    assert loads(workers[0]) == {"a": 2, "b": 2, "e": 0}
    assert sorted(t.status for t in tickets) == ["assigned"] * 4 + ["queued"] * 4


# SQLite serialises whole transactions (BEGIN IMMEDIATE), locks or not: PostgreSQL only.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_without_team_locks_postgresql_workers_would_overfill(make_service, monkeypatch):
    """The control for the test above: the race is real, and the locks are what stop it."""
    workers = [make_service(), make_service()]
    monkeypatch.setattr(Database, "lock_teams", lambda self, session, team_ids: None)
    _slow_loads(monkeypatch, 0.1)
    _create_concurrently(workers, 8)
    assert max(loads(workers[0]).values()) > 2


# --- idempotency ---------------------------------------------------------------------------


def test_retries_with_an_idempotency_key_return_the_first_ticket(service):
    message = Message(text=COMPLAINTS[0], channel="chat")
    first, created = service.create(message, "key-1")
    retries = [service.create(message, "key-1") for _ in range(3)]
    assert created and not any(again for _, again in retries)
    assert {t.id for t, _ in retries} == {first.id}
    assert service.list_tickets(TicketFilter()).total == 1
    with pytest.raises(IdempotencyKeyReusedError, match="'key-1' was used for ticket 1"):
        service.create(Message(text=COMPLAINTS[1], channel="chat"), "key-1")


def test_message_id_makes_creation_idempotent_per_customer(service):
    customer = Customer(id="c-7")
    first, _ = service.create(Message(id="m-1", text=COMPLAINTS[0], customer=customer))
    again, created = service.create(Message(id="m-1", text=COMPLAINTS[0], customer=customer))
    other, other_created = service.create(
        Message(id="m-1", text=COMPLAINTS[0], customer=Customer(id="c-8"))
    )
    assert again.id == first.id and not created
    assert other.id != first.id and other_created


def test_concurrent_retries_create_one_ticket(make_service):
    workers = [make_service(), make_service()]
    message = Message(text=COMPLAINTS[2], channel="email")
    start = threading.Barrier(6)

    def attempt(index: int) -> tuple[int, bool]:
        start.wait()
        ticket, created = workers[index % 2].create(message, "retry-key")
        return ticket.id, created

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(attempt, range(6)))
    assert len({ticket_id for ticket_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert workers[0].list_tickets(TicketFilter()).total == 1
    assert sum(loads(workers[0]).values()) == 1


# --- follow-ups ----------------------------------------------------------------------------


def test_thanks_after_resolution_does_not_reopen(service):
    ticket = create(service, COMPLAINTS[0])
    service.resolve(ticket.id, actor="a")
    outcome = service.add_message(ticket.id, "谢谢你们")
    assert outcome.action == "none"
    assert outcome.message.kind == "thanks"
    assert outcome.ticket.status == "resolved"
    assert outcome.explanation[0] == "follow-up: thanks"
    assert outcome.explanation[-1] == "ticket stays resolved"


def test_confirmation_on_an_open_ticket_keeps_it_open(service):
    ticket = create(service, COMPLAINTS[3])
    outcome = service.add_message(ticket.id, "退款已到账,谢谢")
    assert (outcome.message.kind, outcome.action, outcome.ticket.status) == (
        "resolved",
        "none",
        "assigned",
    )


def test_problem_persisting_after_resolution_reopens_to_the_same_handler(service):
    ticket = create(service, COMPLAINTS[0])
    service.resolve(ticket.id, actor="a")
    outcome = service.add_message(ticket.id, "还没收到,麻烦再查一下")
    assert (outcome.message.kind, outcome.action) == ("update", "reopened")
    assert (outcome.ticket.status, outcome.ticket.handler) == ("assigned", "a")
    assert outcome.ticket.sla.resolved_at is None


def test_new_complaint_escalates_raises_urgency_and_notifies(service):
    ticket = create(service, COMPLAINTS[1])
    assert (ticket.team, ticket.urgency) == ("desk", "P3")
    service.resolve(ticket.id, actor="a")
    outcome = service.add_message(ticket.id, "修了还是漏水,我要起诉你们")
    escalated = outcome.ticket
    assert (outcome.message.kind, outcome.action) == ("new_complaint", "escalated")
    assert "P1 cue: legal '起诉'" in outcome.explanation
    assert (escalated.status, escalated.team, escalated.handler) == ("assigned", "escalation", "e")
    assert escalated.escalated and escalated.urgency == "P1"
    assert escalated.routing.notify == ["sup"]
    assert escalated.sla.first_response_due_at == T0.replace(minute=30)
    kinds = [e.kind for e in escalated.events]
    assert kinds[-5:] == ["urgency_raised", "reopened", "escalated", "notified", "assigned"]


def test_sentiment_trend_follows_the_customers_messages(service):
    ticket = create(service, COMPLAINTS[0])
    outcome = service.add_message(ticket.id, "收到了,谢谢,非常满意")
    trend = outcome.ticket.sentiment_trend
    assert [p.sentiment for p in trend.points] == ["negative", "positive"]
    assert trend.direction == "improving" and trend.change >= 0.3


def test_agent_reply_stops_the_first_response_clock_once(service, clock):
    ticket = create(service, COMPLAINTS[0])
    clock.advance(minutes=20)
    outcome = service.add_message(ticket.id, "您好,已为您催促快递,电话13812345678", author="agent",
                                  author_id="a")  # fmt: skip
    assert outcome.action == "first_response"
    assert outcome.message.masked_text == "您好,已为您催促快递,电话<PHONE>"
    assert outcome.ticket.sla.first_responded_at == clock.now
    clock.advance(minutes=5)
    later = service.add_message(ticket.id, "还有问题随时联系", author="agent", author_id="a")
    assert later.action == "none"
    assert later.ticket.sla.first_responded_at == T0.replace(minute=20)


def test_a_resent_follow_up_is_recorded_once(service):
    ticket = create(service, COMPLAINTS[0])
    first = service.add_message(ticket.id, "还没收到", client_message_id="f-1")
    again = service.add_message(ticket.id, "还没收到", client_message_id="f-1")
    assert not first.replayed and again.replayed
    assert again.message.id == first.message.id
    assert len(again.ticket.messages) == 2
    with pytest.raises(IdempotencyKeyReusedError, match="message id 'f-1' was used for message"):
        service.add_message(ticket.id, "还没退回来", client_message_id="f-1")


@pytest.mark.parametrize("author", ["customer", "agent"])
def test_concurrent_retries_of_a_message_store_it_once(make_service, monkeypatch, author):
    """Every request passes the first look-up before any stores: the unique index decides."""
    workers = [make_service(), make_service()]
    ticket = create(workers[0], COMPLAINTS[0])
    texts = ["还没收到,麻烦再查一下"] * 4 + ["已经收到了"] * 2
    checked = threading.Barrier(len(texts))
    # Customers' follow-ups are triaged between the look-up and the insert; replies are not.
    if author == "customer":
        triage = TriagePipeline.__call__

        def triage_then_wait(self: TriagePipeline, *args: Any, **kwargs: Any) -> Any:
            results = triage(self, *args, **kwargs)
            checked.wait(30)
            return results

        monkeypatch.setattr(TriagePipeline, "__call__", triage_then_wait)
    else:
        reply = TicketService._agent_reply

        def wait_then_reply(self: TicketService, *args: Any) -> Any:
            checked.wait(30)
            return reply(self, *args)

        monkeypatch.setattr(TicketService, "_agent_reply", wait_then_reply)

    def attempt(index: int) -> Any:
        try:
            return workers[index % 2].add_message(
                ticket.id, texts[index], author=author, client_message_id="m-1"
            )
        except IdempotencyKeyReusedError as error:
            return error

    with ThreadPoolExecutor(len(texts)) as pool:
        outcomes = list(pool.map(attempt, range(len(texts))))
    stored = workers[0].get(ticket.id).messages[1:]  # after the opening message
    assert len(stored) == 1
    answered = [o for o in outcomes if not isinstance(o, IdempotencyKeyReusedError)]
    assert {o.message.id for o in answered} == {stored[0].id}
    assert sum(not o.replayed for o in answered) == 1
    # Retries with the stored text are replays; those with the other text, conflicts.
    same = [texts[i] == stored[0].masked_text for i in range(len(texts))]
    assert [not isinstance(o, IdempotencyKeyReusedError) for o in outcomes] == same


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_keeps_duplicate_messages_but_one_client_id(backend, tmp_path, small_pipeline):
    """Duplicates stored before the unique index existed must not stop the upgrade."""

    def check(url: str) -> None:
        service = TicketService(
            Database(url), small_pipeline, Router(desk_config()), load_followup_lexicon()
        )
        service.db.upgrade()
        service.sync_roster()
        ticket = create(service, COMPLAINTS[0])
        service.add_message(ticket.id, "还没收到", client_message_id="f-1")
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with service.db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
        with service.db.transaction() as session:
            follow_up = session.scalars(select(TicketMessage).order_by(TicketMessage.id)).all()[1]
            for _ in range(2):
                copy = {c.key: getattr(follow_up, c.key) for c in TicketMessage.__table__.columns}
                session.add(TicketMessage(**(copy | {"id": None})))
        assert service.db.upgrade() == "0002"
        with service.db.transaction() as session:
            ids = session.execute(
                select(TicketMessage.id, TicketMessage.client_message_id).order_by(TicketMessage.id)
            ).all()
        service.db.dispose()
        assert [client_id for _, client_id in ids] == [None, "f-1", None, None]

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'duplicates.db'}")
    else:
        with postgres_schema() as url:
            check(url)


# --- repeated contact ----------------------------------------------------------------------


def test_similar_message_from_the_same_customer_links_and_raises_urgency(service, clock):
    customer = Customer(id="c-1")
    # A calm request the model alone leaves at P3, so that only the link can raise it.
    first = create(service, "发票开错了,麻烦重新开一张", customer=customer)
    clock.advance(hours=2)
    repeat = create(service, "我的发票开错了,麻烦重新开一张发票", customer=customer)
    assert repeat.linked_ticket_id == first.id
    cue = [c for c in repeat.triage.cues if c.kind == "repeat_contact"]
    assert len(cue) == 1 and cue[0].source == "metadata" and cue[0].start is None
    assert cue[0].text.startswith(f"ticket {first.id} (similarity ")
    assert repeat.urgency == "P2"
    assert any("by cue repeat_contact" in line for line in repeat.triage.explanation)
    assert repeat.handler == first.handler
    assert f"prefers {first.handler}, who holds ticket {first.id}" in repeat.routing.reason

    stranger = create(service, "我的发票开错了,麻烦重新开一张发票", customer=Customer(id="c-2"))
    unrelated = create(service, "快递三天了还没到,怎么回事", customer=customer)
    assert stranger.linked_ticket_id is None and unrelated.linked_ticket_id is None
    assert stranger.urgency == "P3"  # the same words without the link


def test_repeat_window_covers_recent_and_still_open_tickets(service, clock):
    customer = Customer(id="c-3")
    resolved = create(service, "洗衣机漏水了,什么时候能派人来修", customer=customer)
    service.resolve(resolved.id, actor="a")
    clock.advance(days=8)
    assert (
        create(service, "洗衣机又漏水了,什么时候派人来修", customer=customer).linked_ticket_id
        is None
    )
    still_open = create(service, "退款什么时候到账", customer=customer)
    clock.advance(days=30)
    repeat = create(service, "退款到底什么时候到账", customer=customer)
    assert repeat.linked_ticket_id == still_open.id


# --- SLA and listing -----------------------------------------------------------------------


def test_breached_and_soon_to_breach_tickets_at_fixed_moments(service, clock):
    p3 = create(service, COMPLAINTS[0])  # first response due in 8h
    clock.advance(hours=1)
    p1 = create(service, LEGAL_THREAT)  # due in 30 min
    assert p1.due_at == clock.now.replace(minute=30)
    clock.advance(minutes=25)
    report = service.sla_report()
    assert [t.id for t in report.at_risk] == [p1.id] and report.breached == []
    clock.advance(minutes=10)
    report = service.sla_report()
    assert [t.id for t in report.breached] == [p1.id]
    assert service.list_tickets(TicketFilter(breached=True)).items[0].id == p1.id
    assert [t.id for t in service.list_tickets(TicketFilter(breached=False)).items] == [p3.id]
    clock.advance(hours=6)
    assert [t.id for t in service.sla_report().at_risk] == [p3.id]


def test_list_filters_and_pages(service):
    ids = [create(service, text).id for text in [*COMPLAINTS, LEGAL_THREAT]]
    service.resolve(ids[0], actor="a")
    everything = service.list_tickets(TicketFilter(), limit=2)
    assert [t.id for t in everything.items] == [ids[4], ids[3]]
    assert (everything.total, everything.next_offset) == (5, 2)
    last = service.list_tickets(TicketFilter(), limit=2, offset=4)
    assert [t.id for t in last.items] == [ids[0]] and last.next_offset is None
    assert service.list_tickets(TicketFilter(status="resolved")).total == 1
    assert [t.id for t in service.list_tickets(TicketFilter(team="escalation")).items] == [ids[4]]
    assert service.list_tickets(TicketFilter(urgency="P1")).total == 1
    assert {t.handler for t in service.list_tickets(TicketFilter(handler="b")).items} == {"b"}


def test_tickets_of_a_team_removed_from_the_routing_file_can_still_be_listed(service):
    kept = create(service, LEGAL_THREAT)
    data = desk_config().model_dump(mode="json")
    del data["teams"]["escalation"]
    data["teams"]["desk"]["escalation"] = None
    data["handlers"] = [h for h in data["handlers"] if h["team"] != "escalation"]
    data["rules"] = []
    service.router = Router(RoutingConfig.model_validate(data))
    service.sync_roster()
    assert [t.id for t in service.list_tickets(TicketFilter(team="escalation")).items] == [kept.id]
    with pytest.raises(InvalidFieldsError) as refused:
        service.list_tickets(TicketFilter(team="nope", topic="x"))
    assert [p.field for p in refused.value.problems] == [("team",), ("topic",)]
    assert str(refused.value).startswith(
        "filters: team: expected one of ['desk', 'escalation'] (got 'nope'); topic: "
    )


# --- feedback ------------------------------------------------------------------------------


def test_feedback_is_stored_with_who_and_when_and_corrects_the_ticket(service, clock):
    ticket = create(service, COMPLAINTS[0])
    clock.advance(minutes=3)
    view = service.add_feedback(
        ticket.id, FeedbackRequest(agent="agent-9", urgency="P2", topic="after_sales", note="x")
    )
    assert (view.agent, view.created_at, view.corrected) == (
        "agent-9",
        clock.now,
        ["topic", "urgency"],
    )
    assert view.labels["topic"] == "after_sales"
    assert set(view.labels) == {"topic", "secondary_topics", "sentiment", "urgency", "is_complaint"}
    corrected = service.get(ticket.id)
    assert (corrected.topic, corrected.urgency) == ("after_sales", "P2")
    assert corrected.sla.first_response_due_at == clock.now + timedelta(hours=2)  # raised now
    assert corrected.feedback[0].id == view.id
    with pytest.raises(InvalidFieldsError) as refused:
        service.add_feedback(
            ticket.id, FeedbackRequest(agent="x", topic="shipping", secondary_topics=["x"])
        )
    assert refused.value.problems[1] == Problem(
        ("secondary_topics", 0), f"expected one of {TAXONOMY.topic_ids} (got 'x')"
    )
    assert "; secondary_topics[0]: expected one of" in str(refused.value)
    with pytest.raises(InputError, match="expected at least one of"):
        service.add_feedback(ticket.id, FeedbackRequest(agent="x"))
    with pytest.raises(NotFoundError, match="has no customer message 99"):
        service.add_feedback(ticket.id, FeedbackRequest(agent="x", message_id=99, topic="refund"))


def test_concurrent_corrections_of_different_labels_keep_both(make_service, monkeypatch):
    """Both requests start together and each takes a while after reading the latest correction:
    without the ticket's row lock, PostgreSQL would let both build on the model's labels."""
    workers = [make_service(), make_service()]
    ticket = create(workers[0], COMPLAINTS[0])
    assert (ticket.sentiment, ticket.urgency) != ("positive", "P4")
    correct = TicketService._correct_ticket

    def slow_correct(self: TicketService, *args: Any) -> None:
        time.sleep(0.2)
        correct(self, *args)

    monkeypatch.setattr(TicketService, "_correct_ticket", slow_correct)
    requests = [
        FeedbackRequest(agent="a", sentiment="positive"),
        FeedbackRequest(agent="b", urgency="P4"),
    ]
    start = threading.Barrier(len(requests))

    def one(index: int) -> Any:
        start.wait()
        return workers[index].add_feedback(ticket.id, requests[index])

    with ThreadPoolExecutor(len(requests)) as pool:
        list(pool.map(one, range(len(requests))))
    latest = workers[0].get(ticket.id).feedback[-1].labels
    assert (latest["sentiment"], latest["urgency"]) == ("positive", "P4")


def test_feedback_round_trip_into_training_data(service, database_url, tmp_path):
    ticket = create(service, "手机号13812345678,快递丢了,找不到人处理")
    follow = service.add_message(ticket.id, "发票也开错了")
    service.add_feedback(ticket.id, FeedbackRequest(agent="a", topic="refund"))
    service.add_feedback(ticket.id, FeedbackRequest(agent="b", topic="logistics", urgency="P2"))
    service.add_feedback(
        ticket.id, FeedbackRequest(agent="a", message_id=follow.message.id, topic="billing")
    )

    out = tmp_path / "feedback.jsonl"
    result = CliRunner().invoke(
        main, ["feedback", "export", str(out), "--database-url", database_url]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 2 corrected messages to {out}"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["topic"] for r in rows] == ["logistics", "billing"]  # the latest correction wins
    assert rows[0]["urgency"] == "P2" and rows[0]["channel"] == "chat"
    assert "13812345678" not in out.read_text(encoding="utf-8")
    assert rows[0]["text"] == "手机号<PHONE>,快递丢了,找不到人处理"
    assert [r.id for r in load_corpus(out, TAXONOMY)] == [r["id"] for r in rows]

    assert feedback_records(service.db, TAXONOMY)[0].text == rows[0]["text"]


# Training reads feedback the same way on both backends (the export above); once is enough.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_train_command_learns_from_feedback_in_the_store(service, database_url, tmp_path):
    ticket = create(service, COMPLAINTS[0])
    service.add_feedback(ticket.id, FeedbackRequest(agent="a", urgency="P2"))
    # A small corpus keeps this training quick; the point is which rows it reads.
    train, dev = tmp_path / "small.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(seed_corpus_path("train").read_text("utf-8").splitlines()[::20]))
    dev.write_text("\n".join(seed_corpus_path("dev").read_text("utf-8").splitlines()[:40]))
    result = CliRunner().invoke(
        main,
        [
            "train", "--data", str(train), "--dev", str(dev), "--no-review-corpus",
            "--feedback", database_url, "--out", str(tmp_path / "model"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "feedback: 1 corrected messages from sqlite:///" in result.output
    size = len(load_corpus(train, TAXONOMY))
    assert f"training      {size + 1} messages from small.jsonl and 1 corrected by agents" in (
        result.output
    )
    config = json.loads((tmp_path / "model" / "config.json").read_text("utf-8"))
    assert config["data"]["feedback_messages"] == 1


def test_train_command_takes_an_exported_feedback_file_as_training_data(
    tmp_path, monkeypatch, small_train_file
):
    exported = tmp_path / "feedback.jsonl"
    exported.write_text("{}\n", encoding="utf-8")
    seen: list[Any] = []

    def record(args: Any, log: Any) -> None:
        seen.append(args)
        raise SystemExit(0)

    monkeypatch.setattr("triage.cli.train_linear", record)
    CliRunner().invoke(
        main, ["train", "--data", str(small_train_file), "--feedback", str(exported)]
    )
    assert seen[0].extra_train_paths == (exported,)
    assert seen[0].feedback_database_url is None


def test_unreachable_server_is_a_store_error_without_the_password():
    url = "postgresql://triage:s3cret@127.0.0.1:9/triage"
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 2
    assert "triage:***@127.0.0.1:9/triage: cannot migrate: " in result.output
    assert "s3cret" not in result.output


def test_database_from_a_newer_version_is_a_store_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    database = Database(url)
    database.upgrade()
    with database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    database.dispose()
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 2
    assert "cannot migrate: Can't locate revision identified by '9999'" in result.output
