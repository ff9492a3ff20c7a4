"""Reply situations: the label files, the situation head and how drafts use it."""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from triage.drafts import (
    KEYWORD_WEIGHT,
    MAX_KEYWORD_HITS,
    MISSING_SLOT_PENALTY,
    OTHER_TOPIC_PENALTY,
    SECONDARY_TOPIC_PENALTY,
    SITUATION_HEAD,
    TONE_WEIGHT,
    TONES,
    DraftContext,
    ExampleIndex,
    ReplySuggester,
    SelectionWeights,
    complaint_topic_prior,
    extract_slots,
)
from triage.errors import ConfigError, InputError
from triage.models.linear import HeadData, HeadSpec, LinearConfig, LinearEngine
from triage.pipeline import TriagePipeline
from triage.replies import (
    check_flags,
    check_reply,
    load_product_lexicon,
    load_situation_keywords,
    load_template_bank,
    load_tone_rules,
)
from triage.schemas import Message, TriageResult
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord, load_corpus, prepare_text, seed_corpus_path
from triage.training.situations import (
    ACCEPTABLE_WEIGHT,
    load_situation_labels,
    seed_situations_path,
    situation_head_data,
    situation_head_labels,
)
from triage.training.train import TrainArguments, train_linear

TAXONOMY = load_taxonomy()
BANK = load_template_bank(TAXONOMY)
PRODUCTS = load_product_lexicon()
RULES = load_tone_rules()


def _suggester(weights: SelectionWeights | None = None) -> ReplySuggester:
    return ReplySuggester(
        BANK,
        load_tone_rules(),
        DraftContext(company="安心家电", hotline="400-800-1234"),
        load_situation_keywords(BANK),
        PRODUCTS,
        weights,
    )


# --- label files -----------------------------------------------------------------------------


def test_seed_train_situations_label_every_complaint_against_the_bank():
    records = load_corpus(seed_corpus_path("train"), TAXONOMY)
    labels = load_situation_labels(seed_situations_path(), BANK, records)
    assert {label.id for label in labels} == {r.id for r in records if r.is_complaint}
    assert sum(label.situation != "none" for label in labels) > 0.85 * len(labels)


def test_dev_situations_validate_against_the_bank_and_the_dev_split():
    records = load_corpus(seed_corpus_path("dev"), TAXONOMY)
    path = Path(__file__).resolve().parent.parent / "triage/data/replies/dev_situations.jsonl"
    assert load_situation_labels(path, BANK, records)


