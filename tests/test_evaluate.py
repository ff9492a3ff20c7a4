"""Evaluation metrics checked by hand, calibration error on constructed cases, and the
`triage evaluate` reports (Markdown, JSON, PNG) for one model and for two side by side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fixed_engine import save_fixed_model
from triage.cli import main
from triage.evaluate import expected_calibration_error, head_metrics, metric_deltas

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Six labeled messages: gold topic and complaint flag.
GOLD = {
    "快递到哪里了": ("logistics", False),
    "包裹怎么还没有发出": ("logistics", False),
    "发票抬头写错了": ("billing", True),
    "这个月的账单金额不对": ("billing", True),
    "衣服有线头": ("quality", True),
    "杯子有裂痕": ("quality", False),
}
# Model A's topic (with its probability) and P(complaint) for each message, in GOLD's order.
A_TOPICS = [
    ("logistics", 0.91),
    ("billing", 0.62),  # wrong
    ("billing", 0.81),
    ("billing", 0.71),
    ("quality", 0.93),
    ("logistics", 0.52),  # wrong
]
A_COMPLAINT = [0.2, 0.3, 0.8, 0.4, 0.9, 0.6]  # decisions (>= 0.5): no no yes no yes yes


def predictions(
    topics: list[tuple[str, float]], complaint: list[float]
) -> dict[str, dict[str, tuple[str, float]]]:
    return {
        text: {
            "topic": topic,
            "sentiment": ("neutral", 0.8),
            "urgency": ("P3", 0.7),
            "complaint": ("yes", p_yes),
        }
        for text, topic, p_yes in zip(GOLD, topics, complaint, strict=True)
    }


@pytest.fixture
def labeled(tmp_path: Path) -> Path:
    path = tmp_path / "six.jsonl"
    rows = [
        {
            "id": str(i),
            "text": text,
            "channel": "chat",
            "topic": topic,
            "sentiment": "neutral",
            "urgency": "P3",
            "is_complaint": complaint,
        }
        for i, (text, (topic, complaint)) in enumerate(GOLD.items())
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


@pytest.fixture
def model_a(tmp_path: Path, fixed_engine_kind: str) -> Path:
    return save_fixed_model(tmp_path / "a", predictions(A_TOPICS, A_COMPLAINT), name="model-a")


@pytest.fixture
def model_b(tmp_path: Path, fixed_engine_kind: str) -> Path:
    """A with message 2 fixed (logistics, 0.7) and message 6 now right about complaints."""
    topics = [*A_TOPICS]
    topics[1] = ("logistics", 0.7)
    complaint = [*A_COMPLAINT]
    complaint[5] = 0.1
    return save_fixed_model(tmp_path / "b", predictions(topics, complaint), name="model-b")


def test_head_metrics_by_hand():
    gold = ["a", "a", "b", "b", "c", "c"]
    predicted = ["a", "b", "b", "b", "c", "a"]
    m = head_metrics(gold, predicted, ["a", "b", "c", "d"])
    assert m["accuracy"] == round(4 / 6, 4)
    # a: 1 of 2 predicted right, 1 of 2 found; b: 2 of 3 right, 2 of 2 found; c: 1/1, 1/2.
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"] == {
        "precision": round(2 / 3, 4),
        "recall": 1.0,
        "f1": 0.8,
        "support": 2,
    }
    assert m["per_class"]["c"]["f1"] == round(2 / 3, 4)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # "d" occurs nowhere, so it does not pull the average down.
    assert m["macro_f1"] == round((0.5 + 0.8 + 2 / 3) / 3, 4)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert "ece" not in m


def test_ece_of_constructed_bins():
    # 10 messages at 0.9 confidence, 7 right: |0.7 - 0.9| = 0.2 on half the messages;
    # 10 at 0.6, 6 right: perfectly calibrated.
    confidence = [0.9] * 10 + [0.6] * 10
    correct = [True] * 7 + [False] * 3 + [True] * 6 + [False] * 4
    ece, bins = expected_calibration_error(confidence, correct)
    assert ece == pytest.approx(0.5 * 0.2)
    assert [(b["count"], b["accuracy"], b["confidence"]) for b in bins] == [
        (10, 0.6, 0.6),
        (10, 0.7, 0.9),
    ]
    assert bins[0]["lower"] < 0.6 <= bins[0]["upper"]


def test_ece_is_zero_when_calibrated_and_the_gap_when_always_wrong():
    assert expected_calibration_error([0.75] * 4, [True, True, True, False])[0] == 0.0
    assert expected_calibration_error([0.95, 1.0], [False, False])[0] == pytest.approx(0.975)
    assert expected_calibration_error([], []) == (0.0, [])


def test_head_metrics_measure_calibration_of_the_top_class():
    probabilities = [{"x": 0.9, "y": 0.1}, {"x": 0.3, "y": 0.7}, {"x": 0.55, "y": 0.45}]
    m = head_metrics(["x", "x", "y"], ["x", "y", "x"], ["x", "y"], probabilities)
    # top classes x (0.9, right), y (0.7, wrong), x (0.55, wrong): three bins of one each.
    assert m["ece"] == round((0.1 + 0.7 + 0.55) / 3, 4)
    assert sum(b["count"] for b in m["calibration"]) == 3


def test_metric_deltas_are_b_minus_a():
    a = head_metrics(["x", "y"], ["x", "x"], ["x", "y"], [{"x": 0.8, "y": 0.2}] * 2)
    b = head_metrics(["x", "y"], ["x", "y"], ["x", "y"], [{"x": 0.8, "y": 0.2}, {"x": 0, "y": 1}])
    deltas = metric_deltas(
        {
            **dict.fromkeys(("topic", "sentiment", "urgency", "complaint"), a),
            "needs_review_rate": 0.5,
        },
        {
            **dict.fromkeys(("topic", "sentiment", "urgency", "complaint"), b),
            "needs_review_rate": 0.0,
        },
    )
    assert deltas["topic"]["accuracy"] == 0.5
    assert deltas["topic"]["macro_f1"] == round(1.0 - a["macro_f1"], 4)
    assert deltas["topic"]["ece"] == round(b["ece"] - a["ece"], 4)
    assert deltas["topic"]["per_class"]["y"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert deltas["needs_review_rate"] == -0.5


def test_evaluate_writes_markdown_json_and_pngs(tmp_path, labeled, model_a):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main, ["evaluate", str(model_a), str(labeled), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["name"] == "model-a" and report["model"]["engine"] == "fixed"
    assert report["data"] == {"file": "six.jsonl", "messages": 6}
    topic = report["metrics"]["topic"]
    assert topic["accuracy"] == round(4 / 6, 4)
    # logistics: predicted 1, 6 (1 right), gold 1, 2; billing: predicted 2, 3, 4 (2 right);
    # quality: predicted 5 (right), gold 5, 6.
    assert topic["macro_f1"] == round((0.5 + 0.8 + 2 / 3) / 3, 4)
    assert topic["per_class"]["billing"]["precision"] == round(2 / 3, 4)
    # Confidences 0.91 0.62 0.81 0.71 0.93 0.52, right: yes no yes yes yes no. In 15 bins,
    # 0.91 and 0.93 share one (accuracy 1, mean 0.92); the others are alone.
    gaps = 2 * (1.0 - 0.92) + 0.62 + (1 - 0.81) + (1 - 0.71) + 0.52
    assert topic["ece"] == pytest.approx(gaps / 6, abs=1e-4)
    complaint = report["metrics"]["complaint"]
    # decisions no no yes no yes yes against gold no no yes yes yes no: 4 of 6 right.
    assert complaint["accuracy"] == round(4 / 6, 4)
    assert complaint["confusion_matrix"] == [[2, 1], [1, 2]]

    markdown = (out / "report.md").read_text(encoding="utf-8")
    # Printed as well: the same Markdown, without the image links.
    assert re.sub(r"\n\n!\[[^]]*\]\([^)]*\)", "", markdown) + "\n" == result.stdout
    assert f"| topic | {4 / 6:.3f} | {topic['macro_f1']:.3f} | {topic['ece']:.3f} |" in markdown
    assert "| billing | 0.667 | 1.000 | 0.800 | 2 |" in markdown
    # Six messages leave most topics out: no figures for what was neither seen nor predicted.
    assert "| refund | n/a | n/a | n/a | 0 |" in markdown
    assert "![topic confusion matrix](confusion_topic.png)" in markdown
    for head in ("topic", "sentiment", "urgency", "complaint"):
        assert (out / f"confusion_{head}.png").read_bytes().startswith(PNG_SIGNATURE)
    assert result.stdout.startswith("# Evaluation of model-a")


def test_evaluate_json_to_stdout(labeled, model_a):
    result = CliRunner().invoke(
        main, ["evaluate", str(model_a), str(labeled), "--json", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sum(map(sum, report["metrics"]["urgency"]["confusion_matrix"])) == 6
    assert report["calibration_bins"] == 15


def test_compare_reports_deltas_per_head_and_class(tmp_path, labeled, model_a, model_b):
    out = tmp_path / "comparison"
    args = ["evaluate", "--compare", str(model_a), str(model_b), str(labeled), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert (report["a"]["model"]["name"], report["b"]["model"]["name"]) == ("model-a", "model-b")
    deltas = report["deltas"]
    # B gets message 2 right: 5 of 6 topics; logistics now 2 of 3 predicted right, all found.
    assert deltas["topic"]["accuracy"] == round(round(5 / 6, 4) - round(4 / 6, 4), 4)
    logistics = deltas["topic"]["per_class"]["logistics"]
    assert logistics["precision"] == round(round(2 / 3, 4) - 0.5, 4)
    assert logistics["recall"] == 0.5
    assert deltas["topic"]["per_class"]["quality"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert deltas["complaint"]["accuracy"] == round(round(5 / 6, 4) - round(4 / 6, 4), 4)
    assert deltas["sentiment"]["accuracy"] == 0.0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Comparison: A = model-a")
    assert f"| topic | accuracy | 0.667 | 0.833 | {deltas['topic']['accuracy']:+.3f} |" in markdown
    for head in ("topic", "sentiment", "urgency", "complaint"):
        for side in ("a", "b"):
            assert (out / f"confusion_{head}_{side}.png").read_bytes().startswith(PNG_SIGNATURE)
            assert f"(confusion_{head}_{side}.png)" in markdown


def test_evaluate_a_registry_version_by_its_id(labeled, model_a):
    runner = CliRunner()
    registered = runner.invoke(main, ["models", "register", str(model_a)])
    assert registered.exit_code == 0, registered.output
    version_id = registered.stdout.split()[1]
    result = runner.invoke(main, ["evaluate", version_id, str(labeled), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["source"] == version_id


def test_evaluate_usage_errors(labeled, model_a, tmp_path):
    runner = CliRunner()
    one = runner.invoke(main, ["evaluate", str(labeled)])
    assert one.exit_code == 2 and "expected MODEL DATA (got 1 arguments)" in one.stderr
    both = runner.invoke(main, ["evaluate", "--compare", str(model_a), str(model_a), "x", "y"])
    assert both.exit_code == 2 and "expected --compare A B DATA" in both.stderr
    unknown = runner.invoke(main, ["evaluate", "no-such-version", str(labeled)])
    assert unknown.exit_code == 2
    assert "unknown model version 'no-such-version'" in unknown.stderr
    missing = runner.invoke(main, ["evaluate", str(tmp_path / "missing"), str(labeled)])
    assert missing.exit_code == 2
    assert f"error: {tmp_path / 'missing'}: no such model directory" in missing.stderr
