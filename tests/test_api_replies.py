"""Reply drafts through the REST API: in triage results, on their own, and the tone check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.test_api import assert_error, small_settings
from triage.api.app import create_app
from triage.replies import check_reply, load_tone_rules

LATE = "订单号DD20241101的快递五天了还没到，我是王女士，麻烦尽快处理"


@pytest.fixture(scope="module")
def client(small_model_dir: Path) -> Iterator[TestClient]:
    settings = small_settings(small_model_dir).model_copy(
        update={"company_name": "安心家电", "hotline": "400-800-1234"}
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_triage_results_carry_filled_drafts_that_pass_the_tone_check(client):
    body = client.post("/v1/triage", json={"text": LATE, "channel": "chat"}).json()
    replies = body["replies"]
    assert 1 <= len(replies) <= 3
    assert [r["score"] for r in replies] == sorted((r["score"] for r in replies), reverse=True)
    rules = load_tone_rules()
    for reply in replies:
        assert reply["template_id"].startswith(body["topic"] + ".") or body["secondary_topics"]
        assert reply["reason"].startswith("topic ")
        assert "{" not in reply["text"] and "[[" not in reply["text"]
        assert reply["text"].startswith("王女士")
        chat = reply["template_id"].endswith(".chat")
        assert check_reply(reply["text"], rules, chat=chat).passed, reply
    assert any("DD20241101" in r["text"] or "400-800-1234" in r["text"] for r in replies)


def test_batch_results_carry_drafts_too(client):
    body = client.post("/v1/triage/batch", json={"items": [{"text": LATE}]}).json()
    assert body["results"][0]["replies"]


def test_suggest_serves_drafts_on_their_own(client):
    response = client.post("/v1/replies/suggest", json={"text": LATE})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"replies", "topic", "urgency"}
    assert body["replies"]


def test_suggest_rejects_empty_text(client):
    assert_error(client.post("/v1/replies/suggest", json={"text": "  "}), 422, "empty_text")


def test_check_flags_blame_with_a_span_and_a_rewrite(client):
    draft = "您好，这是您自己没看说明导致的，感谢反馈。"
    body = client.post("/v1/replies/check", json={"draft": draft}).json()
    assert body["passed"] is False and body["score"] < 1
    blame = [f for f in body["findings"] if f["kind"] == "blame"]
    assert blame and blame[0]["text"] == "您自己" and blame[0]["suggestion"]
    assert draft[blame[0]["start"] : blame[0]["end"]] == "您自己"
    missing = {f["kind"] for f in body["findings"] if f["start"] is None}
    assert {"apology", "time_frame", "follow_up"} <= missing


def test_check_passes_a_good_draft_and_uses_the_message_for_context(client):
    draft = (
        "王女士您好，感谢您的反馈，非常抱歉让您久等了。"
        "我们已催促快递加急派送，预计明天送达，届时会通知您。"
    )
    body = client.post("/v1/replies/check", json={"draft": draft, "message": LATE}).json()
    assert body == {"score": 1.0, "passed": True, "findings": []}
    # Thanks for praise needs no apology once the message shows it is not a complaint.
    thanks = "李先生您好，感谢您的表扬！我们会在本周内转达给师傅，后续有需要随时联系我们。"
    assert not client.post("/v1/replies/check", json={"draft": thanks}).json()["passed"]
    praise = {"draft": thanks, "message": "非常感谢你们，问题已经解决了，服务很好！"}
    assert client.post("/v1/replies/check", json=praise).json()["passed"]


def test_check_rejects_an_empty_draft(client):
    assert_error(client.post("/v1/replies/check", json={"draft": ""}), 422, "invalid_request")
    for blank in ("   ", "\u200b", "<p></p>"):
        error = assert_error(
            client.post("/v1/replies/check", json={"draft": blank}), 422, "empty_text"
        )
        assert error["details"][0]["loc"] == ["body", "draft"]


def test_check_names_the_message_field_when_the_message_is_unusable(client):
    for message in ("   ", "<p></p>"):
        body = {"draft": "您好", "message": message}
        error = assert_error(client.post("/v1/replies/check", json=body), 422, "empty_text")
        assert error["details"][0]["loc"] == ["body", "message"]


def test_check_rejects_an_unknown_channel(client):
    response = client.post("/v1/replies/check", json={"draft": "您好", "channel": "fax"})
    error = assert_error(response, 422, "invalid_channel")
    assert error["details"][0]["loc"] == ["body", "channel"]
