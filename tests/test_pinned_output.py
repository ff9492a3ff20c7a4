"""The exact bytes the API answers, pinned: speed work must not change any of them.

A linear model with seeded random weights (no training, so a new corpus or new training
defaults do not move it) and the packaged taxonomy, lexicons and reply bank answer a fixed set
of requests: single messages on every channel (slots, personal data, cues, a VIP customer, a
product, markup, traditional characters), reply suggestions, a batch and error bodies. Their
status codes and bodies must equal ``snapshots/api_responses.json`` byte for byte, drafts
included. One model has a situation head (drafts ranked over the whole bank) and one has not
(drafts from the message's topics).

When an output is meant to change (a new template, lexicon entry or decision rule), rewrite
the file with ``TRIAGE_UPDATE_SNAPSHOTS=1 pytest tests/test_pinned_output.py`` and review its
diff with the change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from triage.api.app import create_app
from triage.config import Settings
from triage.models.linear import Featurizer, HeadSpec, LinearConfig, LinearEngine
from triage.replies import load_template_bank, situation_label
from triage.taxonomy import load_taxonomy
from triage.training.corpus import prepare_text
from triage.training.train import label_sets

SNAPSHOT = Path(__file__).parent / "snapshots" / "api_responses.json"

MESSAGES: list[dict[str, Any]] = [
    {
        "id": "a1",
        "text": "订单号 A20231105889 三天了还没发货，王女士，电话13812345678",
        "channel": "chat",
    },
    {"id": "a2", "text": "你们再不退款我就去12315投诉，已经等了两周了！！", "channel": "phone"},
    {
        "text": "尊敬的客服：我于2024年3月5日购买的格力空调漏水，"
        "合同编号HT-2024-0087，请尽快上门维修。",
        "channel": "letter",
        "customer": {"id": "c-9", "tier": "vip"},
    },
    {"text": "发票号码 FP88990011 的金额1,280.50元开错了，麻烦重开", "channel": "email"},
    {"text": "<p>账户被盗了，有人用我的卡消费了3000元，<b>马上冻结</b></p>", "channel": "social"},
    {"text": "東西很好用，物流也快，給個好評", "channel": "review"},
    {"text": "我是李经理，贵司的逾期催收电话一天打十几次，严重影响工作", "product": "信用卡"},
    {"text": "App 一直闪退，登录不了，my email is lee@example.com"},
    {"text": "想问一下会员积分怎么兑换？谢谢"},
    {"text": "建议你们增加夜间客服，晚上找不到人", "channel": "chat", "id": "a10"},
    {"text": "买的那个冰箱不制冷，退货还是换货？快一个月了", "channel": "phone"},
    {"text": "已经第三次投诉了，再不解决就起诉你们，身份证号110101199003071234"},
]

REQUESTS: list[tuple[str, str, Any]] = [
    *(("POST", "/v1/triage", message) for message in MESSAGES),
    *(("POST", "/v1/replies/suggest", message) for message in MESSAGES[:4]),
    ("POST", "/v1/triage/batch", {"items": MESSAGES[4:8]}),
    ("POST", "/v1/triage", {"text": "   "}),
    ("POST", "/v1/triage", {"text": "快递没到", "channel": "fax"}),
    ("POST", "/v1/triage", {"text": "快递没到", "priority": "high"}),
    ("POST", "/v1/triage", {"text": "x" * 201}),
    ("POST", "/v1/triage/batch", {"items": [{"text": "好"}, {"text": ""}]}),
    (
        "POST",
        "/v1/replies/check",
        {"draft": "您好，这不是我们的问题。", "message": MESSAGES[1]["text"]},
    ),
]


def random_linear_model(directory: Path, *, situation_head: bool) -> Path:
    """A linear model over the packaged labels with seeded random weights, saved."""
    taxonomy = load_taxonomy()
    labels = label_sets(taxonomy)
    if situation_head:
        bank = load_template_bank(taxonomy)
        labels["situation"] = [situation_label(*key) for key in bank.situations()]
    heads = {
        name: HeadSpec(values, "sigmoid" if len(values) == 2 else "softmax")
        for name, values in labels.items()
    }
    config = LinearConfig(
        char_ngram_min=1,
        char_ngram_max=3,
        word_ngram_max=2,
        char_features_log2=12,
        word_features_log2=10,
        segmenter="jieba-rs",
        polarity_lexicon=True,
        cue_features=False,
    )
    featurizer = Featurizer.fit(config, [prepare_text(m["text"]) for m in MESSAGES])
    outputs = sum(
        1 if spec.activation == "sigmoid" else len(spec.labels) for spec in heads.values()
    )
    rng = np.random.default_rng(20261123)
    weights = rng.normal(0.0, 4.0, (featurizer.n_features, outputs)).astype(np.float32)
    biases = rng.normal(0.0, 1.0, outputs).astype(np.float32)
    engine = LinearEngine(config, featurizer, heads, weights, biases, {"name": "pinned"})
    meta = {
        "thresholds": {"secondary_topic": 0.1, "complaint": 0.35},
        "data": {"complaint_topics": {"logistics": 300, "billing": 200, "collections": 50}},
    }
    return engine.save(directory, meta)


def answers(model_dir: Path) -> list[dict[str, Any]]:
    """Each request with its status and its body as text."""
    settings = Settings(
        model_dir=model_dir, train_if_missing=False, max_batch_items=5, max_text_length=200
    )
    out = []
    with TestClient(create_app(settings)) as client:
        for method, path, body in REQUESTS:
            response = client.request(method, path, json=body)
            out.append(
                {
                    "request": [method, path, body],
                    "status": response.status_code,
                    "body": response.text,
                }
            )
    return out


@pytest.fixture(scope="module")
def pinned() -> Iterator[dict[str, list[dict[str, Any]]]]:
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8")) if SNAPSHOT.is_file() else {}
    yield expected


@pytest.mark.parametrize(
    "situation_head", [True, False], ids=["situation-head", "no-situation-head"]
)
def test_api_answers_equal_the_snapshot_byte_for_byte(
    tmp_path: Path, pinned: dict[str, list[dict[str, Any]]], situation_head: bool
) -> None:
    key = "situation_head" if situation_head else "no_situation_head"
    got = answers(random_linear_model(tmp_path / "model", situation_head=situation_head))
    if os.environ.get("TRIAGE_UPDATE_SNAPSHOTS") == "1":
        pinned[key] = got
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(
            json.dumps(pinned, ensure_ascii=False, indent=1, sort_keys=True) + "\n", "utf-8"
        )
        pytest.skip(f"rewrote {SNAPSHOT.name}[{key!r}]")
    assert key in pinned, f"{SNAPSHOT} has no {key!r}: run with TRIAGE_UPDATE_SNAPSHOTS=1"
    assert len(got) == len(pinned[key])
    for answer, expected in zip(got, pinned[key], strict=True):
        assert answer == expected, f"{answer['request']} answers differently"
    # The pinned answers exercise what they are meant to: drafts, cues and masking.
    bodies = [
        json.loads(a["body"]) for a in got if a["status"] == 200 and a["request"][1] == "/v1/triage"
    ]
    assert all(body["replies"] for body in bodies)
    assert any(len(body["replies"]) == 3 for body in bodies)
    assert any(cue["source"] == "metadata" for body in bodies for cue in body["cues"])
    assert any(cue["source"] == "text" for body in bodies for cue in body["cues"])
    assert any("<PHONE>" in body["masked_text"] for body in bodies)
