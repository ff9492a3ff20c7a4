"""Per-head metrics of the served decisions: accuracy, macro-F1, per-class precision/recall/F1,
confusion matrices and expected calibration error; and the deltas between two models."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from tqdm import tqdm

from triage.pipeline import HEADS, TriagePipeline
from triage.schemas import Message, TriageResult
from triage.taxonomy import Taxonomy
from triage.training.corpus import CorpusRecord

# Equal-width bins over the top-class probability, as in Guo et al. (2017), "On Calibration of
# Modern Neural Networks"; 15 is their choice and a common default.
CALIBRATION_BINS = 15
# Metrics of a head that a comparison reports side by side; lower is better only for ECE.
SUMMARY_METRICS = ("accuracy", "macro_f1", "ece")
CLASS_METRICS = ("precision", "recall", "f1")


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict[str, Any]]]:
    """ECE = sum over bins of (share of messages in the bin) * |accuracy - mean confidence|.

    Bin ``i`` holds confidences in ``(i/bins, (i+1)/bins]`` (the first also holds 0). Returns
    the ECE and the non-empty bins (the reliability table) that explain it.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return 0.0, []
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if not count:
            continue
        accuracy, mean_confidence = float(hits[members].mean()), float(conf[members].mean())
        ece += count / len(conf) * abs(accuracy - mean_confidence)
        table.append(
            {
                "lower": round(float(edges[b]), 4),
                "upper": round(float(edges[b + 1]), 4),
                "count": count,
                "accuracy": round(accuracy, 4),
                "confidence": round(mean_confidence, 4),
            }
        )
    return round(ece, 4), table


def head_metrics(
    gold: Sequence[str],
    predicted: Sequence[str],
    labels: list[str],
    probabilities: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Metrics for one head; labels fix the order of classes and of the confusion matrix.

    Macro-F1 averages over the labels that occur in the gold labels or the predictions: a class
    absent from a small evaluation file says nothing about the model and does not count as 0.
    With ``probabilities`` (one mapping label -> probability per message) the calibration of
    the top class is measured too: its probability is the confidence, and it is correct when
    it is the gold label.
    """
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, zero_division=0
    )
    occurring = set(gold) | set(predicted)
    averaged = [label for label in labels if label in occurring] or labels
    metrics: dict[str, Any] = {
        "n": len(gold),
        "accuracy": round(float(accuracy_score(gold, predicted)), 4),
        "macro_f1": round(
            float(f1_score(gold, predicted, labels=averaged, average="macro", zero_division=0)),
            4,
        ),
        "per_class": {
            label: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "labels": labels,
        "confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
    }
    if probabilities is not None:
        rows = np.array([[p[label] for label in labels] for p in probabilities], np.float64)
        top = [labels[i] for i in rows.argmax(axis=1)] if len(rows) else []
        ece, table = expected_calibration_error(
            rows.max(axis=1) if len(rows) else [],
            [t == g for t, g in zip(top, gold, strict=True)],
        )
        metrics["ece"] = ece
        metrics["calibration"] = table
    return metrics


@dataclass(frozen=True)
class HeadReading:
    """How one head reads its labels, a gold record and a served result."""

    labels: Callable[[Taxonomy], list[str]]
    gold: Callable[[CorpusRecord], str]
    predicted: Callable[[TriageResult], str]
    probabilities: Callable[[TriageResult], Mapping[str, float]]


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# The probabilities are those in the result: topic and urgency scores before cues and
# thresholds, sentiment after the polarity blend, P(complaint) as the "yes" class.
HEAD_READINGS = {
    "topic": HeadReading(
        lambda t: t.topic_ids, lambda r: r.topic, lambda x: x.topic, lambda x: x.topic_scores
    ),
    "sentiment": HeadReading(
        lambda t: t.sentiments,
        lambda r: r.sentiment,
        lambda x: x.sentiment,
        lambda x: x.sentiment_scores,
    ),
    "urgency": HeadReading(
        lambda t: t.urgency_ids,
        lambda r: r.urgency,
        lambda x: x.urgency,
        lambda x: x.urgency_scores,
    ),
    "complaint": HeadReading(
        lambda t: ["no", "yes"],
        lambda r: _yes_no(r.is_complaint),
        lambda x: _yes_no(x.is_complaint),
        lambda x: {"no": 1.0 - x.complaint_score, "yes": x.complaint_score},
    ),
}


def evaluate_pipeline(
    pipeline: TriagePipeline,
    records: Sequence[CorpusRecord],
    batch_size: int = 512,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the full pipeline (model, thresholds and cues, as served) over labeled records and
    score every head."""
    results: list[TriageResult] = []
    with tqdm(total=len(records), unit="msg", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            results += pipeline([Message(id=r.id, text=r.text, channel=r.channel) for r in chunk])
            bar.update(len(chunk))
    metrics: dict[str, Any] = {
        head: head_metrics(
            [reading.gold(r) for r in records],
            [reading.predicted(x) for x in results],
            reading.labels(pipeline.taxonomy),
            [reading.probabilities(x) for x in results],
        )
        for head, reading in HEAD_READINGS.items()
    }
    metrics["needs_review_rate"] = round(
        sum(x.needs_review for x in results) / max(1, len(results)), 4
    )
    return metrics


def _delta(a: float, b: float) -> float:
    return round(b - a, 4)


def metric_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B minus A for every summary and per-class metric of two :func:`evaluate_pipeline`
    results on the same data (the same labels)."""
    deltas: dict[str, Any] = {}
    for head in HEADS:
        head_a, head_b = a[head], b[head]
        deltas[head] = {
            metric: _delta(head_a[metric], head_b[metric])
            for metric in SUMMARY_METRICS
            if metric in head_a and metric in head_b
        }
        deltas[head]["per_class"] = {
            label: {
                metric: _delta(head_a["per_class"][label][metric], values[metric])
                for metric in CLASS_METRICS
            }
            for label, values in head_b["per_class"].items()
        }
    deltas["needs_review_rate"] = _delta(a["needs_review_rate"], b["needs_review_rate"])
    return deltas
