"""Reply drafts: the template bank, slot rendering and the tone check.

The bank is data (``triage/data/replies/*.yaml``), validated on load. The tone rules
(``triage/data/tone_rules.yaml``) describe what a good reply contains and what it must never
say; the same check runs over every template of the bank and over agents' own drafts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from triage.errors import ConfigError, EmptyTextError, InputError
from triage.resources import compilable_patterns, load_data_file, packaged_data_path
from triage.taxonomy import Taxonomy
from triage.text import normalize

# Slots every deployment fills from configuration or the request, never from the message.
CONTEXT_SLOTS = frozenset({"salutation", "company", "hotline", "agent_name"})
_SLOT = re.compile(r"\{([a-z_]+)\}")
_SEGMENT = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
# Characters that never belong to a product name: a modifier holding one is dropped.
_FUNCTION_CHARS = re.compile(r"[的了这那个些我你他她它们是在和与及把被给就都也还又很太才刚已]")

Tone = Literal["standard", "apologetic", "formal", "chat"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PatternRule(_Strict):
    patterns: list[str] = Field(min_length=1)
    message: str
    suggestion: str
    only_for: Literal["complaint"] | None = None

    _compilable = field_validator("patterns")(compilable_patterns)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{p})" for p in self.patterns), re.MULTILINE)


class ToneRules(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    required: dict[str, PatternRule]
    forbidden: dict[str, PatternRule]
    collections: dict[str, PatternRule]
    chat_max_chars: int = Field(ge=10)
    apology_topics: list[str]


@dataclass(frozen=True)
class Finding:
    """One problem in a draft; ``start``/``end`` index the checked text (None when missing)."""

    kind: str
    message: str
    suggestion: str
    text: str = ""
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class ToneReport:
    score: float
    findings: tuple[Finding, ...]

    @property
    def passed(self) -> bool:
        return not self.findings


def load_tone_rules(path: Path | None = None) -> ToneRules:
    return load_data_file(path or packaged_data_path("tone_rules.yaml"), ToneRules)


def check_reply(
    text: str,
    rules: ToneRules,
    *,
    complaint: bool = True,
    collections: bool = False,
    chat: bool = False,
) -> ToneReport:
    """Check a draft: forbidden phrasing (with spans), missing elements, length for chat.

    The score starts at 1 and loses 0.25 per forbidden phrase and 0.15 per missing element.
    Spans index the normalised draft; a draft with no text raises :class:`EmptyTextError`.
    """
    text = normalize(text)
    if not text:
        raise EmptyTextError("draft is empty or whitespace only (after removing markup)")
    findings: list[Finding] = []
    for kind, rule in rules.forbidden.items():
        findings += [
            Finding(kind, rule.message, rule.suggestion, m.group(), m.start(), m.end())
            for m in rule.regex.finditer(text)
        ]
    forbidden = len(findings)
    expected = dict(rules.required)
    if collections:
        expected.update(rules.collections)
    for kind, rule in expected.items():
        if rule.only_for == "complaint" and not complaint:
            continue
        if not rule.regex.search(text):
            findings.append(Finding(kind, rule.message, rule.suggestion))
    if chat and len(text) > rules.chat_max_chars:
        findings.append(
            Finding(
                "too_long",
                f"聊天渠道的回复过长（{len(text)} 字，建议不超过 {rules.chat_max_chars} 字）",
                "精简为两三句：致歉、处理动作和时间、跟进",
            )
        )
    missing = len(findings) - forbidden
    score = max(0.0, 1.0 - 0.25 * forbidden - 0.15 * missing)
    return ToneReport(round(score, 2), tuple(findings))


class SlotSpec(_Strict):
    required: list[str] = Field(default_factory=list)
    optional: list[str] = Field(default_factory=list)


class ReplyTemplate(_Strict):
    """One hand-written reply, with when to use it and the slots it needs."""

    id: str = Field(pattern=r"^[a-z_]+\.[a-z_]+\.(standard|apologetic|formal|chat)$")
    topic: str
    situation: str = Field(pattern=r"^[a-z_]+$")
    tone: Tone
    channels: list[str] = Field(min_length=1)
    description: str = Field(min_length=4)
    examples: list[str] = Field(min_length=1)
    slots: SlotSpec = Field(default_factory=SlotSpec)
    text: str = Field(min_length=10)

    @model_validator(mode="after")
    def _consistent(self) -> ReplyTemplate:
        if self.id != f"{self.topic}.{self.situation}.{self.tone}":
            raise ValueError(
                f"id must be '<topic>.<situation>.<tone>' = "
                f"{self.topic}.{self.situation}.{self.tone!s}"
            )
        if (
            not self.text.lstrip().startswith("{salutation}")
            and "尊敬的{salutation}" not in (self.text[:20])
        ):
            raise ValueError("text must start with the {salutation} slot")
        if self.text.count("[[") != self.text.count("]]"):
            raise ValueError("text has unbalanced [[ ]] segments")
        inside = {s for segment in _SEGMENT.findall(self.text) for s in _SLOT.findall(segment)}
        outside = set(_SLOT.findall(_SEGMENT.sub("", self.text)))
        declared = set(self.slots.required) | set(self.slots.optional) | CONTEXT_SLOTS
        undeclared = sorted((inside | outside) - declared)
        if undeclared:
            raise ValueError(f"text uses slots not listed in slots: {undeclared}")
        optional_outside = sorted(set(self.slots.optional) & outside)
        if optional_outside:
            raise ValueError(f"optional slots used outside [[ ]]: {optional_outside}")
        required_inside = sorted(set(self.slots.required) & inside - outside)
        if required_inside:
            raise ValueError(f"required slots used only inside [[ ]]: {required_inside}")
        return self

    @cached_property
    def _pieces(
        self,
    ) -> tuple[tuple[str, ...], tuple[tuple[tuple[str, ...] | None, tuple[str, ...]], ...]] | None:
        """The text split once (a draft is rendered per message): the slots outside optional
        segments, sorted, and each run of text as (the slots its segment needs, or None
        outside segments; literal text and slot names, alternating). None when a brace stands
        outside a slot: dropping a segment could then join two braces into a new slot, and
        :meth:`render` keeps to the patterns."""
        if re.search("[{}]", _SLOT.sub("", self.text)):
            return None
        runs = []
        for index, part in enumerate(_SEGMENT.split(self.text)):  # outside, segment, ...
            tokens = tuple(_SLOT.split(part))  # literal, slot name, literal, ...
            runs.append((tokens[1::2] if index % 2 else None, tokens))
        outside = sorted({name for needs, tokens in runs if needs is None for name in tokens[1::2]})
        return tuple(outside), tuple(runs)

    def render(self, values: Mapping[str, str]) -> str:
        """The draft: optional segments whose slots are missing are dropped; a missing
        required or context slot raises :class:`InputError`, so no placeholder ever leaks."""
        if self._pieces is None:
            return self._render_by_pattern(values)
        outside, runs = self._pieces
        missing = [name for name in outside if not values.get(name)]
        if missing:
            raise InputError(f"template {self.id}: missing slots {missing}")
        parts = []
        for needs, tokens in runs:
            if needs is not None and not all(values.get(name) for name in needs):
                continue
            parts += [values[token] if i % 2 else token for i, token in enumerate(tokens)]
        return "".join(parts).strip()

    def _render_by_pattern(self, values: Mapping[str, str]) -> str:
        """:meth:`render` by substitution, for a text with braces outside its slots."""

        def keep(match: re.Match[str]) -> str:
            segment = match.group(1)
            return segment if all(values.get(s) for s in _SLOT.findall(segment)) else ""

        text = _SEGMENT.sub(keep, self.text)
        missing = sorted({s for s in _SLOT.findall(text) if not values.get(s)})
        if missing:
            raise InputError(f"template {self.id}: missing slots {missing}")
        return _SLOT.sub(lambda m: values[m.group(1)], text).strip()


class _BankFile(_Strict):
    templates: list[ReplyTemplate] = Field(min_length=1)


@dataclass(frozen=True)
class TemplateBank:
    templates: tuple[ReplyTemplate, ...]

    def by_topic(self, topic: str) -> list[ReplyTemplate]:
        return [t for t in self.templates if t.topic == topic]

    def situations(self) -> list[tuple[str, str]]:
        """Every (topic, situation) of the bank, sorted."""
        return sorted({(t.topic, t.situation) for t in self.templates})


def situation_label(topic: str, situation: str) -> str:
    """A (topic, situation) as one label of a model's situation head: ``<topic>.<situation>``."""
    return f"{topic}.{situation}"


