"""Evaluation reports: Markdown for people, JSON for tools, confusion-matrix PNGs; for one model
or for two models side by side (A and B, deltas B - A)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.errors import InputError
from triage.evaluate import (
    CALIBRATION_BINS,
    CLASS_METRICS,
    SUMMARY_METRICS,
    metric_deltas,
)
from triage.pipeline import HEADS
from triage.schemas import ModelInfo

METRIC_TITLES = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "ece": "ECE",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}
SIDES = ("a", "b")


@dataclass(frozen=True)
class Evaluation:
    """One model's :func:`triage.evaluate.evaluate_pipeline` metrics on one labeled file."""

    model: ModelInfo
    source: str  # the model as the user named it: a directory or a registry version
    metrics: dict[str, Any]

    def identity(self) -> dict[str, str]:
        return {**self.model.model_dump(), "source": self.source}

    def title(self) -> str:
        return f"{self.model.name} {self.model.version} ({self.model.engine} engine)"


def _number(value: float) -> str:
    return f"{value:.3f}"


def _predicted_counts(metrics: dict[str, Any]) -> list[int]:
    """How often each class was predicted: the column sums of the confusion matrix."""
    return [int(sum(column)) for column in zip(*metrics["confusion_matrix"], strict=True)]


def _class_cells(per_class: dict[str, Any], predicted: int) -> list[str]:
    """Precision, recall and F1 as text; "n/a" where a class was never predicted (precision)
    or never occurs in the data (recall), rather than a 0 that reads like a failure."""
    precision = _number(per_class["precision"]) if predicted else "n/a"
    recall = _number(per_class["recall"]) if per_class["support"] else "n/a"
    f1 = _number(per_class["f1"]) if predicted or per_class["support"] else "n/a"
    return [precision, recall, f1]


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def confusion_table(head: dict[str, Any]) -> str:
    """A head's confusion matrix as a Markdown table (rows: gold, columns: predicted)."""
    labels = head["labels"]
    rows = [
        [label, *(str(v) for v in row)]
        for label, row in zip(labels, head["confusion_matrix"], strict=True)
    ]
    return _table(["gold \\ predicted", *labels], rows)


