"""Training's checks of its data and its dev-tuned P1 threshold."""

from __future__ import annotations

import numpy as np
import pytest

from triage.errors import ConfigError
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord
from triage.training.train import P1_RECALL_TARGET, check_label_coverage, tune_top_urgency


def _urgency(p1_of_p1: float, p1_of_others: float, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """P1 messages get ``p1_of_p1`` of P1, the others (gold P4) ``p1_of_others``."""
    gold = np.array([0] * n + [3] * n)
    p1 = np.where(gold == 0, p1_of_p1, p1_of_others)
    probs = np.column_stack([p1, np.zeros_like(p1), np.zeros_like(p1), 1 - p1])
    return probs, gold


def test_p1_threshold_separates_p1_from_a_model_that_leans_to_p1_everywhere():
    probs, gold = _urgency(p1_of_p1=0.45, p1_of_others=0.3)  # P4 is every message's likeliest
    threshold = tune_top_urgency(probs, gold)
    assert threshold is not None and 0.3 < threshold <= 0.45


def test_p1_threshold_keeps_recall_before_precision():
    probs, gold = _urgency(p1_of_p1=0.04, p1_of_others=0.02)
    # Only thresholds at or below 0.04 find the P1 messages; the one that reaches the recall
    # target with the best macro-F1 is kept, though it also calls nothing else P1 at 0.03.
    assert tune_top_urgency(probs, gold) in {0.03, 0.04}


def test_p1_threshold_warns_when_no_setting_reaches_the_recall_target():
    probs, gold = _urgency(p1_of_p1=0.0, p1_of_others=0.0)
    said: list[str] = []
    tune_top_urgency(probs, gold, said.append)
    assert said and f"keeps dev P1 recall at {P1_RECALL_TARGET}" in said[0]


def test_p1_threshold_is_left_alone_without_p1_dev_messages():
    probs, gold = _urgency(p1_of_p1=0.5, p1_of_others=0.1)
    assert tune_top_urgency(probs[20:], gold[20:]) is None


def _record(n: int, **labels: str) -> CorpusRecord:
    fields = {"topic": "logistics", "sentiment": "negative", "urgency": "P3", **labels}
    return CorpusRecord.model_validate(
        {"id": f"r{n}", "text": f"消息{n}", "channel": "chat", "is_complaint": n % 2 == 0, **fields}
    )


def test_label_coverage_names_labels_the_model_can_never_predict():
    records = [
        _record(
            n,
            topic=("logistics", "billing")[n % 2],
            sentiment=("negative", "neutral")[n % 2],
            urgency=("P3", "P4")[n % 2],
        )
        for n in range(200)
    ]
    said: list[str] = []
    check_label_coverage(records, load_taxonomy(), ["own.jsonl"], said.append)
    assert any(line.startswith("warning: topic:") and "'quality'" in line for line in said)
    assert any(line.startswith("warning: sentiment:") and "'positive'" in line for line in said)
    assert not any("training messages; expect a weak model" in line for line in said)


def test_label_coverage_refuses_a_head_with_one_label_and_names_the_file():
    records = [_record(n, topic=("logistics", "billing")[n % 2]) for n in range(10)]
    with pytest.raises(ConfigError, match=r"own.jsonl: sentiment: .*got only \['negative'\]"):
        check_label_coverage(records, load_taxonomy(), ["own.jsonl"], lambda _: None)
