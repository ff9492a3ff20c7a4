"""The triage pipeline on the small model from conftest: shapes, masking, cues and errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from triage.cues import CueLexicon
from triage.engines import Engine
from triage.errors import InputError, ModelError
from triage.models.linear import FloatArray, HeadData, HeadSpec, LinearConfig, LinearEngine
from triage.pipeline import TriagePipeline
from triage.schemas import Customer, Message, TriageResult
from triage.taxonomy import Taxonomy, load_taxonomy


class _FixedUrgency:
    """Wraps an engine, except that its urgency head always gives the same probabilities
    (levels not named get 0), and so does its complaint head when ``complaint`` is given."""

    engine = "fixed-urgency"

    def __init__(
        self, base: Engine, urgency: dict[str, float], complaint: float | None = None
    ) -> None:
        self.base = base
        self.heads, self.meta = base.heads, base.meta
        self.name, self.version = base.name, base.version
        labels = self.heads["urgency"].labels
        self.row = np.array([urgency.get(label, 0.0) for label in labels], np.float32)
        self.complaint = complaint

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        probs = self.base.predict_proba(texts)
        probs["urgency"] = np.tile(self.row, (len(texts), 1))
        if self.complaint is not None:
            row = np.array([1.0 - self.complaint, self.complaint], np.float32)
            probs["complaint"] = np.tile(row, (len(texts), 1))
        return probs


def _fixed(
    pipeline: TriagePipeline,
    urgency: str | dict[str, float],
    lexicon: CueLexicon | None = None,
    complaint: float | None = None,
) -> TriagePipeline:
    """The pipeline with a fixed urgency (a level with certainty, or probabilities)."""
    probabilities = {urgency: 1.0} if isinstance(urgency, str) else urgency
    engine = _FixedUrgency(pipeline.engine, probabilities, complaint)
    return TriagePipeline(engine, pipeline.taxonomy, lexicon=lexicon)


def _gated(pipeline: TriagePipeline, kind: str, gate: dict[str, Any] | None) -> CueLexicon:
    """The pipeline's lexicon with the floor of ``kind`` gated by ``gate`` (None: hard)."""
    data = pipeline.lexicon.model_dump()
    data["kinds"][kind]["gate"] = gate
    return CueLexicon.model_validate(data)


def _rank(pipeline: TriagePipeline, urgency: str) -> int:
    return pipeline.taxonomy.urgency_rank(urgency)


def _taxonomy_with(**changes: Any) -> Taxonomy:
    data = load_taxonomy().model_dump()
    data.update(changes)
    return Taxonomy.model_validate(data)


# --- result shape ----------------------------------------------------------------------------


def test_result_fields_and_types(small_pipeline):
    taxonomy = small_pipeline.taxonomy
    result = small_pipeline.triage_one("快递三天还没到,怎么回事", id="m-1", channel="chat")
    assert isinstance(result, TriageResult)
    assert result.id == "m-1"
    assert result.channel == "chat"
    assert result.topic in taxonomy.topic_ids
    assert list(result.topic_scores) == taxonomy.topic_ids
    assert result.topic == max(result.topic_scores, key=lambda t: result.topic_scores[t])
    assert result.topic not in result.secondary_topics
    assert set(result.secondary_topics) <= set(taxonomy.topic_ids)
    assert result.sentiment in taxonomy.sentiments
    assert list(result.sentiment_scores) == taxonomy.sentiments
    assert result.urgency in taxonomy.urgency_ids
    assert list(result.urgency_scores) == taxonomy.urgency_ids
    for scores in (result.topic_scores, result.sentiment_scores, result.urgency_scores):
        assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in scores.values())
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)
    assert isinstance(result.is_complaint, bool)
    assert 0.0 <= result.complaint_score <= 1.0
    assert result.is_complaint == (result.complaint_score >= small_pipeline.thresholds.complaint)
    assert isinstance(result.needs_review, bool)
    assert result.needs_review == bool(result.review_reasons)
    assert result.explanation and all(isinstance(line, str) for line in result.explanation)
    assert result.masked_text == "快递三天还没到,怎么回事"
    assert result.model.engine == "linear"
    assert result.model.name == small_pipeline.engine.name
    assert result.model.version == small_pipeline.engine.version != "unsaved"


