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
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import cast, get_args

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from triage.errors import InputError, ModelError
from triage.replies import (
    ProductLexicon,
    ReplyTemplate,
    SituationKeywords,
    TemplateBank,
    Tone,
    ToneRules,
    check_flags,
    check_reply,
    situation_label,
)
from triage.schemas import ReplyDraft, TriageResult
from triage.similarity import PAIR_BITS, bigram_code, bigram_codes, char_bigrams

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
_DIGIT = re.compile(r"\d")
_PATTERNS_WITHOUT_DIGITS = {k: v for k, v in _PATTERNS.items() if k not in ("amount", "date")}
# A one-character surname with a title, standing at the start of a clause ("王女士", "我是李经理").
_TITLES = ("先生", "女士", "小姐", "经理", "总")
_NAME = re.compile(
    r"(?:^|(?<=[\n,.!?;:\s。，！？；：、])|(?<=我是)|(?<=我姓))([\u4e00-\u9fa5])"
    f"({'|'.join(_TITLES)})"
    r"(?![\u4e00-\u9fa5])"
)
SITUATION_HEAD = "situation"
MAX_KEYWORD_HITS = 3
# Without a situation head: each situation keyword found adds KEYWORD_WEIGHT (for at most
# MAX_KEYWORD_HITS keywords), about what a close example adds to the similarity, and a secondary
# topic's situations lose SECONDARY_TOPIC_PENALTY per rank (fixed by hand, not tuned on dev).
KEYWORD_WEIGHT = 0.15
SECONDARY_TOPIC_PENALTY = 0.3
# With a situation head, a message that is not a complaint gets drafts of its own topic before
# any other: the blend was chosen on complaints, and for a question or a thank-you the head pulls
# towards complaint situations of other topics. Out of fold, the topic alone did better than
# the topic with its secondary topics (docs/benchmarks.md section 8).
OTHER_TOPIC_PENALTY = 100.0
# How much tone fit and each unfillable required slot move a template within its situation.
TONE_WEIGHT = 0.1
MISSING_SLOT_PENALTY = 0.5
TONES: tuple[Tone, ...] = get_args(Tone)
logger = logging.getLogger("triage")
Scores = NDArray[np.float64]
_NONE = np.zeros(0, np.int64)


def extract_slots(text: str, products: ProductLexicon | None = None) -> dict[str, str]:
    """Slot values found in a (masked, normalised) message."""
    # The amount and date patterns need a digit, which about half of all messages lack.
    patterns = _PATTERNS if _DIGIT.search(text) else _PATTERNS_WITHOUT_DIGITS
    found = {name: m.group(1).strip() for name, p in patterns.items() if (m := p.search(text))}
    # The search tries every position; a text without any title cannot match.
    name = _NAME.search(text) if any(title in text for title in _TITLES) else None
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


