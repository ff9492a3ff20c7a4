"""Routing configuration and decisions: which team (and maybe which person) a ticket goes to,
which skill it needs, who is notified, and which rule decided it.

The configuration is data (``triage/data/routing.yaml`` by default, ``TRIAGE_ROUTING_PATH`` to
replace it), validated against the taxonomy and the cue lexicon in use. The functions here are
pure: the ticket store supplies handler loads and applies the decision inside a transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from triage.errors import ConfigError
from triage.resources import load_data_file, packaged_data_path
from triage.schemas import Customer, TriageResult
from triage.sla import Duration, SlaPolicy
from triage.taxonomy import Taxonomy

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Rule targets: the team serving the topic, that team's escalation team, the customer's account
# manager, a named team or a named handler.
_TARGET = re.compile(r"^(?:topic_team|escalation_team|account_manager|(team|handler):(.+))$")
TOPIC_RULE = "topic_team"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeamSpec(_Strict):
    name: str = Field(min_length=1)
    topics: list[str] = Field(default_factory=list, description="topics this team serves")
    escalation: str | None = Field(default=None, description="team that takes its escalations")
    supervisor: str | None = Field(default=None, description="notified when it escalates")


class HandlerSpec(_Strict):
    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1)
    team: str
    skills: list[str] = Field(default_factory=list)
    capacity: int = Field(ge=0, le=1000, description="open tickets held at most")
    on_duty: bool = True


class SupervisorSpec(_Strict):
    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1)
    contact: str | None = None


class Conditions(_Strict):
    """All given conditions must hold; a list condition holds when any of its values does."""

    topics: list[str] | None = None
    urgencies: list[str] | None = None
    cues: list[str] | None = Field(default=None, description="cue kinds, e.g. legal or media")
    sentiments: list[str] | None = None
    channels: list[str] | None = None
    customer_tiers: list[str] | None = None
    complaint: bool | None = None
    max_sentiment_score: float | None = Field(default=None, ge=-1.0, le=1.0)

    def failed(self, facts: Facts) -> str | None:
        """The first condition that does not hold, or None when the rule applies."""
        checks: tuple[tuple[str, list[str] | None, Iterable[str]], ...] = (
            ("topics", self.topics, [facts.topic]),
            ("urgencies", self.urgencies, [facts.urgency]),
            ("cues", self.cues, facts.cues),
            ("sentiments", self.sentiments, [facts.sentiment]),
            ("channels", self.channels, [facts.channel] if facts.channel else []),
            ("customer_tiers", self.customer_tiers, [facts.tier] if facts.tier else []),
        )
        for name, wanted, present in checks:
            if wanted is not None and not set(wanted) & set(present):
                return name
        if self.complaint is not None and self.complaint != facts.is_complaint:
            return "complaint"
        if (
            self.max_sentiment_score is not None
            and facts.sentiment_score > self.max_sentiment_score
        ):
            return "max_sentiment_score"
        return None

    def describe(self, facts: Facts) -> str:
        """The facts that made the rule apply, e.g. ``cue legal, customer tier vip``."""
        parts = []
        if self.topics:
            parts.append(f"topic {facts.topic}")
        if self.urgencies:
            parts.append(f"urgency {facts.urgency}")
        if self.cues:
            parts.append("cue " + ", ".join(sorted(set(self.cues) & set(facts.cues))))
        if self.sentiments:
            parts.append(f"sentiment {facts.sentiment}")
        if self.channels:
            parts.append(f"channel {facts.channel}")
        if self.customer_tiers:
            parts.append(f"customer tier {facts.tier}")
        if self.complaint is not None:
            parts.append("complaint" if facts.is_complaint else "not a complaint")
        if self.max_sentiment_score is not None:
            parts.append(f"sentiment score {facts.sentiment_score:+.2f}")
        return ", ".join(parts) or "always"


class RuleSpec(_Strict):
    id: str = Field(pattern=_ID)
    description: str = ""
    when: Conditions = Field(default_factory=Conditions)
    to: str = Field(
        description="topic_team, escalation_team, account_manager, team:<id> or handler:<id>"
    )
    skill: str | None = Field(default=None, description="skill required instead of the topic")
    notify: list[str] = Field(default_factory=list, description="supervisor ids")

    @field_validator("to")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if not _TARGET.match(value):
            raise ValueError(
                "expected topic_team, escalation_team, account_manager, team:<id> or "
                f"handler:<id> (got {value!r})"
            )
        return value


class RepeatContactSpec(_Strict):
    window: Duration = Field(description="how far back a customer's tickets are compared")
    threshold: float = Field(gt=0.0, le=1.0, description="character-bigram cosine to link")


class RoutingConfig(_Strict):
    """The whole routing file; see docs/tickets.md for the format."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    version: int
    teams: dict[str, TeamSpec] = Field(min_length=1)
    supervisors: list[SupervisorSpec] = Field(default_factory=list)
    handlers: list[HandlerSpec] = Field(min_length=1)
    accounts: dict[str, str] = Field(
        default_factory=dict, description="customer id -> id of their account manager"
    )
    rules: list[RuleSpec] = Field(default_factory=list)
    sla: SlaPolicy
    repeat_contact: RepeatContactSpec

    @cached_property
    def handler_by_id(self) -> dict[str, HandlerSpec]:
        return {h.id: h for h in self.handlers}

    @cached_property
    def topic_team(self) -> dict[str, str]:
        return {topic: team for team, spec in self.teams.items() for topic in spec.topics}

    def problems(self, taxonomy: Taxonomy, cue_kinds: Iterable[str]) -> list[str]:
        """Every reference that does not resolve, as ``key.path: expected ... (got ...)``."""
        found: list[str] = []
        supervisors = [s.id for s in self.supervisors]
        team_ids = list(self.teams)
        handler_ids = [h.id for h in self.handlers]
        kinds = sorted(cue_kinds)

        def expect(key: str, value: object, allowed: Sequence[object], what: str) -> None:
            if value not in allowed:
                found.append(f"{key}: expected {what} {list(allowed)} (got {value!r})")

        found += _duplicates("supervisors", supervisors) + _duplicates("handlers", handler_ids)
        found += _duplicates("rules", [r.id for r in self.rules])
        served: dict[str, str] = {}
        for team_id, team in self.teams.items():
            where = f"teams.{team_id}"
            if not re.match(_ID, team_id):
                found.append(f"{where}: expected an id matching {_ID} (got {team_id!r})")
            if team.escalation is not None:
                expect(f"{where}.escalation", team.escalation, team_ids, "one of the teams")
                if team.escalation == team_id:
                    found.append(f"{where}.escalation: a team cannot escalate to itself")
            if team.supervisor is not None:
                expect(
                    f"{where}.supervisor", team.supervisor, supervisors, "one of the supervisors"
                )
            for index, topic in enumerate(team.topics):
                expect(f"{where}.topics.{index}", topic, taxonomy.topic_ids, "one of the topics")
                if topic in served:
                    found.append(
                        f"{where}.topics.{index}: topic {topic!r} is already served by team "
                        f"{served[topic]!r}"
                    )
                served.setdefault(topic, team_id)
                if not any(h.team == team_id and topic in h.skills for h in self.handlers):
                    found.append(
                        f"{where}.topics.{index}: no handler of team {team_id!r} has the skill "
                        f"{topic!r}, so its tickets could never be assigned"
                    )
        missing = [t for t in taxonomy.topic_ids if t not in served]
        if missing:
            found.append(f"teams: expected every topic to be served by a team (missing {missing})")
        for index, handler in enumerate(self.handlers):
            expect(f"handlers.{index}.team", handler.team, team_ids, "one of the teams")
        for customer, manager in self.accounts.items():
            expect(f"accounts.{customer}", manager, handler_ids, "one of the handlers")
        allowed = {
            "topics": taxonomy.topic_ids,
            "urgencies": taxonomy.urgency_ids,
            "cues": kinds,
            "sentiments": taxonomy.sentiments,
            "channels": taxonomy.channels,
            "customer_tiers": taxonomy.customer_tiers,
        }
        for index, rule in enumerate(self.rules):
            where = f"rules.{index}"
            for field, values in allowed.items():
                for position, value in enumerate(getattr(rule.when, field) or []):
                    expect(f"{where}.when.{field}.{position}", value, values, "one of")
            kind, _, name = rule.to.partition(":")
            if kind == "team":
                expect(f"{where}.to", name, team_ids, "team:<id> with one of")
                if rule.skill and not any(
                    h.team == name and rule.skill in h.skills for h in self.handlers
                ):
                    found.append(
                        f"{where}.skill: no handler of team {name!r} has the skill {rule.skill!r}"
                    )
            elif kind == "handler":
                expect(f"{where}.to", name, handler_ids, "handler:<id> with one of")
            for position, supervisor in enumerate(rule.notify):
                expect(f"{where}.notify.{position}", supervisor, supervisors, "one of")
        levels = sorted(self.sla.targets)
        if levels != sorted(taxonomy.urgency_ids):
            found.append(
                f"sla.targets: expected one entry per urgency {taxonomy.urgency_ids} (got {levels})"
            )
        for level, target in self.sla.targets.items():
            if target.first_response > target.resolution:
                found.append(
                    f"sla.targets.{level}: first_response must not be later than resolution"
                )
        return found