def test_result_serialises_to_json(small_pipeline):
    result = small_pipeline.triage_one("请问发票怎么开")
    assert TriageResult.model_validate_json(result.model_dump_json()) == result


def test_masked_text_is_normalised(small_pipeline):
    result = small_pipeline.triage_one("<p>這個產品質量太差！</p>")
    assert result.masked_text == "这个产品质量太差!"


# --- personal data ---------------------------------------------------------------------------


def test_personal_data_is_masked_in_masked_text(small_pipeline):
    text = (
        "我的手机１３８ １２３４ ５６７８,邮箱zhang@example.com,"
        "身份证11010519491231002X,卡号4539 1488 0343 6467"
    )
    masked = small_pipeline.triage_one(text).masked_text
    assert masked == "我的手机<PHONE>,邮箱<EMAIL>,身份证<ID>,卡号<CARD>"
    for secret in ("5678", "zhang", "002X", "6467"):
        assert secret not in masked


def test_cue_spans_index_masked_text(small_pipeline):
    result = small_pipeline.triage_one("电话13812345678,热水器漏电了")
    assert result.masked_text == "电话<PHONE>,热水器漏电了"
    text_cues = [c for c in result.cues if c.source == "text"]
    assert [c.text for c in text_cues] == ["漏电"]
    for cue in text_cues:
        assert cue.start is not None and cue.end is not None
        assert result.masked_text[cue.start : cue.end] == cue.text


# --- urgency cues ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("热水器漏电了,差点触电", "safety"),
        ("再不退款我就起诉你们", "legal"),
        ("我要打12315投诉你们", "regulator"),
    ],
)
def test_p1_cue_gives_p1(small_pipeline, text, kind):
    result = small_pipeline.triage_one(text)
    assert result.urgency == "P1"
    assert any(c.kind == kind and c.floor == "P1" for c in result.cues)


def test_p1_cue_raises_model_urgency_and_is_explained(small_pipeline):
    pipeline = _fixed(small_pipeline, "P4", _gated(small_pipeline, "safety", None))
    result = pipeline.triage_one("热水器漏电了")
    assert result.urgency == "P1"
    assert result.urgency_scores["P4"] == 1.0  # the model's view is kept
    lines = [line for line in result.explanation if "漏电" in line]
    assert len(lines) == 1
    assert "safety" in lines[0] and "P1" in lines[0] and "P4" in lines[0]


def test_p1_by_threshold_names_p1_probability_not_the_likeliest_level(small_pipeline):
    p1 = round(small_pipeline.thresholds.top_urgency_probability + 0.01, 2)
    pipeline = _fixed(small_pipeline, {"P1": p1, "P4": 1 - p1})
    threshold = pipeline.thresholds.top_urgency_probability
    result = pipeline.triage_one("请问你们几点开门")
    assert result.urgency == "P1"
    [line] = [line for line in result.explanation if line.startswith("urgency")]
    assert line == (
        f"urgency P1 from the model: P(P1) {p1:.2f} >= {threshold:.2f} (recall-oriented "
        f"threshold; most likely P4 {1 - p1:.2f})"
    )


def test_gated_floor_below_its_gate_is_skipped_and_explained(small_pipeline):
    lexicon = _gated(small_pipeline, "safety", {"min_model_probability": 0.2})
    low = round(small_pipeline.thresholds.top_urgency_probability / 2, 2)  # below every gate
    result = _fixed(small_pipeline, {"P1": low, "P4": 1 - low}, lexicon).triage_one("热水器漏电了")
    assert [c.kind for c in result.cues] == ["safety"]  # the cue is still reported
    assert result.urgency == "P4"
    assert (
        f"cue safety: '漏电' did not raise urgency to P1: model P(P1 or more urgent) {low:.2f}"
        " < 0.20" in result.explanation
    )