def load_template_bank(taxonomy: Taxonomy, directory: Path | None = None) -> TemplateBank:
    """Every ``*.yaml`` in the directory, checked against the taxonomy; ids unique across files."""
    directory = directory or packaged_data_path("replies")
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(f"{directory}: expected template files (*.yaml), found none")
    templates: list[ReplyTemplate] = []
    seen: dict[str, str] = {}
    for path in files:
        for index, template in enumerate(load_data_file(path, _BankFile).templates):
            where = f"{path}: templates.{index}"
            if template.topic not in taxonomy.topic_ids:
                raise ConfigError(
                    f"{where}.topic: expected one of {taxonomy.topic_ids} (got {template.topic!r})"
                )
            unknown = sorted(set(template.channels) - set(taxonomy.channels))
            if unknown:
                raise ConfigError(
                    f"{where}.channels: expected values from {taxonomy.channels} (got {unknown})"
                )
            if template.id in seen:
                raise ConfigError(
                    f"{where}.id: {template.id!r} is already defined in {seen[template.id]}"
                )
            seen[template.id] = str(path)
            templates.append(template)
    return TemplateBank(tuple(templates))


class KeywordFinder:
    """Which of many literal words occur in a text, at the cost of a few set operations.

    A word of two or more characters can occur only where its first two characters do: the
    text's character pairs are intersected with the words' first pairs, and only the words
    behind the pairs in common are searched for. One-character words are searched for directly.
    """

    def __init__(self, words: Iterable[str]):
        self._by_pair: dict[str, list[str]] = {}
        short = set()
        for word in dict.fromkeys(words):
            if len(word) < 2:
                short.add(word)
            else:
                self._by_pair.setdefault(word[:2], []).append(word)
        self._pairs = frozenset(self._by_pair)
        self._short = frozenset(short)

    def find(self, text: str) -> frozenset[str]:
        """The words that occur in ``text`` (as substrings, overlaps included)."""
        found = {word for word in self._short if word in text}
        for pair in self._pairs.intersection(map(str.__add__, text, text[1:])):
            found.update(word for word in self._by_pair[pair] if word in text)
        return frozenset(found)


