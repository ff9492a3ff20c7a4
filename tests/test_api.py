"""The REST API end to end through TestClient, with the lifespan loading the small model."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import triage.api.app as app_module
from triage.api.app import create_app
from triage.api.deps import get_pipeline
from triage.config import Settings
from triage.errors import ConfigError, InputError, ModelError
from triage.pipeline import TriagePipeline
from triage.schemas import TriageResult

PHONE_TEXT = "我的手机号是13812345678，订单三天了还没发货"
RAW_PHONE = "13812345678"
REGULATOR_TEXT = "再不处理我就去12315投诉"


def small_settings(model_dir: Path) -> Settings:
    return Settings(
        model_dir=model_dir, train_if_missing=False, max_batch_items=5, max_text_length=200
    )


@pytest.fixture(scope="module")
def app(small_model_dir: Path) -> FastAPI:
    return create_app(small_settings(small_model_dir))


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# --- happy paths ---------------------------------------------------------------------------


def test_triage_returns_a_full_result_with_masked_text(client: TestClient) -> None:
    response = client.post(
        "/v1/triage",
        json={"id": "m-1", "text": PHONE_TEXT, "channel": "chat", "customer": {"tier": "vip"}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == set(TriageResult.model_fields)
    result = TriageResult.model_validate(body)
    assert result.id == "m-1"
    assert result.channel == "chat"
    assert "<PHONE>" in result.masked_text
    assert RAW_PHONE not in response.text
    assert isinstance(body["topic_scores"], dict) and result.topic in result.topic_scores
    assert isinstance(body["is_complaint"], bool)
    assert isinstance(body["needs_review"], bool)
    assert -1.0 <= result.sentiment_score <= 1.0
    assert result.urgency in result.urgency_scores
    assert {"kind": "vip", "source": "metadata"}.items() <= body["cues"][-1].items()
    assert set(body["model"]) == {"name", "version", "engine"}


def test_regulator_cue_points_into_masked_text_and_raises_urgency(client: TestClient) -> None:
    result = client.post("/v1/triage", json={"text": REGULATOR_TEXT}).json()
    regulator = [cue for cue in result["cues"] if cue["kind"] == "regulator"]
    assert regulator, result["cues"]
    cue = regulator[0]
    assert result["masked_text"][cue["start"] : cue["end"]] == cue["text"] == "12315"
    assert cue["floor"] == "P1"
    assert result["urgency"] == "P1"


def test_text_at_the_length_limit_is_accepted(client: TestClient) -> None:
    assert client.post("/v1/triage", json={"text": "好" * 200}).status_code == 200


def test_batch_equals_single_in_one_model_call(
    client: TestClient, forward_calls: list[int]
) -> None:
    items = [
        {"id": "a", "text": PHONE_TEXT},
        {"id": "b", "text": REGULATOR_TEXT, "channel": "phone"},
        {"text": "谢谢，问题已经解决了", "customer": {"id": "c-9", "tier": "standard"}},
    ]
    response = client.post("/v1/triage/batch", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 3
    assert forward_calls == [3]
    singles = [client.post("/v1/triage", json=item).json() for item in items]
    assert body["results"] == singles


def test_health_and_readiness(client: TestClient, small_pipeline: TriagePipeline) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": small_pipeline.model_info.model_dump()}


def test_openapi_documents_paths_and_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/triage", "/v1/triage/batch", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "200 characters" in schema["info"]["description"]
    assert "5 items" in schema["info"]["description"]
    error_ref = schema["paths"]["/v1/triage"]["post"]["responses"]["422"]["content"]
    assert error_ref["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert client.get("/docs").status_code == 200


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "loc"),
    [
        ({"text": ""}, "empty_text", ["body", "text"]),
        ({"text": " \n\t\u3000"}, "empty_text", ["body", "text"]),
        ({"text": "<p></p>\u200b\x00"}, "empty_text", ["body", "text"]),  # nothing once normalised
        ({"text": "好" * 201}, "text_too_long", ["body", "text"]),
        ({"text": "你好", "channel": "fax"}, "invalid_channel", ["body", "channel"]),
        ({"text": 123}, "invalid_request", ["body", "text"]),
        ({"channel": "chat"}, "invalid_request", ["body", "text"]),
        ({"text": "你好", "priority": "high"}, "invalid_request", ["body", "priority"]),
        ({"text": "你好", "customer": "vip"}, "invalid_request", ["body", "customer"]),
        (
            {"text": "你好", "customer": {"level": 3}},
            "invalid_request",
            ["body", "customer", "level"],
        ),
        (["你好"], "invalid_request", ["body"]),
        (
            {"text": "你好", "customer": {"tier": "diamond"}},
            "invalid_tier",
            ["body", "customer", "tier"],
        ),
        (
            {"text": "你好", "customer": {"id": "13812345678"}},
            "personal_data_in_id",
            ["body", "customer", "id"],
        ),
        (
            {"text": "你好", "customer": {"id": 13812345678}},
            "personal_data_in_id",
            ["body", "customer", "id"],
        ),
        ({"text": "你好", "id": 4.5}, "invalid_request", ["body", "id"]),
        ({"text": "你好", "id": True}, "invalid_request", ["body", "id"]),
    ],
)
def test_single_bad_input(client: TestClient, body: Any, code: str, loc: list[Any]) -> None:
    error = assert_error(client.post("/v1/triage", json=body), 422, code)
    assert loc in [detail["loc"] for detail in error["details"]]
    assert all(set(detail) == {"loc", "msg", "type"} for detail in error["details"])


def test_too_long_text_message_states_the_limit(client: TestClient) -> None:
    error = assert_error(client.post("/v1/triage", json={"text": "好" * 250}), 422, "text_too_long")
    assert "200" in error["message"] and "250" in error["message"]


def test_malformed_json(client: TestClient) -> None:
    response = client.post(
        "/v1/triage", content=b'{"text": ', headers={"content-type": "application/json"}
    )
    error = assert_error(response, 422, "invalid_request")
    assert error["details"][0]["type"] == "json_invalid"
    assert "not valid JSON" in error["message"]


def test_missing_body(client: TestClient) -> None:
    assert_error(client.post("/v1/triage"), 422, "invalid_request")


def test_a_body_that_is_not_json_is_an_unsupported_media_type(client: TestClient) -> None:
    response = client.post(
        "/v1/triage", content='{"text": "你好"}'.encode(), headers={"content-type": "text/plain"}
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert "'text/plain'" in error["message"]


def test_errors_never_echo_the_submitted_text(client: TestClient) -> None:
    response = client.post("/v1/triage", json={"text": PHONE_TEXT, "unknown": PHONE_TEXT})
    assert_error(response, 422, "invalid_request")
    assert RAW_PHONE not in response.text


def test_batch_too_many_items_states_the_limit(client: TestClient) -> None:
    response = client.post("/v1/triage/batch", json={"items": [{"text": "你好"}] * 6})
    error = assert_error(response, 422, "too_many_items")
    assert "at most 5 items (got 6)" in error["message"]


@pytest.mark.parametrize(
    "body", [{"items": []}, {}, {"items": {"text": "你好"}}, {"items": "你好"}]
)
def test_batch_malformed(client: TestClient, body: dict[str, Any]) -> None:
    error = assert_error(client.post("/v1/triage/batch", json=body), 422, "invalid_request")
    assert error["details"][0]["loc"][:2] == ["body", "items"]


@pytest.mark.parametrize(
    ("bad_item", "code", "field"),
    [
        ({"text": "   "}, "empty_text", "text"),
        ({"text": "<p></p>\u200b"}, "empty_text", "text"),  # nothing left once markup is gone
        ({"text": "好" * 201}, "text_too_long", "text"),
        ({"text": "你好", "channel": "carrier pigeon"}, "invalid_channel", "channel"),
        ({"text": ["你好"]}, "invalid_request", "text"),
        ({"text": "你好", "extra": 1}, "invalid_request", "extra"),
    ],
)
def test_batch_bad_item_is_named_and_nothing_is_processed(
    client: TestClient, forward_calls: list[int], bad_item: dict[str, Any], code: str, field: str
) -> None:
    items = [{"text": "你好"}, {"text": REGULATOR_TEXT}, bad_item, {"text": "谢谢"}]
    error = assert_error(client.post("/v1/triage/batch", json={"items": items}), 422, code)
    assert ["body", "items", 2, field] in [detail["loc"] for detail in error["details"]]
    if code != "invalid_request":
        assert error["message"].startswith(f"items[2].{field}: ")
    assert forward_calls == []


def test_a_body_that_is_not_json_still_gets_its_query_errors(client: TestClient) -> None:
    response = client.get(
        "/v1/tickets", params={"limit": 0}, headers={"content-type": "text/plain"}
    )
    assert_error(response, 422, "invalid_request")


def test_opaque_numeric_customer_ids_and_blank_tiers_are_accepted(client: TestClient) -> None:
    snowflake = "1234567890123456789"  # passes the card checksum, as one number in ten does
    body = {"text": "你好", "customer": {"id": snowflake, "tier": "  "}}
    assert client.post("/v1/triage", json=body).status_code == 200


def test_whole_number_ids_are_taken_as_their_text(client: TestClient) -> None:
    body = {"text": "你好", "id": 42, "customer": {"id": 1001}}
    response = client.post("/v1/triage", json=body)
    assert response.status_code == 200
    assert response.json()["id"] == "42"


def test_a_lone_surrogate_escape_is_replaced_not_a_500(client: TestClient) -> None:
    response = client.post(
        "/v1/triage",
        content=b'{"text": "\\ud83d \xe5\xbf\xab\xe9\x80\x92\xe6\xb2\xa1\xe5\x88\xb0"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["masked_text"] == "\ufffd 快递没到"


def test_customer_tier_is_matched_without_case_or_spaces(client: TestClient) -> None:
    body = {"text": "你好", "customer": {"tier": " VIP "}}
    cues = client.post("/v1/triage", json=body).json()["cues"]
    assert [c["kind"] for c in cues if c["source"] != "text"] == ["vip"]


def test_batch_lists_every_bad_item(client: TestClient) -> None:
    items = [{"text": ""}, {"text": "你好"}, {"text": "好" * 300}]
    error = assert_error(client.post("/v1/triage/batch", json={"items": items}), 422, "empty_text")
    assert [(d["loc"], d["type"]) for d in error["details"]] == [
        (["body", "items", 0, "text"], "empty_text"),
        (["body", "items", 2, "text"], "text_too_long"),
    ]
    assert "1 more" in error["message"]


def test_unknown_path_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    response = client.get("/v1/triage")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


# --- library errors, unexpected errors, logging --------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InputError("text cannot be used"), 422, "invalid_input"),
        (ModelError("/srv/models/v3: unreadable"), 503, "model_error"),
        (ConfigError("/etc/triage/cues.yaml: invalid"), 500, "invalid_config"),
    ],
)
def test_library_errors_are_mapped(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    status: int,
    code: str,
) -> None:
    def fail(self: TriagePipeline, texts: Any) -> Any:
        raise error

    monkeypatch.setattr(TriagePipeline, "_forward", fail)
    response = client.post("/v1/triage", json={"text": "你好"})
    assert_error(response, status, code)
    assert "/srv" not in response.text and "/etc" not in response.text


def test_unexpected_error_gives_a_json_500_without_logging_text(
    small_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> TriagePipeline:
        raise RuntimeError(f"failed on {PHONE_TEXT}")

    app = create_app(small_settings(small_model_dir))
    app.dependency_overrides[get_pipeline] = broken
    with (
        caplog.at_level(logging.INFO, logger="triage"),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        response = client.post("/v1/triage", json={"text": PHONE_TEXT})
    error = assert_error(response, 500, "internal_error")
    assert "RuntimeError" not in error["message"]
    assert "unexpected RuntimeError" in caplog.text
    assert RAW_PHONE not in caplog.text


def test_requests_are_logged_without_text(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="triage"):
        client.post("/v1/triage", json={"text": PHONE_TEXT})
        client.post("/v1/triage/batch", json={"items": [{"text": PHONE_TEXT}, {"text": ""}]})
        client.post("/v1/triage", json={"text": PHONE_TEXT, "oops": True})
    assert "POST /v1/triage 200" in caplog.text
    assert "POST /v1/triage/batch 422" in caplog.text
    assert RAW_PHONE not in caplog.text
    assert "订单" not in caplog.text


# --- startup -------------------------------------------------------------------------------


def test_creating_the_app_does_not_load_the_model(
    small_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_load(settings: Settings) -> TriagePipeline:
        raise AssertionError("create_app loaded the model")

    monkeypatch.setattr(app_module, "load_pipeline", must_not_load)
    app = create_app(small_settings(small_model_dir))
    assert app.state.pipeline is None
    assert isinstance(app_module.app, FastAPI)


def test_serving_raises_the_young_gc_threshold_and_restores_it(small_model_dir: Path) -> None:
    before = gc.get_threshold()
    with TestClient(create_app(small_settings(small_model_dir))):
        assert gc.get_threshold() == (app_module.YOUNG_GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


def test_missing_model_keeps_serving_with_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(small_settings(tmp_path / "no-model"))
    with caplog.at_level(logging.INFO, logger="triage"), TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
        assert_error(client.get("/readyz"), 503, "model_unavailable")
        assert_error(client.post("/v1/triage", json={"text": "你好"}), 503, "model_unavailable")
        batch = client.post("/v1/triage/batch", json={"items": [{"text": "你好"}]})
        assert_error(batch, 503, "model_unavailable")
    assert "no model found" in caplog.text
    assert not (tmp_path / "no-model").exists()


def test_dependency_override_injects_a_pipeline(
    tmp_path: Path, small_pipeline: TriagePipeline
) -> None:
    app = create_app(small_settings(tmp_path / "no-model"))
    app.dependency_overrides[get_pipeline] = lambda: small_pipeline
    with TestClient(app) as client:
        assert client.get("/readyz").json()["model"] == small_pipeline.model_info.model_dump()
        result = client.post("/v1/triage", json={"text": REGULATOR_TEXT}).json()
    assert result["urgency"] == "P1"
    assert result["model"] == small_pipeline.model_info.model_dump()


def test_log_formatter_writes_the_lines_of_the_standard_formatter() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    cached, standard = app_module.LogFormatter(fmt), logging.Formatter(fmt)
    start = 1_763_860_000.0
    # Within one second, across seconds, back in time and with an explicit date format.
    for offset in (0.0, 0.25, 0.999, 1.0, 1.5, 61.004, -3600.2, 0.5, 86_400.75):
        record = logging.LogRecord("triage.api", logging.INFO, __file__, 1, "%s", ("GET",), None)
        record.created = start + offset
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        assert cached.format(record) == standard.format(record)
        assert cached.formatTime(record, "%H:%M") == standard.formatTime(record, "%H:%M")