def test_gated_floor_at_its_gate_applies_and_says_so(small_pipeline):
    gate = round(small_pipeline.thresholds.top_urgency_probability / 2, 2)
    lexicon = _gated(small_pipeline, "safety", {"min_model_probability": gate})
    probabilities = {"P1": gate, "P2": 0.05, "P4": 0.95 - gate}
    result = _fixed(small_pipeline, probabilities, lexicon).triage_one("热水器漏电了")
    assert result.urgency == "P1"
    line = next(line for line in result.explanation if "raised" in line)
    assert line == (
        f"urgency raised from P4 (model) to P1 by cue safety: '漏电' (gate: model P(P1 or "
        f"more urgent) {gate:.2f} >= {gate:.2f})"
    )


def test_gate_counts_more_urgent_levels_too(small_pipeline):
    lexicon = _gated(small_pipeline, "anger", {"min_model_probability": 0.3})
    low = round(small_pipeline.thresholds.top_urgency_probability / 2, 2)  # no P1 by threshold
    probabilities = {"P1": low, "P2": 0.28, "P4": 0.72 - low}
    result = _fixed(small_pipeline, probabilities, lexicon).triage_one("你们真是太过分了")
    assert result.urgency == "P2"  # P(P2 or P1) reaches the gate 0.3; P(P2) = 0.28 alone would not


@pytest.mark.parametrize(("complaint", "urgency"), [(0.9, "P1"), (0.1, "P4")])
def test_complaint_gate_opens_for_complaints_only(small_pipeline, complaint, urgency):
    lexicon = _gated(small_pipeline, "fraud", {"complaint": True})
    pipeline = _fixed(small_pipeline, "P4", lexicon, complaint=complaint)
    result = pipeline.triage_one("有人冒用我的身份开户")
    assert result.urgency == urgency
    assert [c.applied for c in result.cues if c.kind == "fraud"] == [urgency == "P1"]
    threshold = f"{pipeline.thresholds.complaint:.2f}"
    expected = (
        f"urgency raised from P4 (model) to P1 by cue fraud: '冒用' (gate: complaint score "
        f"0.90 >= {threshold})"
        if urgency == "P1"
        else f"cue fraud: '冒用' did not raise urgency to P1: complaint score 0.10 < {threshold}"
    )
    assert expected in result.explanation


def test_gate_with_both_conditions_names_both_when_closed(small_pipeline):
    gate = {"complaint": True, "min_model_probability": 0.5}
    lexicon = _gated(small_pipeline, "fraud", gate)
    result = _fixed(small_pipeline, "P4", lexicon, complaint=0.0).triage_one("有人冒用我的身份开户")
    assert result.urgency == "P4"
    line = next(line for line in result.explanation if "did not raise" in line)
    assert "complaint score 0.00 <" in line and "model P(P1 or more urgent) 0.00 < 0.50" in line


def test_hard_floor_applies_whatever_the_model_says(small_pipeline):
    lexicon = _gated(small_pipeline, "legal", None)
    result = _fixed(small_pipeline, "P4", lexicon, complaint=0.0).triage_one("再不退款我就起诉你们")
    assert result.urgency == "P1"
    assert not any("did not raise" in line for line in result.explanation)


def test_cues_never_lower_the_model_urgency(small_pipeline):
    result = _fixed(small_pipeline, "P1").triage_one("你们真是太过分了", customer={"tier": "vip"})
    assert {c.floor for c in result.cues} == {"P2"}
    assert result.urgency == "P1"


def test_model_urgency_stands_without_cues(small_pipeline):
    result = _fixed(small_pipeline, "P3").triage_one("请问发票怎么开")
    assert result.cues == []
    assert result.urgency == "P3"


def test_negated_cue_does_not_raise_urgency(small_pipeline):
    result = _fixed(small_pipeline, "P4").triage_one("孩子没有受伤,谢谢关心")
    assert result.cues == []
    assert result.urgency == "P4"


def test_p1_cue_is_explained_even_when_the_model_agrees(small_pipeline):
    result = _fixed(small_pipeline, "P1").triage_one("热水器漏电了")
    assert result.urgency == "P1"
    assert any("漏电" in line for line in result.explanation)