class SimilarityIndex(ABC):
    """How close a message is to each situation's examples (1 is identical): a situation
    scores by its closest example over all its tones."""

    # Set by subclasses from :func:`_example_texts`.
    keys: list[tuple[str, str]]
    owners: NDArray[np.int64]
    floor: float  # the lowest score a situation can have

    @abstractmethod
    def example_scores(self, texts: Sequence[str]) -> Scores:
        """Each message's similarity with every example: one row per text, columns in the
        order of ``owners``; a row does not depend on the other texts."""

    @cached_property
    def _grouping(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The examples ordered by situation, and where each situation's examples start."""
        order = np.argsort(self.owners, kind="stable")
        return order, np.searchsorted(self.owners[order], np.arange(len(self.keys)))

    def situation_scores(self, texts: Sequence[str]) -> Scores:
        """Each situation's closest example, one row per text, columns in the order of
        ``keys`` (the bank's sorted situations)."""
        order, starts = self._grouping
        closest = np.maximum.reduceat(self.example_scores(texts)[:, order], starts, axis=1)
        return np.maximum(closest, self.floor)

    def similarities(self, text: str) -> dict[tuple[str, str], float]:
        """One text's situation scores by (topic, situation)."""
        return dict(zip(self.keys, self.situation_scores([text])[0].tolist(), strict=True))


class ExampleIndex(SimilarityIndex):
    """IDF-weighted character-bigram vectors of every example and description in the bank, one
    unit row each: the messages of a batch are compared with every example in one pass over
    the columns of their character pairs."""

    floor = 0.0

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
        # Messages' pairs are looked up among the vocabulary's sorted codes, and only the
        # matrix columns of those pairs are read (a message has a few dozen pairs of the
        # vocabulary's thousands).
        codes = np.array([bigram_code(gram) for gram in self.vocabulary], np.uint64)
        self._code_order = np.argsort(codes)
        self._sorted_codes = codes[self._code_order]
        self._by_column = self.matrix.tocsc()

    def example_scores(self, texts: Sequence[str]) -> Scores:
        """Cosine of each message with each example.

        A row holds the same sums as ``matrix @ (vector / norm)`` for its text alone, to the
        last bit (``norm`` summed over the text's own terms in pair order, below): each
        example's products are added in the order of its columns, and the
        terms of the columns the message lacks (exact zeros) are left out. A batch costs
        about as many array operations as one message.
        """
        if not texts:
            return np.zeros((0, len(self.owners)))
        pairs = [bigram_codes(text) for text in texts]
        text_of = np.repeat(np.arange(len(texts), dtype=np.uint64), [len(p) for p in pairs])
        keys = (text_of << PAIR_BITS) | np.concatenate(pairs)
        keys, counts = np.unique(keys, return_counts=True)  # by text, then by pair
        text_of = (keys >> PAIR_BITS).astype(np.int64)
        codes = keys & np.uint64((1 << int(PAIR_BITS)) - 1)
        where = np.searchsorted(self._sorted_codes, codes)
        known = where < len(self._sorted_codes)
        known[known] = self._sorted_codes[where[known]] == codes[known]
        columns, text_of = self._code_order[where[known]], text_of[known]
        weights = counts[known] * self.idf[columns]
        # Each text's norm from its own terms, added in their order (by pair code), which a
        # batch does not change. Not ``np.linalg.norm`` of a vocabulary-wide row: above 10,000
        # columns OpenBLAS splits that dot product over threads, and the woken thread then
        # spins on the other core after every request (docs/benchmarks.md §4, session 21).
        norms = np.sqrt(np.bincount(text_of, weights=weights * weights, minlength=len(texts)))
        # Terms by text, then by column: the order in which each example's sum is taken.
        order = np.lexsort((columns, text_of))
        columns, text_of = columns[order], text_of[order]
        values = weights[order] / norms[text_of]
        by_column = self._by_column
        starts = by_column.indptr[columns]
        lengths = by_column.indptr[columns + 1] - starts
        entries = np.arange(lengths.sum()) + np.repeat(
            starts - (np.cumsum(lengths) - lengths), lengths
        )
        n_examples = by_column.shape[0]
        cells = np.repeat(text_of * n_examples, lengths) + by_column.indices[entries]
        products = by_column.data[entries] * np.repeat(values, lengths)
        sums = np.bincount(cells, weights=products, minlength=len(texts) * n_examples)
        return cast(Scores, sums).reshape(len(texts), n_examples)


class EncoderIndex(SimilarityIndex):
    """The same comparison with a sentence-transformers encoder (``TRIAGE_REPLY_ENCODER``):
    the bank's examples are embedded once, here; each message is embedded when it is ranked.

    ``sentence_transformers`` is imported only when such an index is built, so the default
    service never needs torch. A directory holding a plain Hugging Face encoder loads too
    (sentence-transformers then adds mean pooling).
    """

    floor = -1.0

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

    def example_scores(self, texts: Sequence[str]) -> Scores:
        """Cosine of each message's embedding with each example's. Messages are embedded one
        at a time: padded into one batch, a message's embedding may move in the last bits."""
        if not texts:
            return np.zeros((0, len(self.owners)))
        rows = [self.examples @ self._embed([text])[0] for text in texts]
        scores: Scores = np.stack(rows).astype(np.float64)
        return scores


@dataclass(frozen=True)
class SelectionWeights:
    """How the signals of a (topic, situation) add up when the model has a situation head.

    The defaults were chosen out of fold on the seed *training* split, never on dev:
    ``python bench/situation_weights.py`` fits the topic and situation heads in 5 folds and
    compares blends by how often the best-scored situation fits the labeled one (last chosen
    on the round-32 corpus, docs/benchmarks.md section 8).
    """

    topic: float = 1.0  # x the topic head's probability of the situation's topic
    classifier: float = 4.0  # x the situation head's probability of the (topic, situation)
    similarity: float = 0.25  # x the cosine of the message with the closest example
    keyword: float = 0.1  # x each situation keyword found, for at most MAX_KEYWORD_HITS
    # x the log share of the situation's topic among the model's training complaints, for
    # complaints only: the topic head learns balanced classes, complaints crowd a few topics.
    complaint_prior: float = 0.2

    def combine(
        self,
        topic: Scores,
        classifier: Scores,
        similarity: Scores,
        keywords: Scores,
        prior: Scores | None = None,
    ) -> Scores:
        """Scores of situations (any array shape, all alike); higher is better. ``prior`` is
        left out for messages that are not complaints."""
        scores = (
            self.topic * topic
            + self.classifier * classifier
            + self.similarity * similarity
            + self.keyword * np.minimum(keywords, MAX_KEYWORD_HITS)
        )
        return scores if prior is None else scores + self.complaint_prior * prior


def complaint_topic_prior(counts: Mapping[str, int], topics: Sequence[str]) -> dict[str, float]:
    """Log share of each topic among a model's training complaints (add-one smoothed), from its
    data summary (``meta["data"]["complaint_topics"]``)."""
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
    topic_note: str = ""
    classifier: float | None = None

    def describe(self) -> str:
        signals = [] if self.classifier is None else [f"classifier {self.classifier:.2f}"]
        signals.append(f"similarity {self.similarity:.2f}")
        if self.words:
            signals.append(f"words {', '.join(self.words[:MAX_KEYWORD_HITS])}")
        return (
            f"topic {self.topic}{self.topic_note}; "
            f"situation {self.situation} ({', '.join(signals)})"
        )


@dataclass(frozen=True)
class _Candidates:
    """The situations a message's drafts may come from, in ranking order, with their scores.

    Signals are kept as arrays; a candidate's evidence is put into words (:class:`_Situation`)
    only when one of its drafts is returned.
    """

    positions: NDArray[np.int64]  # each candidate's index in the bank's sorted situations
    scores: Scores
    similarity: Scores  # of every situation of the bank
    found: frozenset[str]  # the situation keywords that occur in the message
    topic_p: Scores | None = None  # with a situation head: of every situation of the bank
    classifier: Scores | None = None  # likewise
    prior: Scores | None = None  # likewise, for a complaint: its topic's log complaint share
    secondary_rank: NDArray[np.int64] | None = None  # without one: 0 for the message's topic


class ReplySuggester:
    """Ranks the bank's templates for a triaged message and fills the best ones.

    Everything that does not depend on the message (each template's situation, tone, channels
    and required slots; each situation's keywords) is laid out in arrays once, here, so that a
    message's templates are scored in a few vectorised steps; only the drafts that are returned
    are filled and explained.
    """

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
        position = {key: i for i, key in enumerate(self._situations)}
        self._situation_topic = np.array([self._topics.index(t) for t, _ in self._situations])
        self._topic_positions = {
            topic: np.flatnonzero(self._situation_topic == i)
            for i, topic in enumerate(self._topics)
        }
        # Templates grouped by situation (sorted), in bank order within one situation.
        self._templates = sorted(bank.templates, key=lambda t: position[(t.topic, t.situation)])
        owners = np.array([position[(t.topic, t.situation)] for t in self._templates])
        self._template_starts = np.searchsorted(owners, np.arange(len(self._situations) + 1))
        self._template_tone = np.array([TONES.index(t.tone) for t in self._templates])
        channels = sorted({c for t in self._templates for c in t.channels})
        self._channel_allows = {
            channel: np.array([channel in t.channels for t in self._templates])
            for channel in channels
        }
        self._required_slots = sorted({s for t in self._templates for s in t.slots.required})
        self._requires = np.array(
            [[s in t.slots.required for s in self._required_slots] for t in self._templates],
            dtype=bool,
        ).reshape(len(self._templates), len(self._required_slots))
        self._all_positions = np.arange(len(self._situations))
        # Per message, the templates and their score terms repeat: a few variants each.
        self._rows_by_channel: dict[str | None, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
        self._tone_terms: dict[tuple[float, ...], Scores] = {}
        self._missing_terms: dict[tuple[bool, ...], Scores] = {}
        lowered = keywords.lowered if keywords is not None else {}
        self._keywords = [lowered.get(topic, {}).get(s, []) for topic, s in self._situations]
        self._keyword_owners: dict[str, list[int]] = {}
        for i, words in enumerate(self._keywords):
            for word in words:
                self._keyword_owners.setdefault(word, []).append(i)

    @cached_property
    def _index(self) -> SimilarityIndex:
        """The given index (e.g. an encoder), else character bigrams, built on first use."""
        index = self._given_index or ExampleIndex(self.bank.templates)
        if index.keys != self._situations:
            raise ModelError(
                f"the reply similarity index covers the situations {index.keys}; expected the"
                f" template bank's {self._situations}"
            )
        return index

    def similarity(self, texts: Sequence[str]) -> Scores:
        """How close each (masked) message is to each situation of the bank, one row per text:
        computed for a whole batch at once, a row is what the message alone gives."""
        return self._index.situation_scores(texts)

    def situation_columns(
        self, labels: Sequence[str], model: str = "model"
    ) -> NDArray[np.int64] | None:
        """For each situation of the bank, its column in a situation head with these labels (-1
        where the head lacks it); None when the head has none of them. Labels the bank does not
        have are ignored with a warning, as is a bank situation the head does not know (it then
        ranks by similarity and keywords alone)."""
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
        column = {known[label]: i for i, label in enumerate(labels) if label in known}
        if not column:
            return None
        return np.array([column.get(key, -1) for key in self._situations])

    def _passes(self, template: ReplyTemplate, text: str) -> bool:
        """The tone check of a draft, remembered per text: most drafts repeat exactly."""
        key = (template.id, text)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = check_reply(text, self.rules, **check_flags(template, self.rules)).passed
            if len(self._verdicts) < 20_000:
                self._verdicts[key] = verdict
        return verdict

    @staticmethod
    def _tone_fits(result: TriageResult) -> list[tuple[float, str]]:
        """How well each tone (in the order of ``TONES``) suits the message, and why."""
        upset = result.urgency in ("P1", "P2") or result.sentiment_score <= -0.6
        channel = result.channel or ""
        fits: dict[str, tuple[float, str]] = {
            "standard": ((0.0 if upset else 0.1), ""),
            "apologetic": (0.3, f"apologetic tone for {result.urgency}") if upset else (-0.1, ""),
            "formal": (
                (0.25, f"formal tone for {channel}")
                if channel in ("letter", "email")
                else (-0.15, "")
            ),
            "chat": (0.2, "short tone for chat") if channel == "chat" else (-0.2, ""),
        }
        return [fits[tone] for tone in TONES]

    def _keyword_counts(self, found: frozenset[str]) -> Scores:
        """How many of each situation's keywords occur in the message."""
        counts = np.zeros(len(self._situations))
        for word in found:
            for i in self._keyword_owners.get(word, ()):
                counts[i] += 1
        return counts

    def _found(self, text: str) -> frozenset[str]:
        return self.keywords.found(text) if self.keywords is not None else frozenset()

    def _by_topic(self, result: TriageResult, similarity: Scores) -> _Candidates:
        """Without a situation head: the situations of the message's topic, then of its
        secondary topics, by closeness to their examples and their keywords."""
        found = self._found(result.masked_text)
        topics = [result.topic, *result.secondary_topics]
        groups = [self._topic_positions.get(topic, _NONE) for topic in topics]
        positions = np.concatenate(groups)
        rank = np.repeat(np.arange(len(groups)), [len(group) for group in groups])
        keywords = np.minimum(self._keyword_counts(found)[positions], MAX_KEYWORD_HITS)
        scores = similarity[positions] + KEYWORD_WEIGHT * keywords - SECONDARY_TOPIC_PENALTY * rank
        return _Candidates(positions, scores, similarity, found, secondary_rank=rank)

    def _by_classifier(
        self, result: TriageResult, classifier_p: Scores, prior: Scores | None, similarity: Scores
    ) -> _Candidates:
        """With a situation head: every situation of the bank, by :class:`SelectionWeights`
        (with the complaint prior for complaints; a non-complaint's own topic first)."""
        found = self._found(result.masked_text)
        topic_scores = result.topic_scores
        topic_p = np.array([topic_scores.get(t, 0.0) for t in self._topics])[self._situation_topic]
        prior = prior if result.is_complaint and self.weights.complaint_prior else None
        scores = self.weights.combine(
            topic_p, classifier_p, similarity, self._keyword_counts(found), prior
        )
        if not result.is_complaint:
            penalty = np.full(len(scores), OTHER_TOPIC_PENALTY)
            penalty[self._topic_positions.get(result.topic, _NONE)] = 0.0
            scores = scores - penalty
        return _Candidates(
            self._all_positions, scores, similarity, found, topic_p, classifier_p, prior
        )

    def complaint_prior(self, counts: Mapping[str, int] | None) -> Scores | None:
        """For each situation of the bank, the log share of its topic among a model's training
        complaints (``counts``: its ``meta["data"]["complaint_topics"]``); None without them."""
        if not counts:
            return None
        share = complaint_topic_prior(counts, self._topics)
        prior: Scores = np.array([share[topic] for topic in self._topics])[self._situation_topic]
        return prior

    def _classifier_scores(
        self, probs: Mapping[tuple[str, str], float] | Scores | None
    ) -> Scores | None:
        """A situation head's probabilities over the bank's situations, or None without them."""
        if probs is None or isinstance(probs, np.ndarray):
            return probs
        return np.array([probs.get(key, 0.0) for key in self._situations]) if probs else None

    def _situation(self, candidates: _Candidates, i: int, result: TriageResult) -> _Situation:
        """The ``i``-th candidate with its evidence."""
        position = int(candidates.positions[i])
        topic, situation = self._situations[position]
        words = [w for w in self._keywords[position] if w in candidates.found]
        similarity = float(candidates.similarity[position])
        if candidates.topic_p is None or candidates.classifier is None:
            note = (
                " (secondary)"
                if candidates.secondary_rank is not None and candidates.secondary_rank[i]
                else ""
            )
            return _Situation(
                topic, situation, float(candidates.scores[i]), similarity, words, note
            )
        evidence = [f"{candidates.topic_p[position]:.2f}"]
        if candidates.prior is not None:
            evidence.append(f"{math.exp(candidates.prior[position]):.0%} of training complaints")
        if topic != result.topic:
            evidence.append(f"over {result.topic} by the situation classifier")
        note = f" ({', '.join(evidence)})"
        return _Situation(
            topic,
            situation,
            float(candidates.scores[i]),
            similarity,
            words,
            note,
            float(candidates.classifier[position]),
        )

    def _rows(
        self, candidates: _Candidates, channel: str | None
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The templates of the candidates that suit the channel, in candidate order: each
        one's candidate index and its position in ``_templates``."""
        every_situation = candidates.positions is self._all_positions
        if every_situation and channel in self._rows_by_channel:
            return self._rows_by_channel[channel]
        starts = self._template_starts[candidates.positions]
        counts = self._template_starts[candidates.positions + 1] - starts
        owner = np.repeat(np.arange(len(counts)), counts)
        template = np.arange(owner.size) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        if channel:
            allowed = self._channel_allows.get(channel)
            keep = allowed[template] if allowed is not None else np.zeros(len(template), bool)
            owner, template = owner[keep], template[keep]
        if every_situation and (channel is None or channel in self._channel_allows):
            self._rows_by_channel[channel] = owner, template
        return owner, template

    def _tone_term(self, fits: tuple[float, ...]) -> Scores:
        """TONE_WEIGHT x each template's tone fit, given the fit of each tone (few variants)."""
        term = self._tone_terms.get(fits)
        if term is None:
            term = self._tone_terms[fits] = TONE_WEIGHT * np.array(fits)[self._template_tone]
        return term

    def _missing_term(self, available: tuple[bool, ...]) -> Scores:
        """MISSING_SLOT_PENALTY x each template's required slots that are not available."""
        term = self._missing_terms.get(available)
        if term is None:
            missing = (self._requires & ~np.array(available, dtype=bool)).sum(axis=1)
            term = self._missing_terms[available] = MISSING_SLOT_PENALTY * missing
        return term

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
        situation_probs: Mapping[tuple[str, str], float] | Scores | None = None,
        complaint_prior: Scores | None = None,
        similarity: Scores | None = None,
    ) -> list[ReplyDraft]:
        """Up to ``top`` drafts, best first; every draft passes the tone check.

        ``values`` are slot values from the request (e.g. ``product``); ``situation_probs`` the
        model's situation head for this message, by the bank's (topic, situation) or as an
        array in the order of :meth:`TemplateBank.situations`; ``complaint_prior`` the model's
        :meth:`complaint_prior`, used with the head when the message is a complaint;
        ``similarity`` the message's row of :meth:`similarity` when it was computed for a
        batch.

        A template scores as its situation, moved by how its tone suits the message and
        lowered for each required slot that cannot be filled; ties keep the order of
        situations, then of the bank.
        """
        slots = self.slots(result, values)
        classifier_p = self._classifier_scores(situation_probs)
        if similarity is None:
            similarity = self.similarity([result.masked_text])[0]
        candidates = (
            self._by_classifier(result, classifier_p, complaint_prior, similarity)
            if classifier_p is not None
            else self._by_topic(result, similarity)
        )
        owner, template = self._rows(candidates, result.channel)
        fits = self._tone_fits(result)
        tone_term = self._tone_term(tuple(fit for fit, _ in fits))
        missing_term = self._missing_term(tuple(s in slots for s in self._required_slots))
        every_template = candidates.positions is self._all_positions and len(template) == len(
            self._templates
        )
        if not every_template:
            tone_term, missing_term = tone_term[template], missing_term[template]
        # The situation decides; tone only orders the templates of one situation.
        scores = candidates.scores[owner] + tone_term - missing_term
        situations: dict[int, _Situation] = {}
        drafts = []
        for j in np.argsort(-scores, kind="stable").tolist():
            chosen = self._templates[template[j]]
            try:
                text = chosen.render(slots)
            except InputError:
                continue  # a required slot is missing: never show a placeholder
            if not self._passes(chosen, text):
                continue
            i = int(owner[j])
            if i not in situations:
                situations[i] = self._situation(candidates, i, result)
            unfilled = [s for s in chosen.slots.required if s not in slots]
            reason = "; ".join(
                part
                for part in (
                    situations[i].describe(),
                    fits[TONES.index(chosen.tone)][1],
                    f"missing {', '.join(unfilled)}" if unfilled else "",
                )
                if part
            )
            drafts.append(
                ReplyDraft.model_construct(  # from checked values: validation only costs time
                    template_id=chosen.id,
                    text=text,
                    score=round(float(scores[j]), 3),
                    reason=reason,
                )
            )
            if len(drafts) == top:
                break
        return drafts
