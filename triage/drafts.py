"""Reply drafts for a triaged message: slot filling, template selection and the reason.

Candidates are the bank's templates for the message's topic (then its secondary topics) that
suit its channel. Each is ranked by how close the message is to the template's examples
(character-bigram cosine; an embedding model can replace it later), by how well its tone fits
the customer's state (apologetic for P1/P2 or strong negative sentiment, formal for letters and
e-mails, short for chat), and loses rank when a required slot cannot be filled. Drafts are
filled from the message (order, contract and invoice numbers, amounts, dates, the customer's
name) and from configuration (company, hotline); the text the drafts are built from is the
masked text, so personal data never reaches a draft.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from triage.errors import InputError
from triage.replies import (
    ReplyTemplate,
    SituationKeywords,
    TemplateBank,
    ToneRules,
    check_flags,
    check_reply,
)
from triage.schemas import ReplyDraft, TriageResult
from triage.similarity import char_bigrams

_PATTERNS: dict[str, re.Pattern[str]] = {
    "order_id": re.compile(
        r"(?:订单号?|单号|运单号?|order\s*(?:id|no\.?|number|#)?)\s*[:#]?\s*([A-Za-z0-9][A-Za-z0-9-]{5,31})",
        re.IGNORECASE,
    ),
    "contract_id": re.compile(r"合同(?:编号|号)?\s*[:#]?\s*([A-Za-z0-9][A-Za-z0-9-]{3,31})"),
    "invoice_id": re.compile(r"发票(?:号码|号)\s*[:#]?\s*([A-Za-z0-9][A-Za-z0-9-]{5,31})"),
    "amount": re.compile(r"((?:¥\s*)?\d[\d,]*(?:\.\d{1,2})?\s*(?:元|块钱|块)|\d+(?:\.\d+)?万元?)"),
    "date": re.compile(r"(\d{4}[-/年]\d{1,2}[-/月]\d{1,2}日?|\d{1,2}月\d{1,2}[日号])"),
}
# A one-character surname with a title, standing at the start of a clause ("王女士", "我是李经理").
_NAME = re.compile(
    r"(?:^|(?<=[\n,.!?;:\s。，！？；：、])|(?<=我是)|(?<=我姓))([\u4e00-\u9fa5])(先生|女士|小姐|经理|总)(?![\u4e00-\u9fa5])"
)
# Each situation keyword found adds this much, for at most MAX_KEYWORD_HITS keywords: about what
# a close example adds to the similarity (fixed by hand, not tuned on the dev labels).
KEYWORD_WEIGHT = 0.15
MAX_KEYWORD_HITS = 3


def extract_slots(text: str) -> dict[str, str]:
    """Slot values found in a (masked, normalised) message."""
    found = {name: m.group(1).strip() for name, p in _PATTERNS.items() if (m := p.search(text))}
    name = _NAME.search(text)
    if name:
        surname, title = name.group(1), name.group(2)
        found["salutation"] = surname + ("女士" if title == "小姐" else title)
    return found


class _ExampleIndex:
    """IDF-weighted character-bigram vectors of every example and description in the bank, one
    unit row each, grouped by (topic, situation): a message is compared with every situation in
    one sparse product, and a situation scores by its closest example over all its tones."""

    def __init__(self, templates: tuple[ReplyTemplate, ...]):
        texts: list[str] = []
        situations: list[tuple[str, str]] = []
        for template in templates:
            for text in (*template.examples, template.description):
                texts.append(text)
                situations.append((template.topic, template.situation))
        counts = [char_bigrams(text) for text in texts]
        frequency = Counter(gram for grams in counts for gram in grams)
        self.vocabulary = {gram: i for i, gram in enumerate(frequency)}
        self.idf = np.log((1 + len(texts)) / (1 + np.array(list(frequency.values())))) + 1
        rows: list[int] = []
        columns: list[int] = []
        values: list[float] = []
        for row, grams in enumerate(counts):
            weights = {
                self.vocabulary[g]: c * self.idf[self.vocabulary[g]] for g, c in grams.items()
            }
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for column, weight in weights.items():
                rows.append(row)
                columns.append(column)
                values.append(weight / norm)
        self.matrix = sp.csr_matrix((values, (rows, columns)), shape=(len(texts), len(frequency)))
        self.keys = sorted(set(situations))
        position = {key: i for i, key in enumerate(self.keys)}
        self.owners = np.array([position[key] for key in situations])

    def similarities(self, text: str) -> dict[tuple[str, str], float]:
        """Cosine of the message with each situation's closest example."""
        vector = np.zeros(len(self.vocabulary))
        for gram, count in char_bigrams(text).items():
            column = self.vocabulary.get(gram)
            if column is not None:
                vector[column] = count * self.idf[column]
        norm = float(np.linalg.norm(vector))
        best = np.zeros(len(self.keys))
        if norm:
            np.maximum.at(best, self.owners, self.matrix @ (vector / norm))
        return dict(zip(self.keys, best.tolist(), strict=True))


