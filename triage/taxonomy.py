"""The label taxonomy, loaded from data (``triage/data/taxonomy.yaml`` by default)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from triage.resources import load_data_file, packaged_data_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSpec(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name_zh: str
    covers: str


class UrgencySpec(_Strict):
    id: str = Field(pattern=r"^P[0-9]$")
    name: str
    when: str


def _unique(values: list[str], what: str) -> list[str]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique, duplicated: {duplicates}")
    return values


class Taxonomy(_Strict):
    """Label sets for every head. Urgencies are listed most urgent first."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    version: int
    topics: list[TopicSpec] = Field(min_length=2)
    sentiments: list[str] = Field(min_length=2)
    urgencies: list[UrgencySpec] = Field(min_length=2)
    channels: list[str] = Field(min_length=1)
    customer_tiers: list[str] = Field(min_length=1)

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, topics: list[TopicSpec]) -> list[TopicSpec]:
        _unique([t.id for t in topics], "topic ids")
        return topics

    @field_validator("urgencies")
    @classmethod
    def _unique_urgencies(cls, urgencies: list[UrgencySpec]) -> list[UrgencySpec]:
        _unique([u.id for u in urgencies], "urgency ids")
        return urgencies

    @field_validator("sentiments", "channels", "customer_tiers")
    @classmethod
    def _unique_values(cls, values: list[str]) -> list[str]:
        return _unique(values, "values")

    @cached_property
    def topic_ids(self) -> list[str]:
        return [t.id for t in self.topics]

    @cached_property
    def urgency_ids(self) -> list[str]:
        return [u.id for u in self.urgencies]

    def urgency_rank(self, urgency: str) -> int:
        """0 for the most urgent level; larger is less urgent."""
        return self.urgency_ids.index(urgency)

    def unknown(self, field: Literal["channel", "tier"], value: str | None) -> str | None:
        """Why a message's channel or customer tier is not this taxonomy's; None when it is
        (or is not given). Every entry point words the problem alike."""
        allowed = self.channels if field == "channel" else self.customer_tiers
        if value is None or value in allowed:
            return None
        return f"{value!r} is not one of {allowed}"


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Load a taxonomy file; the packaged default when no path is given."""
    return load_data_file(path or packaged_data_path("taxonomy.yaml"), Taxonomy)
