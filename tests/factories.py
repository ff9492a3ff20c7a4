"""Triage results made by hand, for tests of decisions that only read a result."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from triage.schemas import CueHit, ModelInfo, TriageResult

FLOORS = {
    "safety": "P1",
    "legal": "P1",
    "regulator": "P1",
    "media": "P1",
    "fraud": "P1",
    "repeat_contact": "P2",
    "vip": "P2",
    "anger": "P2",
}


def cue(kind: str, text: str = "x", applied: bool = True) -> CueHit:
    return CueHit(kind=kind, text=text, start=0, end=len(text), floor=FLOORS[kind], applied=applied)


def make_result(
    *,
    topic: str = "logistics",
    urgency: str = "P3",
    cues: tuple[str, ...] = (),
    sentiment: str = "negative",
    sentiment_score: float = -0.5,
    is_complaint: bool = True,
    complaint_score: float | None = None,
    channel: str | None = "chat",
    text: str = "快递还没到",
    **extra: Any,
) -> TriageResult:
    return TriageResult(
        id=None,
        topic=topic,
        topic_scores={topic: 0.9},
        secondary_topics=[],
        sentiment=sentiment,
        sentiment_score=sentiment_score,
        sentiment_scores={sentiment: 0.9},
        urgency=urgency,
        urgency_scores={urgency: 0.9},
        cues=[cue(kind) for kind in cues],
        is_complaint=is_complaint,
        complaint_score=complaint_score if complaint_score is not None else float(is_complaint),
        needs_review=False,
        review_reasons=[],
        explanation=[],
        masked_text=text,
        channel=channel,
        model=ModelInfo(name="test", version="0", engine="linear"),
        **extra,
    )


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