@pytest.mark.parametrize("tier", ["vip", "VIP", "Vip"])
def test_vip_customer_gives_metadata_cue_and_at_least_p2(small_pipeline, tier):
    result = small_pipeline.triage_one("请问发票怎么开", customer={"tier": tier})
    metadata = [c for c in result.cues if c.source == "metadata"]
    assert len(metadata) == 1
    assert metadata[0].kind == "vip"
    assert metadata[0].floor == "P2"
    assert metadata[0].start is None and metadata[0].end is None
    assert _rank(small_pipeline, result.urgency) <= _rank(small_pipeline, "P2")


def test_vip_tier_raises_a_low_model_urgency_to_p2(small_pipeline):
    result = _fixed(small_pipeline, "P4").triage_one("请问发票怎么开", customer={"tier": "vip"})
    assert result.urgency == "P2"
    assert any("vip" in line for line in result.explanation)


@pytest.mark.parametrize("customer", [None, {"tier": "standard"}, {"id": "c-1"}])
def test_non_vip_customer_gives_no_metadata_cue(small_pipeline, customer):
    result = small_pipeline.triage_one("请问发票怎么开", customer=customer)
    assert [c for c in result.cues if c.source == "metadata"] == []


# --- input errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   \n\t ", "\u3000\u3000"])
def test_empty_or_whitespace_text_is_rejected(small_pipeline, text):
    with pytest.raises(InputError, match="empty"):
        small_pipeline.triage_one(text)


@pytest.mark.parametrize("text", ["<p></p>", "<br><br>", "&nbsp;", "\u200b\u200b"])
def test_text_empty_after_normalisation_is_rejected(small_pipeline, text):
    with pytest.raises(InputError):
        small_pipeline.triage_one(text)


def test_too_long_text_is_rejected_and_the_limit_is_inclusive(small_pipeline):
    pipeline = TriagePipeline(small_pipeline.engine, small_pipeline.taxonomy, max_text_length=20)
    assert pipeline.triage_one("快" * 20).masked_text == "快" * 20
    with pytest.raises(InputError, match=r"21.*20"):
        pipeline.triage_one("快" * 21)


def test_default_length_limit_is_enforced(small_pipeline):
    limit = small_pipeline.max_text_length
    with pytest.raises(InputError, match=str(limit)):
        small_pipeline.triage_one("退" * (limit + 1))


def test_one_bad_message_rejects_the_batch(small_pipeline):
    with pytest.raises(InputError):
        small_pipeline([Message(text="快递没到"), Message(text="  ")])


# --- batches and scores ----------------------------------------------------------------------


BATCH = [
    Message(id="a", text="快递三天还没到,怎么回事", channel="chat"),
    Message(id="b", text="热水器漏电了!!!", channel="phone"),
    Message(id="c", text="谢谢客服小姐姐,非常耐心", channel="review"),
    Message(id="d", text="请问发票怎么开", customer=Customer(tier="vip")),
    Message(id="e", text="我的手机13812345678收不到验证码"),
]


def test_batch_equals_single(small_pipeline):
    batch = small_pipeline(BATCH)
    assert [r.id for r in batch] == [m.id for m in BATCH]
    for message, result in zip(BATCH, batch, strict=True):
        assert small_pipeline([message])[0].model_dump() == result.model_dump()


def test_empty_batch_gives_no_results(small_pipeline):
    assert small_pipeline([]) == []


def test_sentiment_score_is_p_positive_minus_p_negative(small_pipeline):
    results = small_pipeline(BATCH)
    labels = small_pipeline.engine.heads["sentiment"].labels
    probs = small_pipeline.engine.predict_proba([r.masked_text for r in results])["sentiment"]
    for result, row in zip(results, probs, strict=True):
        assert -1.0 <= result.sentiment_score <= 1.0
        expected = float(row[labels.index("positive")] - row[labels.index("negative")])
        assert result.sentiment_score == round(expected, 4)
        assert result.sentiment == labels[int(np.argmax(row))]


# --- model and taxonomy must agree -----------------------------------------------------------


def test_topic_labels_mismatch_raises_model_error(small_pipeline):
    topics = load_taxonomy().model_dump()["topics"]
    taxonomy = _taxonomy_with(topics=[topics[1], topics[0], *topics[2:]])
    with pytest.raises(ModelError, match="topic"):
        TriagePipeline(small_pipeline.engine, taxonomy)