RECORD = {
    "id": "m1",
    "text": "扣了我两次钱",
    "channel": "chat",
    "topic": "billing",
    "sentiment": "negative",
    "urgency": "P3",
    "is_complaint": True,
}


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ({"situation": "late_delivery"}, "situation: expected 'none' or a situation of billing"),
        ({"situation": "teleported"}, "situation: expected 'none' or a situation of billing"),
        ({"acceptable": ["double_charge"]}, "acceptable.0: expected another situation"),
        ({"id": "m2"}, "id: expected the id of a corpus message (got 'm2')"),
        ({"topic": "weather"}, "topic: expected a topic of the template bank"),
        ({"topic": "refund", "situation": "refund_delayed"}, "expected the message's topic"),
        ({"situation": 3}, "situation"),
    ],
)
def test_invalid_situation_labels_name_the_file_line_and_key(tmp_path, label, expected):
    path = tmp_path / "situations.jsonl"
    good = {"id": "m1", "topic": "billing", "situation": "double_charge", "acceptable": []}
    path.write_text(json.dumps({**good, **label}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_situation_labels(path, BANK, [CorpusRecord.model_validate(RECORD)])
    assert f"{path}:1: " in str(error.value)
    assert expected in str(error.value)


def test_duplicate_labels_are_rejected_and_partial_drops_other_messages(tmp_path):
    path = tmp_path / "situations.jsonl"
    label = {"id": "m1", "topic": "billing", "situation": "double_charge", "acceptable": []}
    other = {**label, "id": "elsewhere"}
    path.write_text(
        "\n".join(json.dumps(x) for x in (label, other, label)) + "\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r":3: id: expected unique ids"):
        load_situation_labels(path, BANK, [CorpusRecord.model_validate(RECORD)], partial=True)
    path.write_text(json.dumps(label) + "\n" + json.dumps(other) + "\n", encoding="utf-8")
    kept = load_situation_labels(path, BANK, [CorpusRecord.model_validate(RECORD)], partial=True)
    assert [x.id for x in kept] == ["m1"]


# --- the situation head ----------------------------------------------------------------------

TINY = [
    ("同一笔订单扣了我两次钱", "billing", "double_charge"),
    ("发票抬头开错了要重开", "billing", "invoice_error"),
    ("快递五天了还没送到", "logistics", "late_delivery"),
    ("包裹在路上压坏了", "logistics", "damaged_in_transit"),
    ("谢谢你们的耐心帮助", "praise", "thanks_for_praise"),
]


def test_situation_head_overfits_a_tiny_set_and_survives_a_save(tmp_path):
    records = [
        CorpusRecord.model_validate({**RECORD, "id": f"m{i}", "text": text, "topic": topic})
        for i, (text, topic, _) in enumerate(TINY)
    ]
    labels_path = tmp_path / "situations.jsonl"
    labels_path.write_text(
        "".join(
            json.dumps({"id": f"m{i}", "topic": t, "situation": s, "acceptable": []}) + "\n"
            for i, (_, t, s) in enumerate(TINY)
            if t != "praise"  # a single-situation topic needs no label
        ),
        encoding="utf-8",
    )
    labels = load_situation_labels(labels_path, BANK, records)
    texts = [prepare_text(text) for text, _, _ in TINY]
    data = situation_head_data(records, texts, labels, BANK, prepare_text)
    assert len(data.texts) == len(TINY) + sum(len(t.examples) for t in BANK.templates)
    head_labels = situation_head_labels(BANK)
    engine = LinearEngine.fit(
        LinearConfig(char_features_log2=14, word_features_log2=14),
        {"topic": HeadData(texts, [t for _, t, _ in TINY]), SITUATION_HEAD: data},
        {"topic": TAXONOMY.topic_ids, SITUATION_HEAD: head_labels},
    )
    expected = [f"{t}.{s}" for _, t, s in TINY]
    probs = engine.predict_proba(texts)[SITUATION_HEAD]
    assert [head_labels[i] for i in probs.argmax(axis=1)] == expected
    loaded = LinearEngine.load(engine.save(tmp_path / "model"))
    assert loaded.heads[SITUATION_HEAD].labels == head_labels
    reloaded = loaded.predict_proba(texts)[SITUATION_HEAD]
    assert [head_labels[i] for i in reloaded.argmax(axis=1)] == expected


def test_acceptable_situations_train_the_head_with_a_lower_weight(tmp_path):
    record = CorpusRecord.model_validate(RECORD)
    path = tmp_path / "situations.jsonl"
    label = {"id": "m1", "topic": "billing", "situation": "double_charge"}
    path.write_text(json.dumps({**label, "acceptable": ["unexpected_fee"]}) + "\n", "utf-8")
    labels = load_situation_labels(path, BANK, [record])
    data = situation_head_data([record], ["扣了我两次钱"], labels, BANK, prepare_text)
    assert data.weights is not None
    own = [(t, w) for t, w in zip(data.labels, data.weights, strict=True)][:2]
    assert own == [("billing.double_charge", 1.0), ("billing.unexpected_fee", ACCEPTABLE_WEIGHT)]
    assert set(data.weights[2:]) == {1.0}  # the bank's examples
    primary_only = situation_head_data([record], ["扣了我两次钱"], labels, BANK, prepare_text, 0)
    assert len(primary_only.texts) == len(data.texts) - 1


def test_training_without_labels_for_its_messages_gives_no_situation_head(
    tmp_path, small_train_file
):
    labels_path = tmp_path / "situations.jsonl"
    label = {"id": "not-in-corpus", "topic": "billing", "situation": "double_charge"}
    labels_path.write_text(json.dumps(label) + "\n", encoding="utf-8")
    lines: list[str] = []
    train_linear(
        TrainArguments(
            out_dir=tmp_path / "model",
            train_path=small_train_file,
            dev_path=None,
            include_review_corpus=False,
            situation_labels_path=labels_path,
        ),
        log=lines.append,
    )
    assert SITUATION_HEAD not in LinearEngine.load(tmp_path / "model").heads
    assert any("none of the training messages is labeled" in line for line in lines)


def test_the_default_training_gives_a_situation_head_over_the_bank(small_pipeline):
    head = small_pipeline.engine.heads[SITUATION_HEAD]
    assert head.labels == situation_head_labels(BANK)


# --- how drafts use it -----------------------------------------------------------------------


def test_the_situation_head_decides_the_situation_and_the_reason_says_so(small_pipeline):
    result = small_pipeline.triage_one("这个月扣了两次钱，到底怎么回事")
    result = result.model_copy(
        update={"topic": "billing", "topic_scores": {"billing": 0.9}, "secondary_topics": []}
    )
    suggester = _suggester()
    without = suggester.suggest(result)[0]
    assert without.template_id.startswith("billing.double_charge.")
    assert "classifier" not in without.reason
    with_head = suggester.suggest(result, situation_probs={("billing", "invoice_error"): 0.95})
    assert with_head[0].template_id.startswith("billing.invoice_error.")
    assert "situation invoice_error (classifier 0.95" in with_head[0].reason


def test_the_head_can_correct_the_topic_of_the_drafts(small_pipeline):
    result = small_pipeline.triage_one("快递五天了还没送到")
    result = result.model_copy(
        update={"topic": "refund", "topic_scores": {"refund": 0.5, "logistics": 0.45}}
    )
    top = _suggester().suggest(result, situation_probs={("logistics", "late_delivery"): 0.9})[0]
    assert top.template_id.startswith("logistics.late_delivery.")
    assert top.reason.startswith("topic logistics (0.45, over refund by the situation classifier)")


def test_a_complaint_is_weighed_by_its_topics_share_of_the_training_complaints(small_pipeline):
    suggester = _suggester(SelectionWeights(complaint_prior=0.5))
    result = small_pipeline.triage_one("快递五天了还没送到，催了好几次")
    probs = {("logistics", "late_delivery"): 0.6}
    counts = {"logistics": 30, "refund": 10}
    prior = suggester.complaint_prior(counts)
    share = complaint_topic_prior(counts, sorted({topic for topic, _ in BANK.situations()}))
    complaint = result.model_copy(update={"is_complaint": True})
    plain = suggester.suggest(complaint, situation_probs=probs)
    weighed = suggester.suggest(complaint, situation_probs=probs, complaint_prior=prior)
    assert weighed[0].template_id == plain[0].template_id
    assert weighed[0].template_id.startswith("logistics.late_delivery.")
    assert weighed[0].score == pytest.approx(plain[0].score + 0.5 * share["logistics"], abs=2e-3)
    assert f"{math.exp(share['logistics']):.0%} of training complaints" in weighed[0].reason
    # Other messages are not weighed: the prior describes complaints only.
    other = result.model_copy(update={"is_complaint": False})
    assert [
        (d.template_id, d.score, d.reason)
        for d in suggester.suggest(other, situation_probs=probs, complaint_prior=prior)
    ] == [
        (d.template_id, d.score, d.reason) for d in suggester.suggest(other, situation_probs=probs)
    ]


def test_training_records_how_complaints_spread_over_topics(small_pipeline, small_train_file):
    records = load_corpus(small_train_file, TAXONOMY)
    expected = Counter(r.topic for r in records if r.is_complaint)
    assert small_pipeline.engine.meta["data"]["complaint_topics"] == dict(sorted(expected.items()))


@pytest.mark.parametrize(
    "situation",
    [
        ("after_sales", "hazard_after_service"),
        ("quality", "hygiene_issue"),
        ("service", "unhelpful_staff"),
        ("service", "long_wait"),
        ("refund", "refund_request"),
        ("collections", "statement_delivery"),
        ("quality", "hotel_room_quality"),
        ("technical", "data_loss"),
        ("billing", "renewal_price_increase"),
        ("billing", "meter_reading_dispute"),
        ("quality", "missing_item"),
        ("security", "account_takeover"),
        ("after_sales", "faulty_workmanship"),
        ("technical", "device_malfunction"),
        ("technical", "data_error"),
        ("technical", "notification_overload"),
        ("after_sales", "data_wiped_in_repair"),
        ("service", "booking_not_honored"),
        ("quality", "food_taste"),
        ("quality", "counterfeit_suspicion"),
        ("technical", "poor_signal_coverage"),
    ],
    ids=lambda key: ".".join(key),
)
def test_the_head_learns_the_bank_examples_of_the_newer_situations(small_pipeline, situation):
    template = next(t for t in BANK.templates if (t.topic, t.situation) == situation)
    suggester = _suggester()
    engine = small_pipeline.engine
    labels = [tuple(label.split(".", 1)) for label in engine.heads["situation"].labels]
    for example in template.examples:
        # The bank's examples are complaints, whatever the small model's complaint head says
        # (a non-complaint's drafts are kept to its own topic).
        result = small_pipeline([Message(text=example)])[0].model_copy(
            update={"is_complaint": True}
        )
        row = engine.predict_proba([result.masked_text])["situation"][0]
        probs = dict(zip(labels, row.tolist(), strict=True))
        top = suggester.suggest(result, situation_probs=probs)[0]
        assert top.template_id.startswith(".".join(situation) + "."), (example, top.reason)


def _pipeline_with_situation_labels(base: TriagePipeline, labels: list[str]) -> TriagePipeline:
    engine = base.engine
    assert isinstance(engine, LinearEngine)
    heads = {**engine.heads, SITUATION_HEAD: HeadSpec(labels, "softmax")}
    changed = LinearEngine(
        engine.config, engine.featurizer, heads, engine.weights, engine.biases, engine.meta
    )
    return TriagePipeline(changed, base.taxonomy, suggester=_suggester())


def test_pipeline_drafts_use_the_head_of_the_model(small_pipeline):
    pipeline = TriagePipeline(small_pipeline.engine, suggester=_suggester())
    result = pipeline([Message(text="快递五天了还没送到，催了好几次")], replies=True)[0]
    assert result.replies
    assert all("(classifier " in reply.reason for reply in result.replies)


def test_head_labels_the_bank_lacks_are_ignored_with_a_warning(small_pipeline, caplog):
    labels = list(small_pipeline.engine.heads[SITUATION_HEAD].labels)
    labels[labels.index("logistics.late_delivery")] = "logistics.teleported"
    with caplog.at_level(logging.WARNING, logger="triage"):
        pipeline = _pipeline_with_situation_labels(small_pipeline, labels)
    assert "logistics.teleported" in caplog.text
    assert "logistics.late_delivery" in caplog.text  # the bank's situation the head lacks
    result = pipeline([Message(text="快递五天了还没送到")], replies=True)[0]
    assert result.replies
    assert all("teleported" not in reply.reason for reply in result.replies)


def test_models_without_the_head_rank_as_before(small_pipeline):
    engine = small_pipeline.engine
    assert isinstance(engine, LinearEngine) and list(engine.heads)[-1] == SITUATION_HEAD
    width = len(engine.heads[SITUATION_HEAD].labels)
    heads = {k: v for k, v in engine.heads.items() if k != SITUATION_HEAD}
    without = LinearEngine(
        engine.config,
        engine.featurizer,
        heads,
        engine.weights[:, :-width],
        engine.biases[:-width],
        engine.meta,
    )
    pipeline = TriagePipeline(without, suggester=_suggester())
    message = Message(text="快递五天了还没送到，催了好几次")
    result = pipeline([message], replies=True)[0]
    assert result.replies
    assert all("classifier" not in reply.reason for reply in result.replies)
    assert result.replies[0].template_id.startswith(result.topic + ".")


def _drafts_by_definition(
    suggester: ReplySuggester,
    result: TriageResult,
    probs: dict[tuple[str, str], float] | None,
    counts: dict[str, int] | None = None,
) -> list[tuple[str, float]]:
    """(template id, score) of the drafts as the ranking is defined, one template at a time:
    the situation's score (with the complaint prior of the model's training complaints
    ``counts`` for a complaint), plus the tone fit, minus each unfillable required slot; stable
    sort; the first three that render and pass the tone check."""
    similarity = ExampleIndex(BANK.templates).similarities(result.masked_text)
    keywords = load_situation_keywords(BANK)
    hits = keywords.hits(result.masked_text, list(keywords.situations))
    slots = suggester.slots(result, {"product": None})
    fits = dict(zip(TONES, suggester._tone_fits(result), strict=True))
    if probs:
        weights = SelectionWeights()
        topics = sorted({topic for topic, _ in BANK.situations()})
        share = complaint_topic_prior(counts, topics) if counts and result.is_complaint else None
        scores = {
            (topic, situation): float(
                weights.combine(
                    np.array([result.topic_scores.get(topic, 0.0)]),
                    np.array([probs.get((topic, situation), 0.0)]),
                    np.array([similarity[(topic, situation)]]),
                    np.array([float(len(hits.get((topic, situation), [])))]),
                    None if share is None else np.array([share[topic]]),
                )[0]
            )
            for topic, situation in BANK.situations()
        }
        if not result.is_complaint:  # a non-complaint's own topic first
            scores = {
                k: v - (k[0] != result.topic) * OTHER_TOPIC_PENALTY for k, v in scores.items()
            }
    else:
        topics = [result.topic, *result.secondary_topics]
        scores = {
            key: similarity[key]
            + KEYWORD_WEIGHT * min(len(hits.get(key, [])), MAX_KEYWORD_HITS)
            - SECONDARY_TOPIC_PENALTY * rank
            for rank, topic in enumerate(topics)
            for key in BANK.situations()
            if key[0] == topic
        }
    ranked = [
        (
            score
            + TONE_WEIGHT * fits[template.tone][0]
            - MISSING_SLOT_PENALTY * sum(s not in slots for s in template.slots.required),
            template,
        )
        for key, score in scores.items()
        for template in BANK.templates
        if (template.topic, template.situation) == key
        and (not result.channel or result.channel in template.channels)
    ]
    ranked.sort(key=lambda item: -item[0])
    drafts = []
    for score, template in ranked:
        try:
            text = template.render(slots)
        except InputError:
            continue
        if check_reply(text, RULES, **check_flags(template, RULES)).passed:
            drafts.append((template.id, round(score, 3)))
    return drafts[:3]


def test_drafts_are_ranked_exactly_as_defined(small_pipeline):
    """The vectorised ranking (arrays built once, terms cached) gives the drafts, scores and
    order of the plain definition, with and without the situation head, on every channel."""
    suggester = _suggester()
    pipeline = TriagePipeline(small_pipeline.engine, suggester=suggester)
    labels = small_pipeline.engine.heads[SITUATION_HEAD].labels
    channels = [None, *TAXONOMY.channels]
    records = load_corpus(seed_corpus_path("dev"), TAXONOMY)[::4]
    messages = [
        Message(text=r.text, channel=channels[i % len(channels)]) for i, r in enumerate(records)
    ]
    head = small_pipeline.engine.predict_proba(
        [pipeline.preprocess(m).masked_text for m in messages]
    )
    compared = 0
    for message, row in zip(messages, head[SITUATION_HEAD], strict=True):
        result = pipeline([message], replies=True)[0]
        probs = {tuple(label.split(".", 1)): float(p) for label, p in zip(labels, row, strict=True)}
        expected = _drafts_by_definition(
            suggester, result, probs, small_pipeline.engine.meta["data"]["complaint_topics"]
        )
        assert [(d.template_id, d.score) for d in result.replies] == expected
        without_head = suggester.suggest(result, {"product": None})
        assert [(d.template_id, d.score) for d in without_head] == _drafts_by_definition(
            suggester, result, None
        )
        compared += bool(expected)
    assert compared > 0.9 * len(messages)


# --- the product slot ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "product"),
    [
        ("在你们这买的格林立式空调，最近制冷明显不行", "格林立式空调"),
        ("昨天买的那个空调坏了", "空调"),
        ("冰箱不制冷了，师傅什么时候来", "冰箱"),
        ("明天装空调的师傅一直没来", "空调"),
        ("iPhone15手机坏了", "iPhone15手机"),
        ("我的手机号被人转走了", None),
        ("店员全程玩手机，不理人", None),
        ("包裹还没到", None),
    ],
)
def test_product_is_read_only_where_the_message_names_its_product(text, product):
    assert extract_slots(text, PRODUCTS).get("product") == product


@pytest.mark.parametrize(
    ("change", "key"),
    [({"nouns": []}, "nouns"), ({"before": ["买的", " "]}, "before"), ({"after": "坏了"}, "after")],
)
def test_a_broken_product_lexicon_names_the_file_and_key(tmp_path, change, key):
    path = tmp_path / "products.yaml"
    data = {**PRODUCTS.model_dump(), **change}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: {key}"):
        load_product_lexicon(path)


def test_request_product_fills_drafts_and_missing_product_leaves_no_placeholder(small_pipeline):
    pipeline = TriagePipeline(small_pipeline.engine, suggester=_suggester())
    text = "我在保修期内的机器坏了，申请保修，麻烦安排"
    plain, named = pipeline(
        [Message(text=text), Message(text=text, product="格力空调")], replies=True
    )
    using = [r for r in named.replies if "product" in BANK_SLOTS[r.template_id]]
    assert using, [r.template_id for r in named.replies]
    assert all("格力空调" in r.text for r in using)
    for reply in plain.replies + named.replies:
        assert "{" not in reply.text and "[[" not in reply.text and "（）" not in reply.text


BANK_SLOTS = {t.id: set(t.slots.optional) | set(t.slots.required) for t in BANK.templates}


# --- optional encoder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer BERT with a character vocabulary of the bank."""
    pytest.importorskip("sentence_transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    characters = sorted({c for t in BANK.templates for x in t.examples for c in x})
    vocabulary = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])}
    vocabulary.update({c: i + 4 for i, c in enumerate(characters)})
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    directory = tmp_path_factory.mktemp("encoder")
    PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]"
    ).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def test_an_encoder_ranks_situations_when_configured(tiny_encoder_dir, small_pipeline):
    from triage.drafts import EncoderIndex

    index = EncoderIndex(tiny_encoder_dir, BANK.templates)
    template = next(t for t in BANK.templates if t.situation == "late_delivery")
    scores = index.similarities(template.examples[0])
    assert set(scores) == set(BANK.situations())
    assert scores[("logistics", "late_delivery")] == pytest.approx(1.0, abs=1e-4)
    assert all(-1.0 - 1e-4 <= value <= 1.0 + 1e-4 for value in scores.values())
    suggester = ReplySuggester(
        BANK, load_tone_rules(), DraftContext(company="安心家电", hotline="400"), index=index
    )
    pipeline = TriagePipeline(small_pipeline.engine, suggester=suggester)
    assert pipeline([Message(text=template.examples[0])], replies=True)[0].replies


