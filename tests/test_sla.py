"""SLA durations and the state of a ticket's two clocks at fixed moments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from triage.sla import Clocks, SlaPolicy, format_duration, parse_duration, sla_status

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("30m", timedelta(minutes=30)),
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1d12h", timedelta(hours=36)),
        ("1h30m", timedelta(minutes=90)),
        (45, timedelta(minutes=45)),
    ],
)
def test_durations_parse_and_format_back(text, duration):
    assert parse_duration(text) == duration
    assert parse_duration(format_duration(duration)) == duration


@pytest.mark.parametrize("bad", ["", "4 hours", "h", "0m", "-5m", 0, True, 1.5, "2w"])
def test_bad_durations_say_what_is_expected(bad):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


POLICY = SlaPolicy.model_validate(
    {
        "targets": {
            "P1": {"first_response": "30m", "resolution": "4h"},
            "P3": {"first_response": "8h", "resolution": "3d"},
        },
        "at_risk_fraction": 0.25,
    }
)


def clocks(urgency: str = "P1", responded: timedelta | None = None, resolved=None) -> Clocks:
    first, resolution = POLICY.deadlines(urgency, T0)
    return Clocks(
        T0,
        first,
        resolution,
        T0 + responded if responded is not None else None,
        T0 + resolved if resolved is not None else None,
    )


STATES = [
    # (what, clocks, minutes after creation, state, breached, at risk, due in minutes)
    ("fresh", clocks(), 0, "on_track", [], [], 30),
    ("first response running out", clocks(), 25, "at_risk", [], ["first_response"], 30),
    ("exactly at the deadline is not late", clocks(), 30, "at_risk", [], ["first_response"], 30),
    ("first response missed", clocks(), 31, "breached", ["first_response"], [], 30),
    ("answered in time", clocks(responded=timedelta(minutes=10)), 60, "on_track", [], [], 240),
    (
        "answered late stays breached",
        clocks(responded=timedelta(minutes=40)),
        60,
        "breached",
        ["first_response"],
        [],
        240,
    ),
    (
        "resolution running out",
        clocks(responded=timedelta(minutes=5)),
        200,
        "at_risk",
        [],
        ["resolution"],
        240,
    ),
    (
        "both met",
        clocks(responded=timedelta(minutes=5), resolved=timedelta(hours=1)),
        600,
        "met",
        [],
        [],
        None,
    ),
    (
        "resolved late",
        clocks(responded=timedelta(minutes=5), resolved=timedelta(hours=5)),
        600,
        "breached",
        ["resolution"],
        [],
        None,
    ),
    (
        "never answered, resolution passed too",
        clocks(),
        300,
        "breached",
        ["first_response", "resolution"],
        [],
        30,
    ),
    ("P3 has longer targets", clocks("P3"), 60, "on_track", [], [], 480),
]


@pytest.mark.parametrize(
    ("timer", "minutes", "state", "breached", "at_risk", "due_in"),
    [case[1:] for case in STATES],
    ids=[case[0] for case in STATES],
)
def test_sla_state_at_a_fixed_moment(timer, minutes, state, breached, at_risk, due_in):
    status = sla_status(timer, T0 + timedelta(minutes=minutes), POLICY.at_risk_fraction)
    assert status.state == state
    assert status.breached == breached
    assert status.at_risk == at_risk
    assert status.due_at == (T0 + timedelta(minutes=due_in) if due_in is not None else None)


def test_a_raised_urgency_counts_its_targets_from_now_and_never_postpones():
    created = POLICY.deadlines("P3", T0)
    late = T0 + timedelta(hours=2)
    assert POLICY.raised("P1", late, created) == (
        late + timedelta(minutes=30),
        late + timedelta(hours=4),
    )
    # Already due sooner than the new target from now: unchanged.
    nearly = (T0 + timedelta(minutes=10), T0 + timedelta(hours=1))
    assert POLICY.raised("P1", T0, nearly) == nearly


def test_a_lowered_urgency_counts_from_creation_and_never_brings_deadlines_forward():
    p1 = POLICY.deadlines("P1", T0)
    assert POLICY.lowered("P3", T0, p1) == POLICY.deadlines("P3", T0)
    raised_late = (T0 + timedelta(hours=10), T0 + timedelta(days=4))
    assert POLICY.lowered("P3", T0, raised_late) == raised_late
