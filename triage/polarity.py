"""Polarity lexicon: general positive and negative evaluative words, with negation.

The lexicon is data (``triage/data/polarity_lexicon.yaml``). The linear engine can count its
hits as two features (``LinearConfig.polarity_lexicon``): a model then learns one weight for
"a positive word" and one for "a negative word", which carry to words and domains its training
rows rarely show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from triage.cues import NegationSpec, trie_pattern
from triage.resources import compilable_patterns, load_data_file, packaged_data_path


@dataclass(frozen=True)
class PolarityHit:
    """One lexicon word in a text; ``positive`` already accounts for a negation before it."""

    text: str
    start: int
    end: int
    positive: bool
    negated: bool


class PolarityLexicon(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    negation: NegationSpec
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)
    # Longer words that contain a term without its sense; no term hits inside them.
    ignore: list[str] = Field(default_factory=list)
    # The same for contexts a word list cannot spell out (麻烦 opening a polite request).
    ignore_patterns: list[str] = Field(default_factory=list)

    _compilable = field_validator("ignore_patterns")(compilable_patterns)

    @model_validator(mode="after")
    def _no_word_in_both(self) -> PolarityLexicon:
        both = sorted(set(self.positive) & set(self.negative))
        if both:
            raise ValueError(f"words listed as both positive and negative: {both}")
        return self

    @cached_property
    def _matcher(self) -> re.Pattern[str]:
        return re.compile(trie_pattern(sorted({t.lower() for t in self.positive + self.negative})))

    @cached_property
    def _ignored(self) -> re.Pattern[str] | None:
        words = sorted({w.lower() for w in self.ignore})
        alternatives = ([trie_pattern(words)] if words else []) + self.ignore_patterns
        return re.compile("|".join(alternatives)) if alternatives else None

    @cached_property
    def _positive(self) -> frozenset[str]:
        return frozenset(t.lower() for t in self.positive)

    def find(self, text: str) -> list[PolarityHit]:
        """Every lexicon word in ``text`` (already lower-cased), in order of appearance."""
        matches = list(self._matcher.finditer(text))
        if not matches:
            return []
        covered = (
            [(m.start(), m.end()) for m in self._ignored.finditer(text)] if self._ignored else []
        )
        hits = []
        for match in matches:
            if any(start <= match.start() < end for start, end in covered):
                continue
            negated = self.negation.negates(text, match.start())
            positive = (match.group() in self._positive) != negated
            hits.append(PolarityHit(match.group(), match.start(), match.end(), positive, negated))
        return hits


def load_polarity_lexicon(path: Path | None = None) -> PolarityLexicon:
    """Load and validate a polarity lexicon (the shipped one by default)."""
    return load_data_file(path or packaged_data_path("polarity_lexicon.yaml"), PolarityLexicon)
