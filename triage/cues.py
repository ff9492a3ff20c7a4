"""Urgency cues: lexicon matching with negation awareness.

The lexicon is data (``triage/data/cues.yaml``). Each hit reports its kind, the matched text and
its span in the text it was matched on, and carries the urgency floor of its kind.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from triage.resources import compilable_patterns, load_data_file, packaged_data_path
from triage.taxonomy import Taxonomy

# A clause ends at these characters; negation never reaches across them.
_CLAUSE_END = set(",.;!?，。；！？\n")


def _numeric_literal(term: str) -> str:
    """A term with digits at an edge never matches inside a longer number (an order id)."""
    pattern = re.escape(term)
    if term[:1].isdigit():
        pattern = "(?<![0-9])" + pattern
    if term[-1:].isdigit():
        pattern += "(?![0-9])"
    return pattern


def trie_pattern(terms: list[str]) -> str:
    """One regex for many literal terms, factored by common prefixes.

    Python's ``re`` tries alternatives one by one at every position; a prefix trie lets it
    reject most positions after one character, and longer terms still win over their prefixes.
    """
    trie: dict[str, Any] = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}

    def render(node: dict[str, Any]) -> str:
        ends_here = "" in node
        branches = [re.escape(char) + render(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends_here:
            return body + "?" if len(branches) == 1 and len(body) == 1 else f"(?:{body})?"
        return body

    return render(trie)


def _kind_pattern(terms: list[str], patterns: list[str]) -> str:
    lowered = sorted({t.lower() for t in terms})
    numeric = [t for t in lowered if t[:1].isdigit() or t[-1:].isdigit()]
    plain = [t for t in lowered if t not in numeric]
    alternatives = ([trie_pattern(plain)] if plain else []) + [
        _numeric_literal(t) for t in sorted(numeric, key=len, reverse=True)
    ]
    return "|".join(alternatives + patterns)


def _first_chars(items: Any) -> tuple[list[str], bool] | None:
    """Character-class parts for every character a match of the parsed ``items`` can start
    with, and whether the whole sequence can match empty; None when its start is too complex."""
    consts = importlib.import_module("re._constants")
    classes = {
        consts.CATEGORY_DIGIT: r"\d",
        consts.CATEGORY_WORD: r"\w",
        consts.CATEGORY_SPACE: r"\s",
    }
    parts: list[str] = []
    for op, av in items:
        if op in (consts.AT, consts.ASSERT, consts.ASSERT_NOT):
            continue  # zero-width: the next item consumes the first character
        if op is consts.LITERAL:
            return [*parts, re.escape(chr(av))], False
        if op is consts.IN:
            for member, value in av:
                if member is consts.LITERAL:
                    parts.append(re.escape(chr(value)))
                elif member is consts.RANGE:
                    parts.append(f"{re.escape(chr(value[0]))}-{re.escape(chr(value[1]))}")
                elif member is consts.CATEGORY and value in classes:
                    parts.append(classes[value])
                else:
                    return None
            return parts, False
        if op is consts.SUBPATTERN:
            inner = _first_chars(av[-1])
        elif op is consts.BRANCH:
            branches = [_first_chars(branch) for branch in av[1]]
            if any(b is None for b in branches):
                return None
            inner = [c for b in branches if b for c in b[0]], any(b[1] for b in branches if b)
        elif op in (consts.MAX_REPEAT, consts.MIN_REPEAT, consts.POSSESSIVE_REPEAT):
            inner = _first_chars(av[2])
            if inner is not None and av[0] == 0:
                inner = inner[0], True
        else:
            return None
        if inner is None:
            return None
        parts.extend(inner[0])
        if not inner[1]:
            return parts, False
    return parts, True


def with_first_char_lookahead(pattern: str, flags: int) -> str:
    """``pattern`` behind a lookahead for the characters its matches can start with.

    ``re`` tries every alternative of a large alternation at every position of the text; one
    class test first skips the positions where no cue can start (about two thirds of the cue
    time on the seed corpus). The pattern is returned unchanged when its start cannot be told
    (or could match empty), so the matches are always the same.
    """
    try:
        parsed = importlib.import_module("re._parser").parse(pattern, flags)
        first = _first_chars(parsed)
    except (ImportError, AttributeError):  # the parser is internal to ``re``
        return pattern
    if first is None or first[1]:
        return pattern
    return f"(?=[{''.join(dict.fromkeys(first[0]))}])(?:{pattern})"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))


class NegationSpec(_Strict):
    window: int = Field(ge=0, le=20)
    words: list[str]
    # Words that contain a negation character without negating (不小心, 不停, 无缘无故).
    ignore: list[str] = Field(default_factory=list)
    # Characters that end a negation's reach like a clause end: a conditional's 就, as in
    # 再不退款就起诉, where the negation belongs to the condition.
    scope_ends: list[str] = Field(default_factory=list)

    @field_validator("scope_ends")
    @classmethod
    def _single_characters(cls, value: list[str]) -> list[str]:
        longer = [item for item in value if len(item) != 1]
        if longer:
            raise ValueError(f"each entry must be one character (got {longer!r})")
        return value

    @cached_property
    def _reach(self) -> int:
        """How far back ``negates`` reads: the window, plus enough to see whole any ignore
        word that starts before the window and ends inside it (要不 with only 不 inside)."""
        return self.window + max((len(word) - 1 for word in self.ignore), default=0)

    def negates(self, text: str, start: int) -> bool:
        """Whether a negation word stands within ``window`` characters before ``start``, in
        the same clause, with none of ``scope_ends`` between them. Ignore words are blanked
        before the window is cut, so one that straddles the window's start negates nothing."""
        context_start = start
        while context_start > 0 and start - context_start < self._reach:
            previous = text[context_start - 1]
            if previous in _CLAUSE_END or previous in self.scope_ends:
                break
            context_start -= 1
        context = text[context_start:start]
        for word in self.ignore:
            context = context.replace(word, " " * len(word))
        before = context[max(0, len(context) - self.window) :]
        return any(word in before for word in self.words)


