"""Routing configuration (validation with precise errors) and routing decisions, rule by rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import cue, make_result
from triage.cues import load_cue_lexicon
from triage.errors import ConfigError
from triage.routing import (
    Candidate,
    Facts,
    Router,
    RoutingConfig,
    choose_handler,
    load_routing,
)
from triage.schemas import Customer
from triage.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()
CUE_KINDS = load_cue_lexicon(TAXONOMY).kinds


@pytest.fixture(scope="module")
def shipped() -> RoutingConfig:
    return load_routing(TAXONOMY, CUE_KINDS)


@pytest.fixture(scope="module")
def router(shipped: RoutingConfig) -> Router:
    return Router(shipped)


def shipped_data() -> dict[str, Any]:
    from triage.resources import packaged_data_path

    data: dict[str, Any] = yaml.safe_load(packaged_data_path("routing.yaml").read_text("utf-8"))
    return data


def test_shipped_configuration_serves_every_topic_with_a_skilled_handler(shipped):
    assert set(shipped.topic_team) == set(TAXONOMY.topic_ids)
    for topic, team in shipped.topic_team.items():
        assert any(h.team == team and topic in h.skills for h in shipped.handlers), topic
    assert set(shipped.sla.targets) == set(TAXONOMY.urgency_ids)


# --- decisions -----------------------------------------------------------------------------

DECISIONS = [
    # (what, result fields, customer, rule, team, skill, preferred handler, notified)
    ("plain logistics complaint", {}, None, "topic_team", "logistics", "logistics", None, ()),
    (
        "refund inquiry goes to its topic team",
        {"topic": "refund", "is_complaint": False, "sentiment": "neutral"},
        None,
        "topic_team",
        "orders",
        "refund",
        None,
        (),
    ),
    (
        "legal threat",
        {"cues": ("legal",), "urgency": "P1"},
        None,
        "legal_or_regulator_threat",
        "escalation",
        "legal",
        None,
        ("sup-sun",),
    ),
    (
        "regulator threat",
        {"cues": ("regulator",), "urgency": "P1", "topic": "billing"},
        None,
        "legal_or_regulator_threat",
        "escalation",
        "legal",
        None,
        ("sup-sun",),
    ),
    (
        "media threat",
        {"cues": ("media",), "urgency": "P1"},
        None,
        "media_threat",
        "escalation",
        "media",
        None,
        ("sup-sun",),
    ),
    (
        "safety comes before legal (rule order)",
        {"cues": ("legal", "safety"), "urgency": "P1", "topic": "quality"},
        None,
        "safety_risk",
        "escalation",
        "safety",
        None,
        ("sup-sun",),
    ),
    (
        "fraud goes to the security desk",
        {"cues": ("fraud",), "urgency": "P1", "topic": "billing"},
        None,
        "fraud_or_account_theft",
        "accounts_tech",
        "fraud",
        None,
        ("sup-qian",),
    ),
    (
        "key customer goes to their account manager",
        {},
        Customer(id="C-20001", tier="vip"),
        "key_account",
        "key_accounts",
        None,
        "am-qin",
        (),
    ),
    (
        "tier is matched without regard to case",
        {},
        Customer(id="C-10001", tier="VIP"),
        "key_account",
        "key_accounts",
        None,
        "am-yang",
        (),
    ),
    (
        "VIP without an account manager falls to the next rule",
        {},
        Customer(id="unknown", tier="vip"),
        "vip_without_manager",
        "key_accounts",
        None,
        None,
        (),
    ),
    (
        "standard customer with an account entry is not a key account",
        {},
        Customer(id="C-20001", tier="standard"),
        "topic_team",
        "logistics",
        "logistics",
        None,
        (),
    ),
    (
        "P1 complaint without a cue goes to its team's escalation team",
        {"urgency": "P1", "topic": "billing"},
        None,
        "critical_complaint",
        "escalation",
        None,
        None,
        ("sup-sun",),
    ),
    (
        "P1 that is not a complaint stays with its topic team",
        {"urgency": "P1", "is_complaint": False, "topic": "billing"},
        None,
        "topic_team",
        "billing",
        "billing",
        None,
        (),
    ),
    (
        "negative social post goes to the public-reply desk",
        {"channel": "social"},
        None,
        "public_negative_post",
        "care",
        "public_reply",
        None,
        (),
    ),
    (
        "neutral social post is routed by topic",
        {"channel": "social", "sentiment": "neutral", "sentiment_score": 0.0},
        None,
        "topic_team",
        "logistics",
        "logistics",
        None,
        (),
    ),
]


@pytest.mark.parametrize(
    ("result_fields", "customer", "rule", "team", "skill", "preferred", "notify"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_routing_decision(router, result_fields, customer, rule, team, skill, preferred, notify):
    decision = router.decide(Facts.of(make_result(**result_fields), customer))
    assert (decision.rule, decision.team, decision.skill) == (rule, team, skill)
    assert decision.preferred_handler == preferred
    assert decision.notify == notify
    assert decision.reason.startswith(f"rule {rule}" if rule != "topic_team" else "no rule")


def test_a_cue_whose_gate_stayed_closed_routes_nothing(router):
    result = make_result(urgency="P4", is_complaint=False, topic="inquiry")
    result.cues = [cue("regulator", "12315", applied=False)]  # "请问12315的电话是多少"
    facts = Facts.of(result, None)
    assert facts.cues == frozenset()
    assert router.decide(facts).rule == "topic_team"


def test_decision_reason_names_the_facts_that_matched(router):
    decision = router.decide(Facts.of(make_result(cues=("media",)), None))
    assert decision.reason == "rule media_threat (cue media): to team escalation; notify sup-sun"


def test_escalation_team_target_falls_back_to_the_topic_team_without_one(shipped):
    data = shipped_data()
    del data["teams"]["billing"]["escalation"]
    config = RoutingConfig.model_validate(data)
    decision = Router(config).decide(Facts.of(make_result(urgency="P1", topic="billing"), None))
    assert decision.team == "billing"
    assert "billing has no escalation team" in decision.reason


@pytest.mark.parametrize(
    ("conditions", "facts_fields", "failed"),
    [
        ({"max_sentiment_score": -0.6}, {"sentiment_score": -0.5}, "max_sentiment_score"),
        ({"max_sentiment_score": -0.6}, {"sentiment_score": -0.7}, None),
        ({"complaint": False}, {"is_complaint": True}, "complaint"),
        ({"channels": ["email"]}, {"channel": None}, "channels"),
        ({"urgencies": ["P1", "P2"], "topics": ["logistics"]}, {"urgency": "P2"}, None),
        ({"urgencies": ["P1", "P2"], "topics": ["refund"]}, {"urgency": "P2"}, "topics"),
    ],
)
def test_conditions_all_hold_and_lists_hold_on_any_value(conditions, facts_fields, failed):
    from triage.routing import Conditions

    facts = Facts.of(make_result(**facts_fields), None)
    assert Conditions(**conditions).failed(facts) == failed


# --- validation ----------------------------------------------------------------------------


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _broken(change: Any) -> dict[str, Any]:
    data = shipped_data()
    change(data)
    return data


INVALID = [
    (
        "unknown topic",
        lambda d: d["teams"]["logistics"]["topics"].append("shipping"),
        "teams.logistics.topics.1: expected one of the topics",
    ),
    (
        "topic served twice",
        lambda d: d["teams"]["care"]["topics"].append("logistics"),
        "teams.care.topics.5: topic 'logistics' is already served by team 'logistics'",
    ),
    (
        "topic nobody serves",
        lambda d: d["teams"]["care"]["topics"].remove("praise"),
        "teams: expected every topic to be served by a team (missing ['praise'])",
    ),
    (
        "topic without a skilled handler",
        lambda d: [
            h["skills"].remove("logistics") for h in d["handlers"] if h["team"] == "logistics"
        ],
        "teams.logistics.topics.0: no handler of team 'logistics' has the skill 'logistics'",
    ),
    (
        "unknown escalation team",
        lambda d: d["teams"]["billing"].update(escalation="legal"),
        "teams.billing.escalation: expected one of the teams",
    ),
    (
        "team escalating to itself",
        lambda d: d["teams"]["escalation"].update(escalation="escalation"),
        "teams.escalation.escalation: a team cannot escalate to itself",
    ),
    (
        "handler in an unknown team",
        lambda d: d["handlers"][0].update(team="logistic"),
        "handlers.0.team: expected one of the teams",
    ),
    (
        "duplicate handler ids",
        lambda d: d["handlers"][1].update(id="h-li"),
        "handlers: expected unique ids (duplicated ['h-li'])",
    ),
    (
        "negative capacity",
        lambda d: d["handlers"][0].update(capacity=-1),
        "handlers.0.capacity: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "unknown cue kind in a rule",
        lambda d: d["rules"][0]["when"].update(cues=["fire"]),
        "rules.0.when.cues.0: expected one of",
    ),
    (
        "unknown channel in a rule",
        lambda d: d["rules"][7]["when"].update(channels=["weibo"]),
        "rules.7.when.channels.0: expected one of",
    ),
    (
        "misspelled rule target",
        lambda d: d["rules"][0].update(to="teem:escalation"),
        "rules.0.to: Value error, expected topic_team, escalation_team, account_manager",
    ),
    (
        "rule to an unknown team",
        lambda d: d["rules"][0].update(to="team:legal"),
        "rules.0.to: expected team:<id> with one of",
    ),
    (
        "rule skill nobody in the team has",
        lambda d: d["rules"][0].update(skill="firefighting"),
        "rules.0.skill: no handler of team 'escalation' has the skill 'firefighting'",
    ),
    (
        "unknown supervisor to notify",
        lambda d: d["rules"][0].update(notify=["sup-nobody"]),
        "rules.0.notify.0: expected one of",
    ),
    (
        "account manager who is not a handler",
        lambda d: d["accounts"].update({"C-9": "am-nobody"}),
        "accounts.C-9: expected one of the handlers",
    ),
    (
        "unknown key in a rule",
        lambda d: d["rules"][0].update(when={"cue": ["safety"]}),
        "rules.0.when.cue: Extra inputs are not permitted",
    ),
    (
        "SLA level missing",
        lambda d: d["sla"]["targets"].pop("P4"),
        "sla.targets: expected one entry per urgency ['P1', 'P2', 'P3', 'P4']",
    ),
    (
        "unreadable duration",
        lambda d: d["sla"]["targets"]["P1"].update(first_response="half an hour"),
        "sla.targets.P1.first_response: Value error, expected a duration such as 30m",
    ),
    (
        "first response later than resolution",
        lambda d: d["sla"]["targets"]["P1"].update(first_response="5h"),
        "sla.targets.P1: first_response must not be later than resolution",
    ),
    (
        "repeat threshold out of range",
        lambda d: d["repeat_contact"].update(threshold=1.5),
        "repeat_contact.threshold: Input should be less than or equal to 1",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_configuration_names_file_key_and_expectation(tmp_path, change, message):
    path = _write(tmp_path, _broken(change))
    with pytest.raises(ConfigError) as error:
        load_routing(TAXONOMY, CUE_KINDS, path)
    assert f"{path}: {message}" in str(error.value)


def test_every_problem_is_reported_at_once(tmp_path):
    def two_problems(data: dict[str, Any]) -> None:
        data["handlers"][0]["team"] = "nowhere"
        data["rules"][1]["notify"] = ["nobody"]

    with pytest.raises(ConfigError) as error:
        load_routing(TAXONOMY, CUE_KINDS, _write(tmp_path, _broken(two_problems)))
    assert "handlers.0.team" in str(error.value)
    assert "rules.1.notify.0" in str(error.value)


# --- choosing a handler --------------------------------------------------------------------

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _handler(hid: str, load: int, capacity: int = 3, **fields: Any) -> Candidate:
    values: dict[str, Any] = {"skills": frozenset({"refund"}), "on_duty": True} | fields
    return Candidate(hid, capacity=capacity, load=load, **values)


CHOICES = [
    ("least loaded wins", [_handler("a", 2), _handler("b", 1)], None, "b"),
    (
        "share of capacity counts, not the count",
        [_handler("a", 2, capacity=10), _handler("b", 1, capacity=2)],
        None,
        "a",
    ),
    ("nobody above capacity", [_handler("a", 3), _handler("b", 3)], None, None),
    (
        "off duty is skipped",
        [_handler("a", 0, on_duty=False), _handler("b", 2)],
        None,
        "b",
    ),
    (
        "skill is required",
        [_handler("a", 0, skills=frozenset({"billing"})), _handler("b", 2)],
        None,
        "b",
    ),
    ("preferred when free", [_handler("a", 0), _handler("b", 2)], "b", "b"),
    ("preferred at capacity is passed over", [_handler("a", 1), _handler("b", 3)], "b", "a"),
    (
        "ties go to whoever waited longest",
        [
            _handler("a", 1, last_assigned_at=T0 + timedelta(minutes=5)),
            _handler("b", 1, last_assigned_at=T0),
            _handler("c", 1, last_assigned_at=T0 + timedelta(minutes=1)),
        ],
        None,
        "b",
    ),
    (
        "never assigned goes first among equals",
        [_handler("a", 1, last_assigned_at=T0), _handler("b", 1)],
        None,
        "b",
    ),
]


@pytest.mark.parametrize(
    ("candidates", "preferred", "chosen"),
    [case[1:] for case in CHOICES],
    ids=[case[0] for case in CHOICES],
)
def test_choose_handler(candidates, preferred, chosen):
    assert choose_handler(candidates, "refund", preferred).handler == chosen


def test_choice_explains_loads_and_why_nobody(shipped):
    choice = choose_handler([_handler("a", 2), _handler("b", 1)], "refund")
    assert choice.reason == "least loaded with skill refund: b 1/3, a 2/3"
    full = choose_handler([_handler("a", 3)], "refund")
    assert full.reason == "all 1 on-duty handlers with skill refund are at capacity"
    absent = choose_handler([_handler("a", 0, on_duty=False)], "refund")
    assert absent.reason == "no on-duty handler with skill refund"


def test_routing_check_command_summarises_or_names_the_problem(tmp_path):
    from click.testing import CliRunner

    from triage.cli import main

    good = CliRunner().invoke(main, ["routing", "check"])
    assert good.exit_code == 0, good.output
    lines = good.output.splitlines()
    assert lines[0].startswith("teams      7: logistics, orders, billing")
    assert "sla P1     first response 30m, resolution 4h" in lines
    assert lines[-1] == "repeat     within 7d, similarity >= 0.4"
    path = _write(tmp_path, _broken(lambda d: d["handlers"][0].update(team="nowhere")))
    bad = CliRunner().invoke(main, ["routing", "check", str(path)])
    assert bad.exit_code == 2
    assert f"error: {path}: handlers.0.team: expected one of the teams" in bad.output
