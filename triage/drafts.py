"""Reply drafts for a triaged message: slot filling, template selection and the reason.

First the (topic, situation) of the reply is chosen. When the model has a ``situation`` head,
every situation of the bank is scored by a blend of that head's probability, the topic head's
probability of its topic, how close the message is to its examples (character-bigram cosine)
and its keywords (:class:`SelectionWeights`). Other models rank the situations of the message's
topic (then of its secondary topics) by closeness and keywords only. Then tone orders the
templates of a situation (apologetic for P1/P2 or strong negative sentiment, formal for letters
and e-mails, short for chat); a template that suits neither the channel nor its required slots
is passed over. Drafts are filled from the message (order, contract and invoice numbers,
amounts, dates, product, the customer's name), the request and configuration; the text the
drafts are built from is the masked text, so personal data never reaches a draft.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from triage.errors import InputError, ModelError
from triage.replies import (
    ProductLexicon,
    ReplyTemplate,
    SituationKeywords,
    TemplateBank,
    ToneRules,
    check_flags,
    check_reply,
    situation_label,
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
SITUATION_HEAD = "situation"
MAX_KEYWORD_HITS = 3
# Without a situation head: each situation keyword found adds KEYWORD_WEIGHT (for at most
# MAX_KEYWORD_HITS keywords), about what a close example adds to the similarity, and a secondary
# topic's situations lose SECONDARY_TOPIC_PENALTY per rank (fixed by hand, not tuned on dev).
KEYWORD_WEIGHT = 0.15
SECONDARY_TOPIC_PENALTY = 0.3
# How much tone fit and each unfillable required slot move a template within its situation.
TONE_WEIGHT = 0.1
MISSING_SLOT_PENALTY = 0.5
logger = logging.getLogger("triage")
Scores = NDArray[np.float64]


def extract_slots(text: str, products: ProductLexicon | None = None) -> dict[str, str]:
    """Slot values found in a (masked, normalised) message."""
    found = {name: m.group(1).strip() for name, p in _PATTERNS.items() if (m := p.search(text))}
    name = _NAME.search(text)
    if name:
        surname, title = name.group(1), name.group(2)
        found["salutation"] = surname + ("女士" if title == "小姐" else title)
    product = products.find(text) if products else None
    if product:
        found["product"] = product
    return found


def _example_texts(
    templates: Sequence[ReplyTemplate],
) -> tuple[list[str], list[tuple[str, str]], NDArray[np.int64]]:
    """Every example and description of the bank; the sorted (topic, situation) keys; and, for
    each text, the position of its key."""
    texts: list[str] = []
    situations: list[tuple[str, str]] = []
    for template in templates:
        for text in (*template.examples, template.description):
            texts.append(text)
            situations.append((template.topic, template.situation))
    keys = sorted(set(situations))
    position = {key: i for i, key in enumerate(keys)}
    return texts, keys, np.array([position[key] for key in situations])


class SimilarityIndex(Protocol):
    """How close a message is to each situation's examples (1 is identical)."""

    def similarities(self, text: str) -> dict[tuple[str, str], float]: ...


class ExampleIndex:
    """IDF-weighted character-bigram vectors of every example and description in the bank, one
    unit row each, grouped by (topic, situation): a message is compared with every situation in
    one sparse product, and a situation scores by its closest example over all its tones."""

    def __init__(self, templates: Sequence[ReplyTemplate]):
        texts, self.keys, self.owners = _example_texts(templates)
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


class EncoderIndex:
    """The same comparison with a sentence-transformers encoder (``TRIAGE_REPLY_ENCODER``):
    the bank's examples are embedded once, here; each message is embedded when it is ranked.

    ``sentence_transformers`` is imported only when such an index is built, so the default
    service never needs torch. A directory holding a plain Hugging Face encoder loads too
    (sentence-transformers then adds mean pooling).
    """

    def __init__(self, model_dir: Path, templates: Sequence[ReplyTemplate]):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelError(
                f"reply encoder {model_dir}: sentence-transformers is not installed ({exc})"
            ) from exc
        if not model_dir.is_dir():
            raise ModelError(f"reply encoder {model_dir}: expected a model directory")
        try:
            self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
            texts, self.keys, self.owners = _example_texts(templates)
            self.examples = self._embed(texts)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"reply encoder {model_dir}: cannot be loaded ({exc})") from exc

    def _embed(self, texts: list[str]) -> NDArray[np.float32]:
        vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, np.float32)

    def similarities(self, text: str) -> dict[tuple[str, str], float]:
        """Cosine of the message's embedding with each situation's closest example."""
        scores = self.examples @ self._embed([text])[0]
        best = np.full(len(self.keys), -1.0)
        np.maximum.at(best, self.owners, scores.astype(np.float64))
        return dict(zip(self.keys, best.tolist(), strict=True))