@dataclass(frozen=True)
class DraftContext:
    """Values from configuration and the request that no message provides."""

    company: str
    hotline: str
    agent_name: str = "客服"
    default_salutation: str = "客户"


class ReplySuggester:
    """Ranks the bank's templates for a triaged message and fills the best ones."""

    def __init__(
        self,
        bank: TemplateBank,
        rules: ToneRules,
        context: DraftContext,
        keywords: SituationKeywords | None = None,
    ):
        self.bank = bank
        self.rules = rules
        self.context = context
        self.keywords = keywords
        self._verdicts: dict[tuple[str, str], bool] = {}

    @cached_property
    def _index(self) -> _ExampleIndex:
        return _ExampleIndex(self.bank.templates)

    def _passes(self, template: ReplyTemplate, text: str) -> bool:
        """The tone check of a draft, remembered per text: most drafts repeat exactly."""
        key = (template.id, text)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = check_reply(text, self.rules, **check_flags(template, self.rules)).passed
            if len(self._verdicts) < 20_000:
                self._verdicts[key] = verdict
        return verdict

    def _tone_fit(self, template: ReplyTemplate, result: TriageResult) -> tuple[float, str]:
        upset = result.urgency in ("P1", "P2") or result.sentiment_score <= -0.6
        channel = result.channel or ""
        if template.tone == "apologetic":
            return (0.3, f"apologetic tone for {result.urgency}") if upset else (-0.1, "")
        if template.tone == "formal":
            return (
                (0.25, f"formal tone for {channel}")
                if channel in ("letter", "email")
                else (-0.15, "")
            )
        if template.tone == "chat":
            return (0.2, "short tone for chat") if channel == "chat" else (-0.2, "")
        return (0.0 if upset else 0.1), ""

    def suggest(
        self, result: TriageResult, values: Mapping[str, str] | None = None, top: int = 3
    ) -> list[ReplyDraft]:
        """Up to ``top`` drafts, best first; every draft passes the tone check."""
        similarities = self._index.similarities(result.masked_text)
        slots = {
            "salutation": self.context.default_salutation,
            "company": self.context.company,
            "hotline": self.context.hotline,
            "agent_name": self.context.agent_name,
            **extract_slots(result.masked_text),
            **{k: v for k, v in (values or {}).items() if v},
        }
        topics = [result.topic, *result.secondary_topics]
        keyword_hits = self.keywords.hits(result.masked_text, topics) if self.keywords else {}
        ranked: list[tuple[float, ReplyTemplate, str]] = []
        for rank, topic in enumerate(topics):
            for template in self.bank.by_topic(topic):
                if result.channel and result.channel not in template.channels:
                    continue
                situation = (template.topic, template.situation)
                similarity = similarities[situation]
                words = keyword_hits.get(situation, [])
                fit, tone_reason = self._tone_fit(template, result)
                missing = [s for s in template.slots.required if s not in slots]
                # The situation decides (examples and keywords); tone only orders the
                # templates of one situation.
                score = (
                    similarity
                    + KEYWORD_WEIGHT * min(len(words), MAX_KEYWORD_HITS)
                    + 0.1 * fit
                    - 0.3 * rank
                    - 0.5 * len(missing)
                )
                reason = "; ".join(
                    part
                    for part in (
                        f"topic {topic}" + (" (secondary)" if rank else ""),
                        f"situation {template.situation} (similarity {similarity:.2f}"
                        + (f", words {', '.join(words[:3])})" if words else ")"),
                        tone_reason,
                        f"missing {', '.join(missing)}" if missing else "",
                    )
                    if part
                )
                ranked.append((score, template, reason))
        ranked.sort(key=lambda item: -item[0])
        drafts = []
        for score, template, reason in ranked:
            try:
                text = template.render(slots)
            except InputError:
                continue  # a required slot is missing: never show a placeholder
            if not self._passes(template, text):
                continue
            drafts.append(
                ReplyDraft(template_id=template.id, text=text, score=round(score, 3), reason=reason)
            )
            if len(drafts) == top:
                break
        return drafts
