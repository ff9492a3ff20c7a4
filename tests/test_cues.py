"""Urgency cues from the shipped lexicon: kinds, spans, negation and false-positive guards."""

from __future__ import annotations

import json
import re

import pytest

from triage.cues import (
    Cue,
    CueLexicon,
    NegationSpec,
    _kind_pattern,
    load_cue_lexicon,
    with_first_char_lookahead,
)
from triage.taxonomy import load_taxonomy
from triage.text import normalize
from triage.training.corpus import seed_corpus_path


@pytest.fixture(scope="module")
def lexicon() -> CueLexicon:
    return load_cue_lexicon(load_taxonomy())


def _kinds(hits: list[Cue]) -> list[str]:
    return [hit.kind for hit in hits]


# (kind, typical phrase, the text of the hit, the floor the taxonomy documents for the kind)
TYPICAL = [
    ("safety", "热水器漏电了,差点触电", "漏电", "P1"),
    ("legal", "再不处理我就起诉你们", "起诉", "P1"),
    ("regulator", "我要打12315投诉你们", "12315", "P1"),
    ("media", "我要找记者来报道", "记者", "P1"),
    ("fraud", "有人冒用我的身份开户", "冒用", "P1"),
    ("large_loss", "这次一共损失了20000元", "损失了20000元", "P1"),
    ("repeat_contact", "这是我第三次打电话了", "第三次", "P2"),
    ("deadline", "今天之内必须给我答复", "今天之内", "P2"),
    ("churn", "再这样我就销户", "销户", "P2"),
    ("money_stuck", "押金不退是什么意思", "押金不退", "P2"),
    ("vip", "我是你们的VIP客户", "VIP", "P2"),
    ("anger", "你们真是太过分了", "太过分", "P2"),
]


def test_typical_phrases_cover_every_shipped_kind(lexicon):
    assert {kind for kind, *_ in TYPICAL} == set(lexicon.kinds)


@pytest.mark.parametrize(("kind", "text", "hit_text", "floor"), TYPICAL)
def test_each_kind_fires_with_kind_text_span_and_floor(lexicon, kind, text, hit_text, floor):
    hits = lexicon.find(text)
    assert hits, f"no cue found in {text!r}"
    first = hits[0]
    assert (first.kind, first.text, first.floor) == (kind, hit_text, floor)
    assert first.start == text.index(hit_text)
    assert first.end == first.start + len(hit_text)
    for hit in hits:
        assert text[hit.start : hit.end] == hit.text
        assert hit.floor == lexicon.kinds[hit.kind].floor


@pytest.mark.parametrize(
    ("text", "kind", "amount_or_text"),
    [
        ("我的5万元就这样被转走", "large_loss", "5万"),
        ("卡里被扣了3.5万", "large_loss", "3.5万"),
        ("一共损失了12,000元", "large_loss", "12,000"),
        ("3天之内给答复", "deadline", "3天之内"),
        ("这是我第5次联系你们", "repeat_contact", "第5次"),
        ("垃圾产品", "anger", "垃圾"),
        ("这都什么啊!!!", "anger", "!!!"),
        ("你们在干什么?!?", "anger", "?!?"),
    ],
)
def test_regular_expression_cues(lexicon, text, kind, amount_or_text):
    hits = [h for h in lexicon.find(text) if h.kind == kind]
    assert len(hits) == 1, hits
    (hit,) = hits
    assert amount_or_text in hit.text
    assert text[hit.start : hit.end] == hit.text


@pytest.mark.parametrize("text", ["损失了800元", "被扣了50块", "转走了9999元"])
def test_small_amounts_are_not_a_large_loss(lexicon, text):
    assert "large_loss" not in _kinds(lexicon.find(text))


def test_all_hits_are_reported_in_order_of_appearance(lexicon):
    text = "第三次联系了,再不处理我就起诉,还要找媒体曝光"
    hits = lexicon.find(text)
    firsts = {kind: min(h.start for h in hits if h.kind == kind) for kind in _kinds(hits)}
    assert firsts == {
        "repeat_contact": text.index("第三次"),
        "legal": text.index("起诉"),
        "media": text.index("媒体"),
    }
    assert "曝光" in [h.text for h in hits]
    assert [h.start for h in hits] == sorted(h.start for h in hits)
    assert all(text[h.start : h.end] == h.text for h in hits)


@pytest.mark.parametrize("text", ["我是vip", "我是VIP", "我是Vip会员"])
def test_latin_terms_match_case_insensitively(lexicon, text):
    (hit,) = lexicon.find(text)
    assert hit.kind == "vip"
    assert hit.text.lower() == "vip"


def test_cues_match_full_width_and_traditional_input_after_normalize(lexicon):
    text = normalize("我要打１２３１５，還要找記者")
    assert [(h.kind, h.text) for h in lexicon.find(text)] == [
        ("regulator", "12315"),
        ("media", "记者"),
    ]