class FloorGate(_Strict):
    """When a cue kind's floor applies: if any of the given conditions holds."""

    # The urgency model gives the floor's level, or a more urgent one, at least this.
    min_model_probability: float | None = Field(default=None, ge=0.0, le=1.0)
    # The message is judged a complaint (complaint score >= the model's complaint threshold).
    complaint: bool = False

    @model_validator(mode="after")
    def _some_condition(self) -> FloorGate:
        if self.min_model_probability is None and not self.complaint:
            raise ValueError(
                "a gate needs min_model_probability (0 to 1) or complaint: true (got neither)"
            )
        return self


class CueKindSpec(_Strict):
    floor: str
    description: str
    terms: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    # Contexts where a hit of this kind is no risk (燃气报警器 for 报警, 人民医院 for 医院): a hit
    # inside a match of one of these terms or patterns is dropped.
    exclude_terms: list[str] = Field(default_factory=list)
    exclude_patterns: list[str] = Field(default_factory=list)
    # Absent, the floor always applies; for kinds whose words often appear in harmless
    # messages, a gate makes it conditional (chosen out of fold, see docs/model.md).
    gate: FloorGate | None = None

    _compilable = field_validator("patterns", "exclude_patterns")(compilable_patterns)

    @cached_property
    def excluded(self) -> re.Pattern[str] | None:
        """One regex for this kind's exclusion contexts; None when it has none."""
        if not (self.exclude_terms or self.exclude_patterns):
            return None
        return re.compile(_kind_pattern(self.exclude_terms, self.exclude_patterns), re.IGNORECASE)


class CueLexicon(_Strict):
    negation: NegationSpec
    kinds: dict[str, CueKindSpec] = Field(min_length=1)

    def check_floors(self, taxonomy: Taxonomy, source: str) -> None:
        """Every floor must be an urgency level of the taxonomy in use."""
        from triage.errors import ConfigError

        for name, kind in self.kinds.items():
            if kind.floor not in taxonomy.urgency_ids:
                raise ConfigError(
                    f"{source}: kinds.{name}.floor: expected one of {taxonomy.urgency_ids}"
                    f" (got {kind.floor!r})"
                )

    @cached_property
    def _matcher(self) -> re.Pattern[str]:
        # Each kind's alternation sits behind its own first-character lookahead too: where a
        # cue of some kind can start, the other kinds are skipped after one class test instead
        # of trying each of their alternatives (cue matching took half the time on the seed
        # messages). The matches are the same: a lookahead only skips alternatives that fail.
        groups = [
            f"(?P<k{index}>"
            f"{with_first_char_lookahead(_kind_pattern(kind.terms, kind.patterns), re.IGNORECASE)})"
            for index, kind in enumerate(self.kinds.values())
            if kind.terms or kind.patterns
        ]
        pattern = with_first_char_lookahead("|".join(groups), re.IGNORECASE)
        return re.compile(pattern, re.IGNORECASE)

    @cached_property
    def _kind_names(self) -> list[str]:
        return list(self.kinds)

    def find(self, text: str) -> list[Cue]:
        """All cue hits in ``text`` that are neither negated nor inside one of their kind's
        exclusion contexts, in order of appearance."""
        hits = []
        excluded: dict[str, list[tuple[int, int]]] = {}
        for match in self._matcher.finditer(text):
            group = match.lastgroup
            if group is None or self.negation.negates(text, match.start()):
                continue
            name = self._kind_names[int(group[1:])]
            spec = self.kinds[name]
            if spec.excluded is not None:
                if name not in excluded:
                    excluded[name] = [m.span() for m in spec.excluded.finditer(text)]
                if any(s <= match.start() and match.end() <= e for s, e in excluded[name]):
                    continue
            hits.append(Cue(name, match.group(), match.start(), match.end(), spec.floor))
        return hits


@dataclass(frozen=True)
class Cue:
    kind: str
    text: str
    start: int
    end: int
    floor: str


def load_cue_lexicon_file(path: Path | None = None) -> CueLexicon:
    """Load and validate a cue lexicon (the shipped one by default), floors unchecked: what
    a model's cue features need, since they count hits per kind whatever the floors."""
    return load_data_file(path or packaged_data_path("cues.yaml"), CueLexicon)


def load_cue_lexicon(taxonomy: Taxonomy, path: Path | None = None) -> CueLexicon:
    """Load and validate a cue lexicon against the taxonomy's urgency levels."""
    path = path or packaged_data_path("cues.yaml")
    lexicon = load_cue_lexicon_file(path)
    lexicon.check_floors(taxonomy, str(path))
    return lexicon
