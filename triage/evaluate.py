"""Per-head metrics: accuracy, macro-F1, per-class precision/recall/F1 and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def head_metrics(
    gold: Sequence[str], predicted: Sequence[str], labels: list[str]
) -> dict[str, Any]:
    """Metrics for one head; labels fix the order of classes and of the confusion matrix."""
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, zero_division=0
    )
    return {
        "n": len(gold),
        "accuracy": round(float(accuracy_score(gold, predicted)), 4),
        "macro_f1": round(
            float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)), 4
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


def format_report(metrics: dict[str, dict[str, Any]]) -> str:
    """Human-readable tables of :func:`head_metrics` results for several heads."""
    out = []
    for head, m in metrics.items():
        out.append(
            f"== {head}: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  (n={m['n']})"
        )
        out.append(f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
        for label, c in m["per_class"].items():
            out.append(
                f"{label:<14}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1']:>10.3f}{c['support']:>9}"
            )
        labels = m["labels"]
        width = max(6, *(len(label) + 1 for label in labels))
        out.append("confusion matrix (rows: gold, columns: predicted)")
        out.append(" " * width + "".join(f"{label[: width - 1]:>{width}}" for label in labels))
        for label, row in zip(labels, m["confusion_matrix"], strict=True):
            out.append(f"{label:<{width}}" + "".join(f"{v:>{width}}" for v in row))
        out.append("")
    return "\n".join(out)


def evaluate_pipeline(
    pipeline: Any, records: Sequence[Any], batch_size: int = 512
) -> dict[str, Any]:
    """Run the full pipeline (model and cues) over labeled records and score every head."""
    from triage.schemas import Message

    results = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        results += pipeline([Message(id=r.id, text=r.text, channel=r.channel) for r in chunk])
    taxonomy = pipeline.taxonomy
    return {
        "topic": head_metrics(
            [r.topic for r in records], [x.topic for x in results], taxonomy.topic_ids
        ),
        "sentiment": head_metrics(
            [r.sentiment for r in records], [x.sentiment for x in results], taxonomy.sentiments
        ),
        "urgency": head_metrics(
            [r.urgency for r in records], [x.urgency for x in results], taxonomy.urgency_ids
        ),
        "complaint": head_metrics(
            ["yes" if r.is_complaint else "no" for r in records],
            ["yes" if x.is_complaint else "no" for x in results],
            ["no", "yes"],
        ),
        "needs_review_rate": round(sum(x.needs_review for x in results) / max(1, len(results)), 4),
    }
