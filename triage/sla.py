"""Service-level targets: when a ticket must first be answered and resolved, and whether it is on
track, at risk or breached at a given moment. Pure functions of times, so a fixed clock makes
every decision reproducible."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

Clock = Callable[[], datetime]

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_duration(value: object) -> timedelta:
    """``30m``, ``4h``, ``2d`` or ``1d12h`` (or a whole number of minutes) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return timedelta(minutes=value)
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"expected a duration such as 30m, 4h, 2d or 1d12h (got {value!r})")
    days, hours, minutes = (int(part or 0) for part in match.groups())
    duration = timedelta(days=days, hours=hours, minutes=minutes)
    if not duration:
        raise ValueError(f"expected a duration longer than zero (got {value!r})")
    return duration


def format_duration(duration: timedelta) -> str:
    """The inverse of :func:`parse_duration` (``timedelta(hours=36)`` → ``1d12h``)."""
    minutes = int(duration.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    text = (f"{days}d" if days else "") + (f"{hours}h" if hours else "")
    return text + (f"{minutes}m" if minutes or not text else "")


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlaTarget(_Strict):
    first_response: Duration
    resolution: Duration


class SlaPolicy(_Strict):
    """Targets per urgency level; a ticket is *at risk* once less than ``at_risk_fraction`` of the
    time allowed for a clock is left."""

    targets: dict[str, SlaTarget] = Field(min_length=1)
    at_risk_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)

    def deadlines(self, urgency: str, created_at: datetime) -> tuple[datetime, datetime]:
        target = self.targets[urgency]
        return created_at + target.first_response, created_at + target.resolution

    def raised(
        self, urgency: str, now: datetime, due: tuple[datetime, datetime]
    ) -> tuple[datetime, datetime]:
        """Deadlines once urgency rises to ``urgency`` at ``now``: each comes forward to now plus
        the level's target, never later than it was. Counted from creation instead, a ticket
        escalated late would be breached the moment it is escalated."""
        first, resolution = self.deadlines(urgency, now)
        return min(due[0], first), min(due[1], resolution)

    def lowered(
        self, urgency: str, created_at: datetime, due: tuple[datetime, datetime]
    ) -> tuple[datetime, datetime]:
        """Deadlines once an agent lowers urgency to ``urgency``: the level's targets from
        creation (the ticket never was more urgent), never earlier than they were, so a lowered
        urgency cannot breach a ticket that was on time."""
        first, resolution = self.deadlines(urgency, created_at)
        return max(due[0], first), max(due[1], resolution)


SlaState = Literal["on_track", "at_risk", "breached", "met"]
ClockName = Literal["first_response", "resolution"]


@dataclass(frozen=True)
class Clocks:
    """The two SLA clocks of a ticket: when each was due and when (if) it stopped."""

    created_at: datetime
    first_response_due_at: datetime
    resolution_due_at: datetime
    first_responded_at: datetime | None
    resolved_at: datetime | None


class SlaStatus(BaseModel):
    """Where a ticket stands against its targets at ``now``."""

    state: SlaState = Field(
        description="breached if any clock missed its deadline, at_risk if a running clock has "
        "little time left, met once both clocks stopped in time"
    )
    due_at: datetime | None = Field(description="the next deadline of a running clock")
    first_response_due_at: datetime
    resolution_due_at: datetime
    first_responded_at: datetime | None
    resolved_at: datetime | None
    breached: list[ClockName]
    at_risk: list[ClockName]


def sla_status(clocks: Clocks, now: datetime, at_risk_fraction: float) -> SlaStatus:
    """A clock is breached once it stopped late or is still running past its deadline."""
    timers: tuple[tuple[ClockName, datetime, datetime | None], ...] = (
        ("first_response", clocks.first_response_due_at, clocks.first_responded_at),
        ("resolution", clocks.resolution_due_at, clocks.resolved_at),
    )
    breached: list[ClockName] = []
    at_risk: list[ClockName] = []
    running: list[datetime] = []
    for name, due, stopped in timers:
        if (stopped or now) > due:
            breached.append(name)
        elif due - now < (due - clocks.created_at) * at_risk_fraction and stopped is None:
            at_risk.append(name)
        if stopped is None:
            running.append(due)
    state: SlaState = (
        "breached" if breached else "at_risk" if at_risk else "on_track" if running else "met"
    )
    return SlaStatus(
        state=state,
        due_at=min(running) if running else None,
        first_response_due_at=clocks.first_response_due_at,
        resolution_due_at=clocks.resolution_due_at,
        first_responded_at=clocks.first_responded_at,
        resolved_at=clocks.resolved_at,
        breached=breached,
        at_risk=at_risk,
    )