@dataclass(frozen=True)
class SelectionWeights:
    """How the signals of a (topic, situation) add up when the model has a situation head.

    The defaults were chosen out of fold on the seed *training* split, never on dev:
    ``python bench/situation_weights.py`` fits the topic and situation heads in 5 folds and
    compares blends by how often the best-scored situation fits the labeled one.
    """

    topic: float = 1.0  # x the topic head's probability of the situation's topic
    classifier: float = 0.5  # x the situation head's probability of the (topic, situation)
    similarity: float = 0.125  # x the cosine of the message with the closest example
    keyword: float = 0.025  # x each situation keyword found, for at most MAX_KEYWORD_HITS
    # x the log share of the situation's topic among the training complaints (complaints only):
    # the topic head is trained with balanced classes over all messages, complaints are not.
    complaint_prior: float = 0.0

    def contributions(
        self,
        topic: Scores,
        classifier: Scores,
        similarity: Scores,
        keywords: Scores,
        prior: Scores | None = None,
    ) -> dict[str, Scores]:
        """Each signal's weighted part of the score (any array shape, all alike)."""
        parts = {
            "topic": self.topic * topic,
            "classifier": self.classifier * classifier,
            "similarity": self.similarity * similarity,
            "keywords": self.keyword * np.minimum(keywords, MAX_KEYWORD_HITS),
        }
        if prior is not None:
            parts["complaint prior"] = self.complaint_prior * prior
        return parts

    def combine(
        self,
        topic: Scores,
        classifier: Scores,
        similarity: Scores,
        keywords: Scores,
        prior: Scores | None = None,
    ) -> Scores:
        """Scores of situations; higher is better."""
        return total(self.contributions(topic, classifier, similarity, keywords, prior))


def total(parts: Mapping[str, Scores]) -> Scores:
    """The sum of the signals' parts: the score."""
    scores: Scores = np.zeros(np.shape(next(iter(parts.values()))))
    for part in parts.values():
        scores = scores + part
    return scores


def complaint_topic_prior(counts: Mapping[str, int], topics: Sequence[str]) -> dict[str, float]:
    """Log share of each topic among the training complaints (add-one smoothed), from a model's
    data summary (``complaint_topics``)."""
    total = sum(counts.get(topic, 0) for topic in topics) + len(topics)
    return {topic: math.log((counts.get(topic, 0) + 1) / total) for topic in topics}


@dataclass(frozen=True)
class DraftContext:
    """Values from configuration and the request that no message provides."""

    company: str
    hotline: str
    agent_name: str = "客服"
    default_salutation: str = "客户"


@dataclass(frozen=True)
class _Situation:
    """A scored (topic, situation) with the evidence its drafts' reason states."""

    topic: str
    situation: str
    score: float
    similarity: float
    words: list[str]
    topic_evidence: tuple[str, ...] = ()
    classifier: float | None = None
    parts: Mapping[str, float] | None = None  # each signal's part of the score
    decided: str = ""  # what set it ahead of the next situation

    def describe(self) -> str:
        signals = [] if self.classifier is None else [f"classifier {self.classifier:.2f}"]
        signals.append(f"similarity {self.similarity:.2f}")
        if self.words:
            signals.append(f"words {', '.join(self.words[:MAX_KEYWORD_HITS])}")
        evidence = f" ({', '.join(self.topic_evidence)})" if self.topic_evidence else ""
        return (
            f"topic {self.topic}{evidence}; "
            f"situation {self.situation} ({', '.join(signals)}){self.decided}"
        )

    def strongest_gain(self, other: _Situation) -> str:
        """The signal that adds most to this situation's score over ``other``'s."""
        mine, theirs = self.parts or {}, other.parts or {}
        return max(mine, key=lambda name: mine[name] - theirs.get(name, 0.0))