def plot_confusion_matrix(head: dict[str, Any], title: str, path: Path) -> Path:
    """Save a head's confusion matrix as a PNG: counts in the cells, colour by the share of
    the gold row (so that rare classes are as visible as frequent ones)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(head["confusion_matrix"], dtype=np.float64)
    labels = head["labels"]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = 2.5 + 0.55 * len(labels)
    figure = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the gold class")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title(title, fontsize=10)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, f"{int(count)}", ha="center", va="center", color=colour)
    figure.savefig(path, dpi=100)
    return path


@dataclass(frozen=True)
class Report:
    """The report of one evaluation, or the comparison of two (A, B) on the same data."""

    data: str
    messages: int
    evaluations: tuple[Evaluation, ...]

    def __post_init__(self) -> None:
        if len(self.evaluations) not in (1, 2):
            raise InputError(f"a report covers 1 or 2 models (got {len(self.evaluations)})")

    @property
    def is_comparison(self) -> bool:
        return len(self.evaluations) == 2

    def image_name(self, index: int, head: str) -> str:
        suffix = f"_{SIDES[index]}" if self.is_comparison else ""
        return f"confusion_{head}{suffix}.png"

    def as_json(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "data": {"file": self.data, "messages": self.messages},
            "calibration_bins": CALIBRATION_BINS,
        }
        if not self.is_comparison:
            (only,) = self.evaluations
            return {**common, "model": only.identity(), "metrics": only.metrics}
        a, b = self.evaluations
        sides = {
            side: {"model": e.identity(), "metrics": e.metrics}
            for side, e in zip(SIDES, self.evaluations, strict=True)
        }
        return {**common, **sides, "deltas": metric_deltas(a.metrics, b.metrics)}

    def _intro(self) -> str:
        return (
            f"Data: `{self.data}`, {self.messages} labeled messages. Decisions are scored as "
            "the service makes them (model, thresholds and urgency cues). ECE is the expected "
            "calibration error of the top-class probability over "
            f"{CALIBRATION_BINS} equal-width bins (lower is better; see docs/models.md)."
        )

    def _single_markdown(self, images: bool) -> list[str]:
        (e,) = self.evaluations
        m = e.metrics
        rows = [[head, *(_number(m[head][metric]) for metric in SUMMARY_METRICS)] for head in HEADS]
        out = [
            f"# Evaluation of {e.title()}",
            f"Model: `{e.source}`.",
            self._intro(),
            _table(["head", *(METRIC_TITLES[x] for x in SUMMARY_METRICS)], rows),
            f"Needs review: {m['needs_review_rate']:.1%} of messages.",
        ]
        for head in HEADS:
            per_class = [
                [label, *_class_cells(c, predicted), str(c["support"])]
                for (label, c), predicted in zip(
                    m[head]["per_class"].items(), _predicted_counts(m[head]), strict=True
                )
            ]
            out += [
                f"## {head}",
                _table(["class", "precision", "recall", "F1", "support"], per_class),
                "Confusion matrix (rows: gold, columns: predicted):",
                confusion_table(m[head]),
            ]
            if images:
                out.append(f"![{head} confusion matrix]({self.image_name(0, head)})")
        return out

    def _comparison_markdown(self, images: bool) -> list[str]:
        a, b = self.evaluations
        deltas = metric_deltas(a.metrics, b.metrics)
        summary = [
            [
                head,
                METRIC_TITLES[metric],
                _number(a.metrics[head][metric]),
                _number(b.metrics[head][metric]),
                _signed(deltas[head][metric]),
            ]
            for head in HEADS
            for metric in SUMMARY_METRICS
        ]
        summary.append(
            [
                "all",
                "needs review rate",
                _number(a.metrics["needs_review_rate"]),
                _number(b.metrics["needs_review_rate"]),
                _signed(deltas["needs_review_rate"]),
            ]
        )
        out = [
            f"# Comparison: A = {a.title()}, B = {b.title()}",
            f"A: `{a.source}`. B: `{b.source}`. Deltas are B − A.",
            self._intro(),
            _table(["head", "metric", "A", "B", "Δ (B − A)"], summary, numeric_from=2),
        ]
        for head in HEADS:
            rows = []
            for label, class_b in b.metrics[head]["per_class"].items():
                class_a = a.metrics[head]["per_class"][label]
                row = [label, str(class_b["support"])]
                for metric in CLASS_METRICS:
                    row += [
                        _number(class_a[metric]),
                        _number(class_b[metric]),
                        _signed(deltas[head]["per_class"][label][metric]),
                    ]
                rows.append(row)
            header = ["class", "support"]
            for metric in CLASS_METRICS:
                title = METRIC_TITLES[metric]
                header += [f"{title} A", f"{title} B", "Δ"]
            out += [f"## {head}", _table(header, rows)]
            for index, (side, e) in enumerate(zip(SIDES, self.evaluations, strict=True)):
                out += [
                    f"Confusion matrix of {side.upper()} (rows: gold, columns: predicted):",
                    confusion_table(e.metrics[head]),
                ]
                if images:
                    name = self.image_name(index, head)
                    out.append(f"![{head} confusion matrix of {side.upper()}]({name})")
        return out

    def as_markdown(self, images: bool = False) -> str:
        """The report for people; ``images`` links the PNGs that :meth:`write` saves beside it."""
        parts = (
            self._comparison_markdown(images)
            if self.is_comparison
            else self._single_markdown(images)
        )
        return "\n\n".join(parts) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        """Write report.md, report.json and one confusion-matrix PNG per head and model."""
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            written = []
            for index, e in enumerate(self.evaluations):
                for head in HEADS:
                    side = f" ({SIDES[index].upper()})" if self.is_comparison else ""
                    written.append(
                        plot_confusion_matrix(
                            e.metrics[head],
                            f"{head}: {e.model.name} {e.model.version}{side}",
                            out_dir / self.image_name(index, head),
                        )
                    )
            markdown, as_json = out_dir / "report.md", out_dir / "report.json"
            markdown.write_text(self.as_markdown(images=True), encoding="utf-8")
            as_json.write_text(
                json.dumps(self.as_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            raise InputError(f"{out_dir}: the report cannot be written ({exc})") from exc
        return [markdown, as_json, *written]
