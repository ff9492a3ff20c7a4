"""The public data shapes: one message in, one result out, for the API, the CLI and batch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)


def _whole_number_as_text(value: Any) -> Any:
    """CRMs number their messages and customers: 42 is the id "42" (not a float or a bool)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# An id given by the caller: text, or a whole number taken as its decimal text.
ExternalId = Annotated[
    str, StringConstraints(max_length=200), BeforeValidator(_whole_number_as_text)
]


class Customer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ExternalId | None = None
    tier: str | None = Field(
        default=None, max_length=50, description="one of the taxonomy's tiers, e.g. standard or vip"
    )

    @field_validator("tier")
    @classmethod
    def _tier_as_written_in_the_taxonomy(cls, tier: str | None) -> str | None:
        """Tiers are matched in lower case without surrounding spaces (" VIP " is vip); a
        blank tier is no tier."""
        return (tier.strip().lower() or None) if tier is not None else None


class Message(BaseModel):
    """A customer message as it arrives."""

    model_config = ConfigDict(extra="forbid")

    id: ExternalId | None = None
    text: str
    channel: str | None = Field(default=None, max_length=50)
    customer: Customer | None = None
    product: str | None = Field(
        default=None,
        max_length=50,
        description="the product the message is about, when the caller knows it; fills "
        "{product} in reply drafts (otherwise it is read from the text)",
    )


class CueHit(BaseModel):
    """An urgency signal found in the message (spans index ``masked_text``)."""

    kind: str
    text: str
    start: int | None = Field(description="start offset in masked_text; null for metadata cues")
    end: int | None
    floor: str = Field(description="the lowest urgency this cue allows")
    source: Literal["text", "metadata"] = "text"
    applied: bool = Field(
        default=True,
        description="whether its floor applied: false when its kind's gate stayed closed (the "
        "explanation says why); routing and follow-ups act on applied cues only",
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    engine: str


class ReplyDraft(BaseModel):
    """A suggested reply: filled from the bank, passed the tone check, with why it was chosen."""

    template_id: str
    text: str
    score: float
    reason: str


class TriageResult(BaseModel):
    """Everything decided about one message, with the evidence for each decision."""

    id: str | None
    topic: str
    topic_scores: dict[str, float]
    secondary_topics: list[str]
    sentiment: str
    sentiment_score: float = Field(ge=-1.0, le=1.0, description="P(positive) - P(negative)")
    sentiment_scores: dict[str, float]
    urgency: str
    urgency_scores: dict[str, float] = Field(description="the model's probabilities before cues")
    cues: list[CueHit]
    is_complaint: bool
    complaint_score: float
    needs_review: bool
    review_reasons: list[str]
    explanation: list[str]
    masked_text: str
    channel: str | None
    model: ModelInfo
    replies: list[ReplyDraft] = Field(
        default_factory=list, description="reply drafts, best first (when requested)"
    )