def _explained(situations: list[_Situation], triage_topic: str) -> list[_Situation]:
    """Situations best first, the reason of the best naming the signal that set it ahead of
    the next, and each situation of another topic than the triage topic naming the signal
    that set it over the best situation of that topic."""
    ranked = sorted(situations, key=lambda situation: -situation.score)
    if not ranked or ranked[0].parts is None:
        return ranked
    own = next((s for s in ranked if s.topic == triage_topic), None)
    explained = []
    for situation in ranked:
        if own is not None and situation.topic != triage_topic:
            moved = f"over {triage_topic} by the {situation.strongest_gain(own)}"
            situation = replace(situation, topic_evidence=(*situation.topic_evidence, moved))
        explained.append(situation)
    if len(explained) > 1:
        best, runner_up = explained[0], explained[1]
        explained[0] = replace(
            best,
            decided=f"; ahead of {runner_up.topic}.{runner_up.situation} by "
            f"{best.score - runner_up.score:.2f}, mostly the {best.strongest_gain(runner_up)}",
        )
    return explained


class ReplySuggester:
    """Ranks the bank's templates for a triaged message and fills the best ones."""

    def __init__(
        self,
        bank: TemplateBank,
        rules: ToneRules,
        context: DraftContext,
        keywords: SituationKeywords | None = None,
        products: ProductLexicon | None = None,
        weights: SelectionWeights | None = None,
        index: SimilarityIndex | None = None,
    ):
        self.bank = bank
        self.rules = rules
        self.context = context
        self.keywords = keywords
        self.products = products
        self.weights = weights or SelectionWeights()
        self._given_index = index
        self._verdicts: dict[tuple[str, str], bool] = {}
        self._situations = bank.situations()
        self._topics = sorted({topic for topic, _ in self._situations})
        self._templates: dict[tuple[str, str], list[ReplyTemplate]] = {}
        for template in bank.templates:
            self._templates.setdefault((template.topic, template.situation), []).append(template)

    @cached_property
    def _index(self) -> SimilarityIndex:
        """The given index (e.g. an encoder), else character bigrams, built on first use."""
        return self._given_index or ExampleIndex(self.bank.templates)

    def situation_keys(
        self, labels: Sequence[str], model: str = "model"
    ) -> list[tuple[str, str] | None]:
        """The bank's (topic, situation) for each label of a situation head, None for labels the
        bank does not have: those are ignored with a warning, as is a bank situation the head
        does not know (it then ranks by similarity and keywords alone)."""
        known = {situation_label(*key): key for key in self._situations}
        unknown = [label for label in labels if label not in known]
        if unknown:
            logger.warning(
                "%s: situation head labels %s are not situations of the template bank; ignored",
                model,
                unknown,
            )
        unseen = sorted(set(known) - set(labels))
        if unseen:
            logger.warning(
                "%s: the situation head does not know the bank's situations %s; they are ranked"
                " by similarity and keywords only",
                model,
                unseen,
            )
        return [known.get(label) for label in labels]

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

    def _by_topic(self, result: TriageResult) -> list[_Situation]:
        """Without a situation head: the situations of the message's topic, then of its
        secondary topics, by closeness to their examples and their keywords."""
        similarities = self._index.similarities(result.masked_text)
        topics = [result.topic, *result.secondary_topics]
        hits = self.keywords.hits(result.masked_text, topics) if self.keywords else {}
        situations = []
        for rank, topic in enumerate(topics):
            for t, situation in self._situations:
                if t != topic:
                    continue
                words = hits.get((topic, situation), [])
                parts = {
                    "similarity": similarities[(topic, situation)],
                    "keywords": KEYWORD_WEIGHT * min(len(words), MAX_KEYWORD_HITS),
                    "topic rank": -SECONDARY_TOPIC_PENALTY * rank,
                }
                situations.append(
                    _Situation(
                        topic,
                        situation,
                        sum(parts.values()),
                        similarities[(topic, situation)],
                        words,
                        ("secondary",) if rank else (),
                        parts=parts,
                    )
                )
        return situations

    def _by_classifier(
        self,
        result: TriageResult,
        classifier: Mapping[tuple[str, str], float],
        topic_prior: Mapping[str, float] | None,
    ) -> list[_Situation]:
        """With a situation head: every situation of the bank, by :class:`SelectionWeights`;
        a complaint's topics are also weighed by their share of the training complaints."""
        similarities = self._index.similarities(result.masked_text)
        hits = self.keywords.hits(result.masked_text, self._topics) if self.keywords else {}
        topic_p = np.array([result.topic_scores.get(t, 0.0) for t, _ in self._situations])
        classifier_p = np.array([classifier.get(key, 0.0) for key in self._situations])
        similarity = np.array([similarities[key] for key in self._situations])
        words = [hits.get(key, []) for key in self._situations]
        prior = (
            np.array([topic_prior.get(t, min(topic_prior.values())) for t, _ in self._situations])
            if topic_prior and result.is_complaint
            else None
        )
        parts = self.weights.contributions(
            topic_p, classifier_p, similarity, np.array([len(w) for w in words], np.float64), prior
        )
        scores = total(parts)
        situations = []
        for i, (topic, situation) in enumerate(self._situations):
            evidence = [f"{topic_p[i]:.2f}"]
            if prior is not None:
                evidence.append(f"{math.exp(prior[i]):.0%} of training complaints")
            situations.append(
                _Situation(
                    topic,
                    situation,
                    float(scores[i]),
                    float(similarity[i]),
                    words[i],
                    tuple(evidence),
                    float(classifier_p[i]),
                    {name: float(part[i]) for name, part in parts.items()},
                )
            )
        return situations

    def slots(
        self, result: TriageResult, values: Mapping[str, str | None] | None = None
    ) -> dict[str, str]:
        """Slot values: configuration, then the message, then the request (which wins)."""
        return {
            "salutation": self.context.default_salutation,
            "company": self.context.company,
            "hotline": self.context.hotline,
            "agent_name": self.context.agent_name,
            **extract_slots(result.masked_text, self.products),
            **{k: v for k, v in (values or {}).items() if v},
        }

    def suggest(
        self,
        result: TriageResult,
        values: Mapping[str, str | None] | None = None,
        top: int = 3,
        situation_probs: Mapping[tuple[str, str], float] | None = None,
        topic_prior: Mapping[str, float] | None = None,
    ) -> list[ReplyDraft]:
        """Up to ``top`` drafts, best first; every draft passes the tone check.

        ``values`` are slot values from the request (e.g. ``product``); ``situation_probs`` the
        model's situation head for this message, by the bank's (topic, situation);
        ``topic_prior`` the log share of each topic among the model's training complaints
        (:func:`complaint_topic_prior`), used with the head for complaints.
        """
        slots = self.slots(result, values)
        situations = _explained(
            self._by_classifier(result, situation_probs, topic_prior)
            if situation_probs
            else self._by_topic(result),
            result.topic,
        )
        ranked: list[tuple[float, ReplyTemplate, _Situation, str, list[str]]] = []
        for situation in situations:
            for template in self._templates[(situation.topic, situation.situation)]:
                if result.channel and result.channel not in template.channels:
                    continue
                fit, tone_reason = self._tone_fit(template, result)
                missing = [s for s in template.slots.required if s not in slots]
                # The situation decides; tone only orders the templates of one situation.
                score = situation.score + TONE_WEIGHT * fit - MISSING_SLOT_PENALTY * len(missing)
                ranked.append((score, template, situation, tone_reason, missing))
        ranked.sort(key=lambda item: -item[0])
        drafts = []
        for score, template, situation, tone_reason, missing in ranked:
            try:
                text = template.render(slots)
            except InputError:
                continue  # a required slot is missing: never show a placeholder
            if not self._passes(template, text):
                continue
            reason = "; ".join(
                part
                for part in (
                    situation.describe(),
                    tone_reason,
                    f"missing {', '.join(missing)}" if missing else "",
                )
                if part
            )
            drafts.append(
                ReplyDraft(template_id=template.id, text=text, score=round(score, 3), reason=reason)
            )
            if len(drafts) == top:
                break
        return drafts