def _duplicates(key: str, ids: list[str]) -> list[str]:
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    return [f"{key}: expected unique ids (duplicated {repeated})"] if repeated else []


def load_routing(
    taxonomy: Taxonomy, cue_kinds: Iterable[str], path: Path | None = None
) -> RoutingConfig:
    """Load a routing file and check every reference in it against the taxonomy and cues."""
    path = path or packaged_data_path("routing.yaml")
    config = load_data_file(path, RoutingConfig)
    problems = config.problems(taxonomy, cue_kinds)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return config


@dataclass(frozen=True)
class Facts:
    """What routing rules can look at, taken from a triage result and the customer."""

    topic: str
    urgency: str
    cues: frozenset[str]
    sentiment: str
    sentiment_score: float
    is_complaint: bool
    channel: str | None
    tier: str | None
    customer_id: str | None

    @classmethod
    def of(cls, result: TriageResult, customer: Customer | None) -> Facts:
        return cls(
            topic=result.topic,
            urgency=result.urgency,
            cues=frozenset(cue.kind for cue in result.cues if cue.applied),
            sentiment=result.sentiment,
            sentiment_score=result.sentiment_score,
            is_complaint=result.is_complaint,
            channel=result.channel,
            tier=customer.tier if customer else None,
            customer_id=customer.id if customer else None,
        )