class SituationKeywords(_Strict):
    """Words customers use for each (topic, situation) of the bank; a ranking signal."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    situations: dict[str, dict[str, list[str]]]

    def check_against(self, bank: TemplateBank, source: str) -> None:
        """Every keyword entry must name a situation that the bank has."""
        known = {(t.topic, t.situation) for t in bank.templates}
        for topic, situations in self.situations.items():
            for situation in situations:
                if (topic, situation) not in known:
                    raise ConfigError(
                        f"{source}: situations.{topic}.{situation}: expected a (topic, situation)"
                        " of the template bank"
                    )

    @cached_property
    def lowered(self) -> dict[str, dict[str, list[str]]]:
        """The keywords in lower case, as :meth:`found` and :meth:`hits` compare them."""
        return {
            topic: {situation: [w.lower() for w in words] for situation, words in items.items()}
            for topic, items in self.situations.items()
        }

    @cached_property
    def _finder(self) -> KeywordFinder:
        return KeywordFinder(
            w for items in self.lowered.values() for words in items.values() for w in words
        )

    def found(self, text: str) -> frozenset[str]:
        """Every (lower-case) keyword of any situation that occurs in ``text``."""
        return self._finder.find(text.lower())

    def hits(self, text: str, topics: Iterable[str]) -> dict[tuple[str, str], list[str]]:
        """The keywords of each situation of ``topics`` that occur in ``text``."""
        found = self.found(text)
        return {
            (topic, situation): [w for w in words if w in found]
            for topic in topics
            for situation, words in self.lowered.get(topic, {}).items()
        }


def load_situation_keywords(bank: TemplateBank, path: Path | None = None) -> SituationKeywords:
    path = path or packaged_data_path("situation_keywords.yaml")
    keywords = load_data_file(path, SituationKeywords)
    keywords.check_against(bank, str(path))
    return keywords


class ProductLexicon(_Strict):
    """Product nouns and the cues that mark a noun as the customer's product (``products.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    modifier_max_chars: int = Field(ge=0, le=12)
    nouns: list[str] = Field(min_length=1)
    before: list[str] = Field(min_length=1)
    after: list[str] = Field(min_length=1)
    compound_suffixes: list[str] = Field(default_factory=list)

    @field_validator("nouns", "before", "after", "compound_suffixes")
    @classmethod
    def _no_empty_words(cls, words: list[str]) -> list[str]:
        empty = [w for w in words if not w.strip()]
        if empty:
            raise ValueError(f"expected non-empty words (got {empty})")
        return words

    @cached_property
    def _patterns(self) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
        """Any noun; a cue, then a noun; a noun, then a cue. Both product patterns need a noun,
        and most messages have none: the first, a plain search, rules them out quickly."""

        def either(words: list[str]) -> str:
            return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))

        outside = f"(?!{either(self.compound_suffixes)})" if self.compound_suffixes else ""
        nouns = f"(?P<noun>{either(self.nouns)}){outside}"
        modifier = f"(?P<modifier>[\\u4e00-\\u9fa5A-Za-z0-9]{{0,{self.modifier_max_chars}}}?)"
        return (
            re.compile(either(self.nouns), re.IGNORECASE),
            re.compile(f"(?:{either(self.before)}){modifier}{nouns}", re.IGNORECASE),
            re.compile(f"(?P<model>[A-Za-z0-9-]*){nouns}(?:{either(self.after)})", re.IGNORECASE),
        )

    def find(self, text: str) -> str | None:
        """The product the message is about, or None when no noun stands beside a cue.

        A brand or model between the cue and the noun is kept ("买的格林立式空调") unless it holds
        a function word ("买的那个空调" gives 空调), so the name reads naturally in a draft.
        """
        any_noun, cue_then_noun, noun_then_cue = self._patterns
        if not any_noun.search(text):
            return None
        found = [(m.start(), m["modifier"] + m["noun"]) for m in cue_then_noun.finditer(text)]
        found += [(m.start(), m["model"] + m["noun"]) for m in noun_then_cue.finditer(text)]
        if not found:
            return None
        product = min(found)[1]
        return product if not _FUNCTION_CHARS.search(product) else self._noun_of(product)

    def _noun_of(self, phrase: str) -> str:
        return max((n for n in self.nouns if phrase.endswith(n)), key=len)


def load_product_lexicon(path: Path | None = None) -> ProductLexicon:
    return load_data_file(path or packaged_data_path("products.yaml"), ProductLexicon)


def check_flags(template: ReplyTemplate, rules: ToneRules) -> dict[str, bool]:
    """What the tone check expects of a template's drafts, from its topic and tone."""
    return {
        "complaint": template.topic in rules.apology_topics or template.tone == "apologetic",
        "collections": template.topic == "collections",
        "chat": template.tone == "chat",
    }


def bank_check(template: ReplyTemplate, rules: ToneRules, values: Mapping[str, str]) -> ToneReport:
    """The tone check a bank template's draft must pass."""
    return check_reply(template.render(values), rules, **check_flags(template, rules))