# --- negation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "不想去12315",
        "我不想去12315",
        "没有受伤",
        "孩子没受伤",
        "我不是VIP",
        "这个不危险",
        "暂不起诉",
    ],
)
def test_negation_suppresses_a_cue_in_the_same_clause(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize(
    ("text", "kind", "hit_text"),
    [
        ("不想去,12315", "regulator", "12315"),
        ("不想去,12315投诉", "regulator", "12315"),
        ("没有受伤,但是起火了", "safety", "起火"),
        ("没有受伤。但是起火了", "safety", "起火"),
        ("没有受伤!起火了", "safety", "起火"),
        ("没有受伤\n起火了", "safety", "起火"),
        ("我不想去12315,但会找律师", "legal", "律师"),
        ("再不解决就起诉你们", "legal", "起诉"),
        ("再不退就去12315", "regulator", "12315"),
        ("尽快退款,不然我去12315", "regulator", "12315"),
    ],
)
def test_negation_stops_at_a_clause_end_or_a_conditional(lexicon, text, kind, hit_text):
    hits = lexicon.find(text)
    assert [(h.kind, h.text) for h in hits] == [(kind, hit_text)]
    assert text[hits[0].start : hits[0].end] == hit_text


def test_negation_only_reaches_back_its_window(lexicon):
    window = lexicon.negation.window
    filler = "真" * window
    assert lexicon.find(f"不{filler}起火了")[0].text == "起火"
    assert lexicon.find(f"不{filler[1:]}起火了") == []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("孩子不小心烫伤了", "safety"),
        ("用了不久就起火了", "safety"),
        ("插头不停冒烟", "safety"),
        ("无缘无故被盗刷", "fraud"),
        ("我不得不报警", "legal"),
        ("要不要报警", "legal"),
        ("要不我们去报警", "legal"),
    ],
)
def test_non_negating_words_with_negation_characters_do_not_suppress(lexicon, text, kind):
    assert kind in _kinds(lexicon.find(text))


def test_an_ignore_word_straddling_the_window_start_negates_nothing():
    spec = NegationSpec(window=4, words=["不"], ignore=["要不"])
    text = "要不我们去报警"
    assert not spec.negates(text, text.index("报警"))
    assert NegationSpec(window=4, words=["不"]).negates(text, text.index("报警"))


# --- false-positive guards -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "滚筒洗衣机不转了",
        "垃圾袋破了",
        "垃圾桶的盖子坏了",
        "垃圾分类怎么做",
        "小区垃圾站太远",
        "怎么操作退款",
        "操作步骤是什么",
    ],
)
def test_false_positive_guards_do_not_fire_anger(lexicon, text):
    assert "anger" not in _kinds(lexicon.find(text))


@pytest.mark.parametrize(
    "text",
    ["请问什么时候发货", "谢谢你们的耐心解答", "我想咨询一下发票怎么开", "订单号20231106000045"],
)
def test_ordinary_messages_have_no_cues(lexicon, text):
    assert lexicon.find(text) == []


@pytest.mark.parametrize(
    "text", ["订单号20231105123456还没发货", "运单号YT8812315000021", "金额123456元的发票"]
)
def test_hotline_numbers_do_not_match_inside_longer_numbers(lexicon, text):
    assert "regulator" not in _kinds(lexicon.find(text))


def test_hotline_numbers_still_match_next_to_words(lexicon):
    assert _kinds(lexicon.find("打12345热线")) == ["regulator"]
    assert _kinds(lexicon.find("我要打12315")) == ["regulator"]


# --- exclusion contexts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("家里的烟雾报警器怎么换电池", "legal"),
        ("市第二人民医院设备科:请寄发票", "safety"),
        ("包装上的logo印歪了", "safety"),
        ("空调6月10日报修,至今没人来", "media"),
    ],
)
def test_hit_inside_an_exclusion_context_is_dropped(lexicon, text, kind):
    assert kind not in _kinds(lexicon.find(text))


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("再打电话骚扰我就报警", "legal"),
        ("孩子吃完吐了,已经送医院", "safety"),
        ("护栏歪了,随时会倒", "safety"),
        ("我要找日报的记者曝光你们", "media"),
    ],
)
def test_same_words_outside_the_exclusion_context_still_hit(lexicon, text, kind):
    assert kind in _kinds(lexicon.find(text))


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("退款|(?<![0-9])12315(?![0-9])|[!！]{3,}", "a112315 12315 退款!!!"),
        ("(?:第)?[0-9一二三]+次|VIP", "第3次 3次 vip 第三次"),
        (r"(?:\d+|[一二两])(?:个)?(?:小时|天)内", "3天内 两个小时内 个小时内"),
        ("(?=退)退款|投诉", "退货 退款 投诉"),
    ],
)
def test_first_character_lookahead_keeps_every_match(pattern, text):
    fast = re.compile(with_first_char_lookahead(pattern, re.IGNORECASE), re.IGNORECASE)
    assert fast.pattern.startswith("(?=[")
    plain = re.compile(pattern, re.IGNORECASE)
    assert [m.span() for m in fast.finditer(text)] == [m.span() for m in plain.finditer(text)]


@pytest.mark.parametrize("pattern", ["(?:退款)?", ".退款", "[^a]退款", r"(a)?\1b"])
def test_patterns_whose_start_cannot_be_told_are_left_unchanged(pattern):
    assert with_first_char_lookahead(pattern, re.IGNORECASE) == pattern


def test_shipped_lexicon_matches_as_without_the_lookaheads(lexicon):
    fast = lexicon._matcher
    assert fast.pattern.startswith("(?=[")
    # Every kind's group has a lookahead of its own as well as the whole alternation.
    assert fast.pattern.count("(?=[") == fast.pattern.count("(?P<k") + 1
    plain = re.compile(
        "|".join(
            f"(?P<k{index}>{_kind_pattern(kind.terms, kind.patterns)})"
            for index, kind in enumerate(lexicon.kinds.values())
            if kind.terms or kind.patterns
        ),
        re.IGNORECASE,
    )
    for split in ("train", "dev"):
        for line in seed_corpus_path(split).read_text(encoding="utf-8").splitlines():
            text = normalize(json.loads(line)["text"])
            assert [(m.lastgroup, m.span()) for m in fast.finditer(text)] == [
                (m.lastgroup, m.span()) for m in plain.finditer(text)
            ]