def test_a_missing_encoder_is_a_model_error(tmp_path):
    pytest.importorskip("sentence_transformers")
    from triage.drafts import EncoderIndex
    from triage.errors import ModelError

    with pytest.raises(ModelError, match="expected a model directory"):
        EncoderIndex(tmp_path / "absent", BANK.templates)


def test_a_batch_has_each_texts_similarities_exactly_and_a_text_its_own_examples_best():
    index = ExampleIndex(BANK.templates)
    examples = [t.examples[0] for t in BANK.templates[:5]]
    texts = [*examples, "", "  ", "Ａ", "快递三天了还没到，订单号 A123456", "<PHONE> 退款退款"]
    batch = index.situation_scores(texts)
    alone = np.stack([index.situation_scores([text])[0] for text in texts])
    assert batch.shape == (len(texts), len(BANK.situations()))
    assert np.array_equal(batch, alone)  # to the last bit, whatever else is in the batch
    assert np.array_equal(index.situation_scores(texts[::-1]), alone[::-1])
    assert not batch[5:8].any()  # nothing to compare: no character pair, or none known
    for row, template in zip(batch[:5], BANK.templates[:5], strict=True):
        position = BANK.situations().index((template.topic, template.situation))
        assert row[position] == pytest.approx(1.0)
    assert index.situation_scores([]).shape == (0, len(BANK.situations()))
