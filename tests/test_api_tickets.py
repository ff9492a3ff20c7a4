"""The tickets API end to end: the app opens a SQLite store in its lifespan with the shipped
routing file; SLA tests swap in a service with a fixed clock through dependency_overrides."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.factories import FakeClock
from tests.test_api import assert_error
from triage.api.app import create_app
from triage.api.deps import get_tickets
from triage.config import Settings
from triage.store.service import TicketService

LEGAL = "快递丢了没人管,再不处理我就去法院起诉你们"
LATE = "快递三天了还没到,怎么回事"


@pytest.fixture
def app(small_model_dir: Path, tmp_path: Path) -> FastAPI:
    return create_app(
        Settings(
            model_dir=small_model_dir,
            train_if_missing=False,
            max_text_length=200,
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
        )
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def clock(app: FastAPI, client: TestClient) -> FakeClock:
    """Tickets at fixed moments: the service the routes get reads this clock."""
    live: TicketService = app.state.tickets
    fixed = FakeClock(datetime(2026, 5, 4, 10, 0, tzinfo=UTC))
    app.dependency_overrides[get_tickets] = lambda: TicketService(
        live.db, live.pipeline, live.router, live.followups, fixed
    )
    return fixed


def post_ticket(client: TestClient, text: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/tickets", json={"text": text, "channel": "chat", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_triages_stores_and_routes_with_reply_drafts(client):
    response = client.post(
        "/v1/tickets", json={"text": LEGAL + ",电话13812345678", "channel": "chat"}
    )
    assert response.status_code == 201, response.text
    ticket = response.json()
    assert response.headers["location"] == f"/v1/tickets/{ticket['id']}"
    assert ticket["status"] == "assigned" and ticket["team"] == "escalation"
    assert ticket["routing"]["rule"] == "legal_or_regulator_threat"
    assert ticket["routing"]["notify"] == ["sup-sun"]
    assert ticket["routing"]["reason"].startswith("rule legal_or_regulator_threat (cue legal)")
    assert ticket["routing"]["assignment"].startswith(f"assigned to {ticket['handler']}: ")
    assert ticket["urgency"] == "P1" and ticket["due_at"] == ticket["sla"]["first_response_due_at"]
    assert ticket["replies"] and set(ticket["replies"][0]) == {
        "template_id",
        "text",
        "score",
        "reason",
    }
    assert "13812345678" not in response.text
    assert client.get(f"/v1/tickets/{ticket['id']}").json() == ticket


def test_idempotency_key_replays_and_rejects_a_different_message(client):
    headers = {"Idempotency-Key": "order-77-first"}
    first = client.post("/v1/tickets", json={"text": LATE}, headers=headers)
    again = client.post("/v1/tickets", json={"text": LATE}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/v1/tickets").json()["total"] == 1
    other = client.post("/v1/tickets", json={"text": LEGAL}, headers=headers)
    error = assert_error(other, 409, "idempotency_key_reused")
    assert "'order-77-first' was used for ticket 1" in error["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"text": "   "}, "empty_text"),
        ({"text": "长" * 201}, "text_too_long"),
        ({"text": LATE, "channel": "fax"}, "invalid_channel"),
        ({"text": LATE, "priority": "high"}, "invalid_request"),
    ],
)
def test_invalid_tickets_are_rejected_before_anything_is_stored(client, body, code):
    assert_error(client.post("/v1/tickets", json=body), 422, code)
    assert client.get("/v1/tickets").json()["total"] == 0


def test_list_filters_and_pagination(client):
    ids = [post_ticket(client, text)["id"] for text in (LATE, LEGAL, LATE + "!")]
    page = client.get("/v1/tickets", params={"limit": 2}).json()
    assert [t["id"] for t in page["items"]] == [ids[2], ids[1]]
    assert (page["total"], page["next_offset"]) == (3, 2)
    escalation = client.get("/v1/tickets", params={"team": "escalation"}).json()
    assert [t["id"] for t in escalation["items"]] == [ids[1]]
    assert client.get("/v1/tickets", params={"urgency": "P1"}).json()["total"] == 1
    assert client.get("/v1/tickets", params={"breached": "false"}).json()["total"] == 3
    assert_error(client.get("/v1/tickets", params={"status": "closed"}), 422, "invalid_request")
    assert_error(client.get("/v1/tickets", params={"limit": 0}), 422, "invalid_request")
    error = assert_error(client.get("/v1/tickets", params={"urgency": "P9"}), 422, "invalid_input")
    assert "urgency: expected one of ['P1', 'P2', 'P3', 'P4'] (got 'P9')" in error["message"]
    assert_error(client.get("/v1/tickets/999"), 404, "not_found")


def test_follow_ups_status_changes_and_errors(client):
    ticket = post_ticket(client, LATE)
    path = f"/v1/tickets/{ticket['id']}"
    reply = client.post(f"{path}/messages", json={"text": "已为您催促", "author": "agent"})
    assert reply.status_code == 200 and reply.json()["action"] == "first_response"
    resolved = client.post(f"{path}/resolve", json={"actor": ticket["handler"]})
    assert resolved.json()["status"] == "resolved"
    assert_error(client.post(f"{path}/resolve", json={}), 409, "invalid_transition")
    thanks = client.post(f"{path}/messages", json={"text": "谢谢你们"}).json()
    assert (thanks["action"], thanks["ticket"]["status"]) == ("none", "resolved")
    assert thanks["explanation"][0] == "follow-up: thanks"
    reopened = client.post(f"{path}/reopen", json={"actor": "lead", "reason": "call"}).json()
    assert reopened["status"] == "assigned"
    assert_error(client.post(f"{path}/assign", json={"handler_id": "nobody"}), 404, "not_found")
    assert_error(client.post("/v1/tickets/999/messages", json={"text": "hi"}), 404, "not_found")
    assert_error(client.post(f"{path}/messages", json={"text": ""}), 422, "empty_text")


def test_agents_free_text_is_stored_and_returned_masked(client, app):
    ticket = post_ticket(client, LATE)
    path = f"/v1/tickets/{ticket['id']}"
    client.post(f"{path}/resolve", json={"actor": ticket["handler"]})
    client.post(f"{path}/reopen", json={"reason": "客户来电13812345678,说还没到"})
    note = client.post(
        f"{path}/feedback",
        json={"agent": "a-1", "urgency": "P2", "note": "身份证110105194912310021"},
    ).json()["note"]
    assert note == "身份证<ID>"
    reasons = [e["detail"].get("reason") for e in client.get(path).json()["events"]]
    assert "客户来电<PHONE>,说还没到" in reasons
    with app.state.tickets.db.engine.connect() as connection:
        stored = " ".join(
            str(row)
            for table in ("feedback", "ticket_events")
            for row in connection.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert "13812345678" not in stored and "110105194912310021" not in stored


def test_manual_assignment_above_capacity_is_a_conflict(client):
    ticket = post_ticket(client, LATE)
    assert client.post("/v1/handlers/h-zhou/duty", json={"on_duty": False}).status_code == 200
    off = client.post(f"/v1/tickets/{ticket['id']}/assign", json={"handler_id": "h-zhou"})
    assert_error(off, 409, "handler_unavailable")
    assert_error(client.post("/v1/handlers/nobody/duty", json={"on_duty": True}), 404, "not_found")


def test_duty_change_moves_tickets_and_teams_show_queues(client):
    ticket = post_ticket(client, LEGAL)
    holder = ticket["handler"]
    for member in ("h-xu", "h-he"):
        if member != holder:
            client.post(f"/v1/handlers/{member}/duty", json={"on_duty": False})
    change = client.post(f"/v1/handlers/{holder}/duty", json={"on_duty": False, "actor": "lead"})
    assert change.json()["queued"] == [ticket["id"]]
    teams = {t["id"]: t for t in client.get("/v1/teams").json()}
    assert teams["escalation"]["queued"] == 1
    handlers = {h["id"]: h for h in client.get("/v1/handlers").json()}
    assert handlers[holder]["on_duty"] is False and handlers[holder]["load"] == 0
    back = client.post(f"/v1/handlers/{holder}/duty", json={"on_duty": True}).json()
    assert back["assigned_from_queue"] == [ticket["id"]]


def test_feedback_is_stored_and_invalid_labels_are_named(client):
    ticket = post_ticket(client, LATE)
    path = f"/v1/tickets/{ticket['id']}/feedback"
    created = client.post(path, json={"agent": "a-1", "urgency": "P2", "note": "VIP"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["agent"], body["corrected"], body["labels"]["urgency"]) == (
        "a-1",
        ["urgency"],
        "P2",
    )
    assert client.get(f"/v1/tickets/{ticket['id']}").json()["feedback"] == [body]
    error = assert_error(
        client.post(path, json={"agent": "a", "sentiment": "angry"}), 422, "invalid_input"
    )
    assert (
        "sentiment: expected one of ['negative', 'neutral', 'positive'] (got 'angry')"
        in (error["message"])
    )
    assert_error(client.post(path, json={"topic": "refund"}), 422, "invalid_request")


def test_sla_report_with_a_fixed_clock(client, clock):
    urgent = post_ticket(client, LEGAL)
    post_ticket(client, LATE)
    assert client.get("/v1/sla").json()["breached"] == []
    clock.advance(minutes=25)
    assert [t["id"] for t in client.get("/v1/sla").json()["at_risk"]] == [urgent["id"]]
    clock.advance(minutes=10)
    report = client.get("/v1/sla").json()
    assert [t["id"] for t in report["breached"]] == [urgent["id"]]
    assert report["breached"][0]["sla_state"] == "breached"
    breached = client.get("/v1/tickets", params={"breached": "true"}).json()
    assert [t["id"] for t in breached["items"]] == [urgent["id"]]


def test_store_that_cannot_open_answers_503_while_triage_works(small_model_dir, tmp_path, caplog):
    routing = tmp_path / "routing.yaml"
    routing.write_text("version: 1\nteams: {}\n", encoding="utf-8")
    settings = Settings(
        model_dir=small_model_dir,
        train_if_missing=False,
        routing_path=routing,
        database_url=f"sqlite:///{tmp_path / 't.db'}",
    )
    with TestClient(create_app(settings)) as client:
        assert_error(client.get("/v1/tickets"), 503, "store_unavailable")
        assert client.post("/v1/triage", json={"text": LATE}).status_code == 200
    assert f"{routing}: teams: Dictionary should have at least 1 item" in caplog.text


def test_a_follow_up_id_replays_its_text_and_refuses_another(client):
    path = f"/v1/tickets/{post_ticket(client, LATE)['id']}/messages"
    first = client.post(path, json={"id": "f-1", "text": "好的,问题已经解决了,谢谢"})
    again = client.post(path, json={"id": "f-1", "text": "好的,问题已经解决了,谢谢"})
    assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
    assert again.json()["message"] == first.json()["message"]
    error = assert_error(
        client.post(path, json={"id": "f-1", "text": "还没退回来"}), 409, "idempotency_key_reused"
    )
    assert (
        f"message id 'f-1' was used for message {first.json()['message']['id']}"
        in (error["message"])
    )
    reply = {"id": "f-1", "text": "好的,问题已经解决了,谢谢", "author": "agent"}
    assert_error(client.post(path, json=reply), 409, "idempotency_key_reused")
    texts = [m["masked_text"] for m in again.json()["ticket"]["messages"]]
    assert texts == [LATE, "好的,问题已经解决了,谢谢"]


def test_a_follow_up_takes_whole_number_ids_as_triage_does(client):
    path = f"/v1/tickets/{post_ticket(client, LATE)['id']}/messages"
    first = client.post(path, json={"id": 42, "author_id": 7, "text": "还没收到"})
    assert first.status_code == 200, first.text
    assert first.json()["message"]["author_id"] == "7"
    assert client.post(path, json={"id": "42", "text": "还没收到"}).json()["replayed"] is True
    assert_error(client.post(path, json={"id": True, "text": "还没收到"}), 422, "invalid_request")


def test_a_later_correction_keeps_the_earlier_ones_and_reroutes(client):
    ticket = post_ticket(client, LATE)
    assert (ticket["topic"], ticket["team"]) == ("logistics", "logistics")
    path = f"/v1/tickets/{ticket['id']}"
    client.post(f"{path}/feedback", json={"agent": "a", "topic": "billing"})
    later = client.post(f"{path}/feedback", json={"agent": "a", "secondary_topics": ["logistics"]})
    assert later.status_code == 201, later.text
    assert (later.json()["labels"]["topic"], later.json()["labels"]["secondary_topics"]) == (
        "billing",
        ["logistics"],
    )
    assert later.json()["corrected"] == ["secondary_topics"]
    moved = client.get(path).json()
    assert (moved["topic"], moved["team"], moved["routing"]["rule"]) == (
        "billing",
        "billing",
        "topic_team",
    )
    assert moved["handler"] in {"h-chen", "h-chu"}
    rerouted = [e["detail"] for e in moved["events"] if e["kind"] == "rerouted"]
    assert rerouted == [
        {
            "rule": "topic_team",
            "team": "billing",
            "from_team": "logistics",
            "reason": "no rule applied: team billing serves topic billing",
        }
    ]
    handlers = {h["id"]: h["load"] for h in client.get("/v1/handlers").json()}
    assert handlers["h-li"] + handlers["h-zhou"] == 0


def test_urgency_raised_by_a_correction_applies_rules_and_deadlines_from_now(client, clock):
    ticket = post_ticket(client, LATE)
    assert (ticket["urgency"], ticket["team"]) == ("P3", "logistics")
    clock.advance(hours=2)
    path = f"/v1/tickets/{ticket['id']}"
    feedback = {"agent": "a", "urgency": "P1", "is_complaint": True}
    assert client.post(f"{path}/feedback", json=feedback).status_code == 201
    raised = client.get(path).json()
    assert (raised["urgency"], raised["team"], raised["routing"]["rule"]) == (
        "P1",
        "escalation",
        "critical_complaint",
    )
    assert raised["routing"]["notify"] == ["sup-sun"] and raised["escalated"] is False
    assert raised["sla"]["first_response_due_at"] == "2026-05-04T12:30:00Z"
    assert raised["sla"]["resolution_due_at"] == "2026-05-04T16:00:00Z"
    assert raised["sla_state"] != "breached"
    # Lowered again: the P3 targets from creation, never earlier than the deadlines it had.
    client.post(f"{path}/feedback", json={"agent": "a", "urgency": "P3"})
    lowered = client.get(path).json()
    assert (lowered["urgency"], lowered["team"]) == ("P3", "logistics")
    assert lowered["sla"]["first_response_due_at"] == "2026-05-04T18:00:00Z"


def test_a_correction_made_while_resolved_moves_the_ticket_at_the_next_one(client):
    """Corrections route from where the ticket is, not from the labels before, so a resolved
    ticket's correction is not lost; a ticket a person placed moves only when its labels route
    elsewhere than before the correction."""
    path = f"/v1/tickets/{post_ticket(client, LATE)['id']}"
    client.post(f"{path}/resolve")
    client.post(f"{path}/feedback", json={"agent": "a", "topic": "billing"})
    assert client.post(f"{path}/reopen").json()["team"] == "logistics"
    client.post(f"{path}/feedback", json={"agent": "a", "sentiment": "neutral"})
    moved = client.get(path).json()
    assert (moved["team"], moved["routing"]["skill"]) == ("billing", "billing")
    assert moved["handler"] in {"h-chen", "h-chu"}

    path = f"/v1/tickets/{post_ticket(client, LATE)['id']}"
    assert client.post(f"{path}/assign", json={"handler_id": "h-wu"}).json()["team"] == "orders"
    client.post(f"{path}/feedback", json={"agent": "a", "sentiment": "neutral"})
    assert client.get(path).json()["handler"] == "h-wu"
    client.post(f"{path}/feedback", json={"agent": "a", "topic": "technical"})
    assert client.get(path).json()["team"] == "accounts_tech"


def test_corrections_leave_resolved_and_escalated_tickets_in_their_team(client):
    resolved = post_ticket(client, LATE)
    client.post(f"/v1/tickets/{resolved['id']}/resolve")
    client.post(f"/v1/tickets/{resolved['id']}/feedback", json={"agent": "a", "topic": "billing"})
    kept = client.get(f"/v1/tickets/{resolved['id']}").json()
    assert (kept["topic"], kept["team"], kept["status"]) == ("billing", "logistics", "resolved")

    escalated = post_ticket(client, LATE)
    path = f"/v1/tickets/{escalated['id']}"
    assert client.post(f"{path}/messages", json={"text": LEGAL}).json()["action"] == "escalated"
    client.post(f"{path}/feedback", json={"agent": "a", "topic": "billing", "urgency": "P4"})
    kept = client.get(path).json()
    assert (kept["topic"], kept["team"], kept["urgency"]) == ("billing", "escalation", "P1")
    assert "rerouted" not in [e["kind"] for e in kept["events"]]


def test_a_follow_up_escalating_an_old_ticket_gets_the_new_target_from_now(client, clock):
    ticket = post_ticket(client, LATE)
    assert ticket["sla"]["first_response_due_at"] == "2026-05-04T18:00:00Z"  # P3: 8h
    clock.advance(hours=2)
    outcome = client.post(f"/v1/tickets/{ticket['id']}/messages", json={"text": LEGAL}).json()
    escalated = outcome["ticket"]
    assert (outcome["action"], escalated["urgency"]) == ("escalated", "P1")
    assert escalated["sla"]["first_response_due_at"] == "2026-05-04T12:30:00Z"  # now + 30m
    assert escalated["sla"]["resolution_due_at"] == "2026-05-04T16:00:00Z"  # now + 4h
    assert escalated["sla"]["breached"] == [] and escalated["sla_state"] != "breached"


def test_resolve_keeps_its_reason_masked_and_status_changes_need_no_body(client):
    ticket = post_ticket(client, LATE)
    path = f"/v1/tickets/{ticket['id']}"
    resolved = client.post(
        f"{path}/resolve", json={"actor": "h-chen", "reason": "已退款,客户电话13812345678"}
    )
    assert resolved.status_code == 200, resolved.text
    event = resolved.json()["events"][-1]
    assert (event["kind"], event["actor"]) == ("resolved", "h-chen")
    assert event["detail"] == {"handler": ticket["handler"], "reason": "已退款,客户电话<PHONE>"}
    assert "13812345678" not in resolved.text
    reopened = client.post(f"{path}/reopen")
    assert reopened.status_code == 200, reopened.text
    assert reopened.json()["status"] == "assigned"
    assert client.post(f"{path}/assign").status_code == 200
    again = client.post(f"{path}/resolve")
    assert again.status_code == 200, again.text
    assert again.json()["events"][-1]["detail"] == {"handler": ticket["handler"], "reason": None}


def test_bad_feedback_labels_and_filters_are_named_by_loc(client):
    ticket = post_ticket(client, LATE)
    path = f"/v1/tickets/{ticket['id']}/feedback"
    error = assert_error(
        client.post(path, json={"agent": "a", "topic": "shipping", "secondary_topics": ["x"]}),
        422,
        "invalid_input",
    )
    assert [d["loc"] for d in error["details"]] == [
        ["body", "topic"],
        ["body", "secondary_topics", 0],
    ]
    assert error["message"].startswith("feedback: topic: expected one of [")
    assert "; secondary_topics[0]: expected one of" in error["message"]
    nothing = assert_error(client.post(path, json={"agent": "a"}), 422, "invalid_input")
    assert [d["loc"] for d in nothing["details"]] == [["body"]]
    for name, value in [("urgency", "P9"), ("team", "nope"), ("topic", "shipping")]:
        error = assert_error(client.get("/v1/tickets", params={name: value}), 422, "invalid_input")
        assert [d["loc"] for d in error["details"]] == [["query", name]]
        assert f"{name}: expected one of [" in error["message"]
    unknown = assert_error(client.get("/v1/tickets?tpoic=billing"), 422, "invalid_request")
    assert [d["loc"] for d in unknown["details"]] == [["query", "tpoic"]]


def test_tickets_are_listed_by_topic(client):
    late = post_ticket(client, LATE)
    post_ticket(client, LEGAL)
    logistics = client.get("/v1/tickets", params={"topic": "logistics"}).json()
    assert late["id"] in [t["id"] for t in logistics["items"]]
    assert {t["topic"] for t in logistics["items"]} == {"logistics"}
    assert client.get("/v1/tickets", params={"topic": "billing"}).json()["total"] == 0