@dataclass(frozen=True)
class RouteDecision:
    """Where a ticket goes and why. ``skill`` is what its handler needs (None: anyone in the
    team); ``preferred_handler`` gets it when on duty and below capacity."""

    rule: str
    team: str
    skill: str | None
    preferred_handler: str | None
    notify: tuple[str, ...]
    reason: str


class Router:
    """Applies the ordered rules of a configuration; the first rule that applies decides, and
    a ticket no rule takes goes to the team serving its topic."""

    def __init__(self, config: RoutingConfig):
        self.config = config

    def decide(self, facts: Facts) -> RouteDecision:
        for rule in self.config.rules:
            if rule.when.failed(facts) is not None:
                continue
            decision = self._apply(rule, facts)
            if decision is not None:
                return decision
        team = self.config.topic_team[facts.topic]
        return RouteDecision(
            rule=TOPIC_RULE,
            team=team,
            skill=facts.topic,
            preferred_handler=None,
            notify=(),
            reason=f"no rule applied: team {team} serves topic {facts.topic}",
        )

    def _apply(self, rule: RuleSpec, facts: Facts) -> RouteDecision | None:
        """The rule's decision, or None when its target does not exist for this ticket (a
        customer without an account manager), so that the next rule is tried."""
        kind, _, name = rule.to.partition(":")
        topic_team = self.config.topic_team[facts.topic]
        preferred = None
        if rule.to == "topic_team":
            team, target = topic_team, f"team {topic_team} (serves {facts.topic})"
        elif rule.to == "escalation_team":
            escalation = self.config.teams[topic_team].escalation
            team = escalation or topic_team
            target = (
                f"escalation team {team} of {topic_team}"
                if escalation
                else f"team {team} ({topic_team} has no escalation team)"
            )
        elif rule.to == "account_manager":
            preferred = self.config.accounts.get(facts.customer_id or "")
            if preferred is None:
                return None
            team = self.config.handler_by_id[preferred].team
            target = f"account manager {preferred} (team {team})"
        elif kind == "handler":
            preferred, team = name, self.config.handler_by_id[name].team
            target = f"handler {preferred} (team {team})"
        else:
            team, target = name, f"team {name}"
        skill = rule.skill or (
            facts.topic if facts.topic in self.config.teams[team].topics else None
        )
        notify = tuple(rule.notify)
        reason = f"rule {rule.id} ({rule.when.describe(facts)}): to {target}"
        if notify:
            reason += f"; notify {', '.join(notify)}"
        return RouteDecision(rule.id, team, skill, preferred, notify, reason)

    def escalation_of(self, team: str) -> str | None:
        return self.config.teams[team].escalation

    def skill_in(self, team: str, topic: str) -> str | None:
        """The skill a ticket about ``topic`` needs in ``team``: the topic if the team serves
        it, otherwise none (escalation and key-account teams take any topic)."""
        return topic if topic in self.config.teams[team].topics else None


@dataclass(frozen=True)
class Candidate:
    """A handler as assignment sees them at one moment."""

    id: str
    skills: frozenset[str]
    capacity: int
    load: int
    on_duty: bool
    last_assigned_at: datetime | None = None


@dataclass(frozen=True)
class Choice:
    handler: str | None
    reason: str


def choose_handler(
    candidates: Sequence[Candidate], skill: str | None, preferred: str | None = None
) -> Choice:
    """The preferred handler when able and free, otherwise the least-loaded able one (by share
    of capacity in use, then open tickets, then the longest without a new ticket, so equal
    handlers take turns); nobody when every able handler is at capacity."""
    needs = f" with skill {skill}" if skill else ""
    able = [c for c in candidates if c.on_duty and (skill is None or skill in c.skills)]
    if not able:
        return Choice(None, f"no on-duty handler{needs}")
    free = [c for c in able if c.load < c.capacity]
    if not free:
        return Choice(None, f"all {len(able)} on-duty handlers{needs} are at capacity")
    by_id = {c.id: c for c in free}
    if preferred in by_id:
        chosen = by_id[preferred]
        return Choice(chosen.id, f"preferred handler {chosen.id} ({chosen.load}/{chosen.capacity})")
    ranked = sorted(
        free,
        key=lambda c: (
            c.load / c.capacity,
            c.load,
            c.last_assigned_at is not None,
            c.last_assigned_at or datetime.min,
            c.id,
        ),
    )
    chosen = ranked[0]
    loads = ", ".join(f"{c.id} {c.load}/{c.capacity}" for c in ranked)
    lead = f"preferred handler {preferred} unavailable; " if preferred else ""
    return Choice(chosen.id, f"{lead}least loaded{needs}: {loads}")