def test_missing_topic_raises_model_error(small_pipeline):
    topics = load_taxonomy().model_dump()["topics"]
    with pytest.raises(ModelError, match="topic"):
        TriagePipeline(small_pipeline.engine, _taxonomy_with(topics=topics[:-1]))


def test_urgency_labels_mismatch_raises_model_error(small_pipeline):
    urgencies = load_taxonomy().model_dump()["urgencies"]
    with pytest.raises(ModelError, match="urgency"):
        TriagePipeline(small_pipeline.engine, _taxonomy_with(urgencies=urgencies[:-1]))


def test_sentiment_labels_mismatch_raises_model_error(small_pipeline):
    with pytest.raises(ModelError, match="sentiment"):
        TriagePipeline(
            small_pipeline.engine, _taxonomy_with(sentiments=["negative", "positive", "neutral"])
        )


def test_model_without_a_head_raises_model_error(small_pipeline):
    taxonomy = small_pipeline.taxonomy
    texts = ["快递没到", "谢谢", "退款", "发票"]
    engine = LinearEngine.fit(
        LinearConfig(char_features_log2=10, word_features_log2=10),
        {
            "topic": HeadData(texts, ["logistics", "praise", "refund", "billing"]),
            "sentiment": HeadData(texts, ["negative", "positive", "neutral", "neutral"]),
            "urgency": HeadData(texts, ["P3", "P4", "P3", "P4"]),
        },
        {
            "topic": taxonomy.topic_ids,
            "sentiment": taxonomy.sentiments,
            "urgency": taxonomy.urgency_ids,
        },
    )
    with pytest.raises(ModelError, match="complaint"):
        TriagePipeline(engine, taxonomy)


# --- polar heads weighed by genre ------------------------------------------------------------


class _WithPolarHeads:
    """Wraps an engine and adds a polarity and a genre head with fixed probabilities."""

    engine = "with-polar-heads"

    def __init__(
        self, base: Engine, p_positive: float, p_message: float, genre: list[str] | None = None
    ) -> None:
        self.base, self.meta = base, base.meta
        self.name, self.version = base.name, base.version
        self.rows = {"polarity": [1 - p_positive, p_positive], "genre": [p_message, 1 - p_message]}
        self.heads = {
            **base.heads,
            "polarity": HeadSpec(["negative", "positive"], "sigmoid"),
            "genre": HeadSpec(genre or ["message", "review"], "sigmoid"),
        }

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        probs = self.base.predict_proba(texts)
        for head, row in self.rows.items():
            probs[head] = np.tile(np.array(row, np.float32), (len(texts), 1))
        return probs


def _sentiment_scores(pipeline: TriagePipeline, p_positive: float, p_message: float) -> Any:
    engine = _WithPolarHeads(pipeline.engine, p_positive, p_message)
    results = TriagePipeline(engine, pipeline.taxonomy)(BATCH)
    own = pipeline.engine.predict_proba([r.masked_text for r in results])["sentiment"]
    return results, own, pipeline.engine.heads["sentiment"].labels


@pytest.mark.parametrize("p_message", [0.0, 0.3, 1.0])
def test_genre_weighs_the_sentiment_head_against_the_polarity_head(small_pipeline, p_message):
    results, own, labels = _sentiment_scores(small_pipeline, 0.9, p_message)
    for result, row in zip(results, own, strict=True):
        p = dict(zip(labels, row, strict=True))
        polar = p["negative"] + p["positive"]
        share = p_message * p["positive"] / polar + (1 - p_message) * 0.9
        assert result.sentiment_scores["positive"] == pytest.approx(polar * share, abs=1e-3)
        assert result.sentiment_scores["neutral"] == pytest.approx(p["neutral"], abs=1e-3)


def test_genre_labels_mismatch_raises_model_error(small_pipeline):
    engine = _WithPolarHeads(small_pipeline.engine, 0.5, 0.5, genre=["review", "message"])
    with pytest.raises(ModelError, match="genre labels"):
        TriagePipeline(engine, small_pipeline.taxonomy)
