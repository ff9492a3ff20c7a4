"""The reply template bank, slot rendering and the tone check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from triage.drafts import DraftContext, ReplySuggester, extract_slots
from triage.errors import ConfigError, EmptyTextError, InputError
from triage.replies import (
    KeywordFinder,
    ReplyTemplate,
    bank_check,
    check_reply,
    load_situation_keywords,
    load_template_bank,
    load_tone_rules,
)
from triage.taxonomy import load_taxonomy
from triage.training.corpus import seed_corpus_path

TAXONOMY = load_taxonomy()
RULES = load_tone_rules()
BANK = load_template_bank(TAXONOMY)
SAMPLE = {
    "salutation": "张先生",
    "company": "安心家电",
    "hotline": "400-800-1234",
    "agent_name": "小王",
    "order_id": "DD20241101",
    "contract_id": "HT-2024-018",
    "invoice_id": "FP-88231",
    "amount": "1,280元",
    "date": "11月25日",
    "product": "空气炸锅",
}
CONTEXT = {k: SAMPLE[k] for k in ("salutation", "company", "hotline", "agent_name")}


def _all_slots(template: ReplyTemplate) -> dict[str, str]:
    names = [*template.slots.required, *template.slots.optional]
    return {**CONTEXT, **{name: SAMPLE.get(name, "示例") for name in names}}


def test_bank_covers_every_topic_with_enough_templates():
    assert len(BANK.templates) >= 80
    for topic in TAXONOMY.topic_ids:
        assert BANK.by_topic(topic), f"no template for {topic}"
    assert {t.tone for t in BANK.templates} == {"standard", "apologetic", "formal", "chat"}


@pytest.mark.parametrize("template", BANK.templates, ids=lambda t: t.id)
def test_every_template_passes_the_tone_check_with_all_slots(template):
    report = bank_check(template, RULES, _all_slots(template))
    assert report.passed, [(f.kind, f.message, f.text) for f in report.findings]
    assert report.score == 1.0


@pytest.mark.parametrize("template", BANK.templates, ids=lambda t: t.id)
def test_no_placeholder_leaks_when_optional_slots_are_missing(template):
    values = {**CONTEXT, **{name: SAMPLE.get(name, "示例") for name in template.slots.required}}
    draft = template.render(values)
    assert "{" not in draft and "[[" not in draft and "]]" not in draft
    assert draft.startswith("张先生") or draft.startswith("尊敬的张先生")
    assert bank_check(template, RULES, values).passed


def _template(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": "logistics.late_delivery.standard",
        "topic": "logistics",
        "situation": "late_delivery",
        "tone": "standard",
        "channels": ["chat"],
        "description": "包裹延误时使用",
        "examples": ["快递还没到"],
        "slots": {"required": ["order_id"], "optional": ["date"]},
        "text": "{salutation}您好，订单{order_id}延误了[[，预计{date}送达]]。",
    }
    data.update(changes)
    return data


def test_render_drops_segments_whose_slots_are_missing():
    template = ReplyTemplate.model_validate(_template())
    assert (
        template.render({"salutation": "李女士", "order_id": "A1"}) == "李女士您好，订单A1延误了。"
    )
    assert template.render({"salutation": "李女士", "order_id": "A1", "date": "明天"}) == (
        "李女士您好，订单A1延误了，预计明天送达。"
    )


def test_render_keeps_a_brace_that_is_not_a_slot():
    text = "{salutation}您好，{订单{order_id}延误了[[，预计{date}送达]]}。"
    template = ReplyTemplate.model_validate(_template(text=text))
    values = {"salutation": "李女士", "order_id": "A1"}
    assert template.render(values) == "李女士您好，{订单A1延误了}。"
    assert (
        template.render({**values, "date": "明天"}) == "李女士您好，{订单A1延误了，预计明天送达}。"
    )


def test_render_refuses_to_leak_a_missing_required_slot():
    template = ReplyTemplate.model_validate(_template())
    with pytest.raises(InputError, match="order_id"):
        template.render({"salutation": "李女士"})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"text": "您好，订单{order_id}延误了。"}, "salutation"),
        ({"text": "{salutation}您好，{invoice_id}有误。"}, "invoice_id"),
        (
            {"text": "{salutation}您好，订单{order_id}预计{date}送达。"},
            "optional slots used outside",
        ),
        ({"text": "{salutation}您好，[[订单{order_id}]]延误。"}, "required slots used only inside"),
        ({"text": "{salutation}您好，[[订单{order_id}延误。"}, "unbalanced"),
        ({"id": "logistics.late.standard"}, "id must be"),
        ({"tone": "angry"}, "tone"),
    ],
)
def test_invalid_templates_are_rejected_with_file_and_key(tmp_path, changes, expected):
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump({"templates": [_template(**changes)]}, allow_unicode=True))
    with pytest.raises(ConfigError) as error:
        load_template_bank(TAXONOMY, tmp_path)
    assert str(path) in str(error.value)
    assert "templates.0" in str(error.value)
    assert expected in str(error.value)


def test_unknown_topic_and_duplicate_ids_are_rejected(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(
        yaml.safe_dump({"templates": [_template()]}, allow_unicode=True)
    )
    (tmp_path / "b.yaml").write_text(
        yaml.safe_dump({"templates": [_template()]}, allow_unicode=True)
    )
    with pytest.raises(ConfigError, match="already defined"):
        load_template_bank(TAXONOMY, tmp_path)
    (tmp_path / "b.yaml").write_text(
        yaml.safe_dump(
            {
                "templates": [
                    _template(id="weather.rain.standard", topic="weather", situation="rain")
                ]
            },
            allow_unicode=True,
        )
    )
    with pytest.raises(ConfigError, match="topic"):
        load_template_bank(TAXONOMY, tmp_path)


GOOD_DRAFTS = [
    "王女士您好，感谢您的反馈。包裹延误给您添麻烦了，非常抱歉。我们已联系快递加急派送，"
    "预计明天下午前送达，送达前会再通知您。",
    "李先生您好，谢谢您及时告诉我们。重复扣款给您带来了困扰，我们深感抱歉，"
    "多扣的金额将在1-3个工作日内原路退回，到账后我们会短信告知您。",
]
BAD_DRAFTS = [
    ("您好，这是您自己没有仔细看说明导致的，感谢反馈，抱歉，我们明天会跟进。", "blame"),
    ("您好，感谢反馈，抱歉，这个不可能退款，我们明天会跟进。", "refusal"),
    ("您好，感谢反馈，抱歉，呵呵，我们明天会跟进。", "sarcasm"),
    ("您好，感谢反馈，抱歉，我们保证一定今天解决，明天会跟进。", "over_promise"),
    ("您好，感谢您的反馈，我们会尽快处理并跟进。", "apology"),
    ("您好，感谢您的反馈，给您添麻烦了，抱歉。", "follow_up"),
    ("您好，抱歉给您添麻烦了，我们会在24小时内处理并告知您。", "thanks"),
    ("感谢反馈，抱歉给您添麻烦，我们会在24小时内处理并告知您。", "greeting"),
    # The informal 你 blames and refuses as much as 您.
    ("您好，感谢反馈，抱歉，这是你自己操作不当造成的，明天会跟进。", "blame"),
    ("您好，感谢反馈，抱歉，都是你的问题，跟我们无关，明天会跟进。", "blame"),
    ("您好，感谢反馈，抱歉，这个我们不负责，你找厂家去，明天会跟进。", "refusal"),
    ("您好，感谢反馈，抱歉，你开心就好，明天会跟进。", "sarcasm"),
]


@pytest.mark.parametrize("draft", GOOD_DRAFTS)
def test_good_drafts_pass(draft):
    report = check_reply(draft, RULES)
    assert report.passed, report.findings


@pytest.mark.parametrize(("draft", "kind"), BAD_DRAFTS)
def test_bad_drafts_are_flagged_with_a_suggestion(draft, kind):
    report = check_reply(draft, RULES)
    found = [f for f in report.findings if f.kind == kind]
    assert found and found[0].suggestion
    assert report.score < 1.0
    for finding in found:
        if finding.start is not None:
            assert draft[finding.start : finding.end] == finding.text


@pytest.mark.parametrize(
    "draft",
    [
        "您好，您找到订单了吗？我们去查一下。",
        "如您找不到入口，我们去帮您操作。",
        "您找的师傅明天过去。",
        "以上都是您可以享受的权益。",
        "非使用不当造成的质量问题我们免费维修。",
        "您也可以找银行核实这笔扣款。",
    ],
)
def test_polite_phrases_that_share_words_with_blame_or_refusal_are_not_flagged(draft):
    kinds = {f.kind for f in check_reply(draft, RULES).findings}
    assert not kinds & {"blame", "refusal", "sarcasm"}, kinds


@pytest.mark.parametrize("draft", ["", "   ", "<p></p>", "\u200b"])
def test_a_draft_with_no_text_is_an_input_error(draft):
    with pytest.raises(EmptyTextError):
        check_reply(draft, RULES)


def test_collections_replies_need_partnership_and_flexible_payment():
    draft = "王经理您好，感谢来信。对账差异我们会在3个工作日内核实并回复您。"
    kinds = {f.kind for f in check_reply(draft, RULES, complaint=False, collections=True).findings}
    assert kinds == {"partnership", "flexible_payment"}


def test_long_chat_replies_are_flagged():
    draft = GOOD_DRAFTS[0] * 3
    assert "too_long" in {f.kind for f in check_reply(draft, RULES, chat=True).findings}
    assert "too_long" not in {f.kind for f in check_reply(draft, RULES).findings}


def test_situation_keywords_must_name_situations_of_the_bank(tmp_path):
    path = tmp_path / "keywords.yaml"
    path.write_text(
        yaml.safe_dump({"situations": {"logistics": {"teleported": ["传送"]}}}, allow_unicode=True)
    )
    with pytest.raises(ConfigError, match=r"situations\.logistics\.teleported"):
        load_situation_keywords(BANK, path)


def test_keyword_finder_finds_every_word_that_occurs_overlaps_included():
    finder = KeywordFinder(["退款", "退款慢", "款慢", "慢", "a-1", "", "退款"])
    assert finder.find("退款慢死了a-1") == {"退款", "退款慢", "款慢", "慢", "a-1", ""}
    assert finder.find("退") == {""}
    assert KeywordFinder([]).find("退款") == frozenset()


def test_situation_keywords_are_found_as_substring_search_finds_them():
    keywords = load_situation_keywords(BANK)
    lowered = keywords.lowered
    words = [w for topic in lowered.values() for situation in topic.values() for w in situation]
    texts = [
        json.loads(line)["text"].lower()
        for line in seed_corpus_path("dev").read_text(encoding="utf-8").splitlines()
    ]
    texts += ["".join(words[i : i + 4]) for i in range(0, len(words), 3)]  # adjacent keywords
    for text in texts:
        assert keywords.found(text) == {w for w in words if w in text}, text
    topics = list(keywords.situations)
    hits = keywords.hits(texts[0], topics)
    for (topic, situation), found in hits.items():
        assert found == [w for w in keywords.lowered[topic][situation] if w in texts[0]]


def test_keywords_steer_the_situation(small_pipeline):
    suggester = ReplySuggester(
        BANK,
        RULES,
        DraftContext(company="安心家电", hotline="400-800-1234"),
        load_situation_keywords(BANK),
    )
    result = small_pipeline.triage_one("包裹丢了，物流显示签收但我根本没收到")
    result = result.model_copy(update={"topic": "logistics", "secondary_topics": []})
    top = suggester.suggest(result)[0]
    assert top.template_id.startswith("logistics.lost_parcel."), top
    assert "words" in top.reason


def test_extract_slots_reads_ids_amounts_dates_and_the_customer_name():
    slots = extract_slots("我是李女士,订单号:DD20241101,11月3日付了1,280元,合同编号HT-2024-018")
    assert slots == {
        "order_id": "DD20241101",
        "contract_id": "HT-2024-018",
        "amount": "1,280元",
        "date": "11月3日",
        "salutation": "李女士",
    }
