"""What a customer's follow-up on a ticket means: a new complaint, a confirmation that the problem
is solved, thanks, or more about the same problem. The decision uses the pipeline's result of the
follow-up (complaint score, sentiment, cues) and a small lexicon of closing phrases (data:
``triage/data/followups.yaml``), and says why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from triage.cues import NegationSpec
from triage.resources import load_data_file, packaged_data_path
from triage.schemas import TriageResult

FollowupKind = Literal["new_complaint", "resolved", "thanks", "update"]


class FollowupLexicon(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    negation: NegationSpec
    question_after: list[str] = Field(default_factory=list)
    thanks: list[str] = Field(min_length=1)
    resolved: list[str] = Field(min_length=1)
    unresolved: list[str] = Field(default_factory=list)

    def find(self, phrases: list[str], text: str) -> tuple[list[str], list[str]]:
        """Phrases stated in ``text``, and phrases negated there (``还没解决``); a phrase asked
        about (``解决了吗``) counts as neither."""
        stated: list[str] = []
        negated: list[str] = []
        lowered = text.lower()
        for phrase in phrases:
            start = lowered.find(phrase)
            while start != -1:
                after = lowered[start + len(phrase) :]
                if not any(after.startswith(mark) for mark in self.question_after):
                    negation = self.negation.negates(lowered, start)
                    (negated if negation else stated).append(text[start : start + len(phrase)])
                start = lowered.find(phrase, start + 1)
        return stated, negated


def load_followup_lexicon(path: Path | None = None) -> FollowupLexicon:
    return load_data_file(path or packaged_data_path("followups.yaml"), FollowupLexicon)


@dataclass(frozen=True)
class FollowupDecision:
    kind: FollowupKind
    reasons: tuple[str, ...]


def classify_followup(
    result: TriageResult, lexicon: FollowupLexicon, top_urgency: str
) -> FollowupDecision:
    """Severe cues come first: "thanks, but I will sue" is a new complaint. Then a problem that
    persists (a negated closing phrase such as "还没解决", or "没收到") reopens the ticket to
    its handler, even though such a message reads as a negative complaint; any other negative
    complaint is a new one."""
    severe = [cue for cue in result.cues if cue.floor == top_urgency and cue.applied]
    if severe:
        cues = ", ".join(f"{cue.kind} {cue.text!r}" for cue in severe)
        return FollowupDecision("new_complaint", (f"{top_urgency} cue: {cues}",))
    text = result.masked_text
    resolved, negated = lexicon.find(lexicon.resolved, text)
    unresolved = negated + lexicon.find(lexicon.unresolved, text)[0]
    if unresolved:
        return FollowupDecision(
            "update", (f"says the problem persists: {', '.join(map(repr, unresolved))}",)
        )
    if result.is_complaint and result.sentiment == "negative":
        return FollowupDecision(
            "new_complaint",
            (
                f"complaint ({result.complaint_score:.2f}) with negative sentiment "
                f"({result.sentiment_score:+.2f})",
            ),
        )
    thanks, _ = lexicon.find(lexicon.thanks, text)
    calm = f"not a complaint ({result.complaint_score:.2f})" if not result.is_complaint else ""
    mood = f"sentiment {result.sentiment} ({result.sentiment_score:+.2f})"
    if resolved:
        reasons = [f"confirms resolution: {', '.join(map(repr, resolved))}", calm or mood]
        return FollowupDecision("resolved", tuple(reasons))
    if thanks and result.sentiment != "negative":
        return FollowupDecision(
            "thanks", (f"thanks: {', '.join(map(repr, thanks))}", *(p for p in (calm, mood) if p))
        )
    return FollowupDecision(
        "update", ("no closing phrase and no new complaint: more about the same problem", mood)
    )
