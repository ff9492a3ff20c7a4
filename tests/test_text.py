"""Text preparation: the normal form every model and lexicon relies on, and segmentation."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from triage.replies import load_template_bank
from triage.resources import packaged_data_path
from triage.taxonomy import load_taxonomy
from triage.text import Segmenter, _nfkc_by_character, nfkc, normalize, segment, strip_html
from triage.training.corpus import seed_corpus_path


def _userdict_words() -> list[str]:
    lines = packaged_data_path("userdict.txt").read_text(encoding="utf-8").splitlines()
    return [line.split()[0] for line in lines if line.strip()]


# --- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３", "ABC123"),
        ("退款！！？", "退款!!?"),
        ("你好，请问（急）", "你好,请问(急)"),
        ("ｗｗｗ．ｅｘａｍｐｌｅ．ｃｏｍ", "www.example.com"),
        ("订单\u3000号", "订单 号"),  # ideographic (full-width) space
    ],
)
def test_normalize_folds_full_width_to_half_width(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "你好，请问（急）！ＡＢＣ　１２３…",
        "cafe\u0301 e\u0301",  # a letter with a combining mark: composed
        "e\u00adu\u0301",  # a soft hyphen between them
        "\u1100\u1161\u11a8 \uac00\u11a8 한국어",  # Hangul jamo compose into syllables
        "か\u3099 ｶﾞ ㈱ ﬁ ① ½ ㍻ ℃ Ω Å",  # voiced marks, compatibility forms, singletons
        "\U0001d15e\U00020000 \U0002f800",  # beyond the first plane
        "",
    ],
)
def test_nfkc_equals_unicodedata_on_edge_cases(text):
    assert nfkc(text) == unicodedata.normalize("NFKC", text)


def test_nfkc_equals_unicodedata_on_seed_messages_templates_and_random_strings():
    texts = [
        json.loads(line)["text"]
        for split in ("train", "dev")
        for line in seed_corpus_path(split).read_text(encoding="utf-8").splitlines()
    ]
    texts += [template.text for template in load_template_bank(load_taxonomy()).templates]
    other, _, forms = _nfkc_by_character()
    # Most messages take the character-by-character path, which is what is checked here.
    assert sum(other.search(text) is None for text in texts) > 0.8 * len(texts)
    everything = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    qualified = [char for char in everything if other.search(char) is None]
    rng = random.Random(7)
    for _ in range(50_000):
        pool = rng.choice([qualified, list(forms), everything])
        texts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
    assert [nfkc(text) for text in texts] == [unicodedata.normalize("NFKC", t) for t in texts]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("這個產品質量", "这个产品质量"),
        ("什麼時候發貨？", "什么时候发货?"),
        ("我要退貨退款", "我要退货退款"),
        ("客服態度很差", "客服态度很差"),
    ],
)
def test_normalize_converts_traditional_to_simplified(raw, expected):
    assert normalize(raw) == expected


def test_normalize_leaves_simplified_text_unchanged():
    text = "快递三天还没到,我要投诉"
    assert normalize(text) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<p>你好</p><p>我要退款</p>", "你好\n我要退款"),
        ("第一行<br>第二行", "第一行\n第二行"),
        ("第一行<br/>第二行<BR >第三行", "第一行\n第二行\n第三行"),
        ("<div>a</div><div>b</div>", "a\nb"),
        ('<span style="color:red">很<b>急</b></span>', "很急"),
        ("<!-- 注释 -->正文", "正文"),
        ("A&amp;B", "A&B"),
        ("价格&lt;100元", "价格<100元"),
        ("&#x4F60;&#22909;", "你好"),
        ("a&nbsp;b", "a b"),
    ],
)
def test_normalize_strips_html_tags_and_entities(raw, expected):
    assert normalize(raw) == expected


def test_strip_html_keeps_plain_text_and_lone_angle_brackets():
    assert strip_html("a < b 且 c > d") == "a < b 且 c > d"
    assert strip_html("没有标签的文本") == "没有标签的文本"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  前后有空格  ", "前后有空格"),
        ("多个   空格\t和制表符", "多个 空格 和制表符"),
        ("第一行\n\n\n  第二行  ", "第一行\n第二行"),
        ("windows\r\n换行", "windows\n换行"),
        ("不换行\u00a0\u00a0空格", "不换行 空格"),
        ("\n\n  \n", ""),
    ],
)
def test_normalize_collapses_whitespace(raw, expected):
    assert normalize(raw) == expected


def test_normalize_replaces_a_lone_surrogate():
    assert normalize("好\ud83d评") == "好\ufffd评"


@pytest.mark.parametrize(
    "invisible",
    ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\x00", "\x07", "\x7f"],
)
def test_normalize_removes_zero_width_and_control_characters(invisible):
    assert normalize(f"退{invisible}款{invisible}") == "退款"


IDEMPOTENCE_INPUTS = [
    "這個產品質量太差了！！！",
    "<p>您好，</p><p>我的訂單&amp;發票</p>",
    "ＶＩＰ客戶\u3000電話：１３８ １２３４ ５６７８",
    "  第一行\r\n\r\n第二行\t\t尾巴  ",
    "退\u200b款\ufeff申请&nbsp;已提交<br>谢谢",
    "价格&lt;100元",
    "emoji 😡😡 和 English words",
]


@pytest.mark.parametrize("raw", IDEMPOTENCE_INPUTS)
def test_normalize_is_idempotent(raw):
    once = normalize(raw)
    assert normalize(once) == once


@pytest.mark.parametrize(
    "raw",
    ["a＜br＞b", "&lt;b&gt;加粗&lt;/b&gt;", "<\u200bb>粗体", "&amp;lt;p&amp;gt;"],
)
def test_normalize_is_idempotent_on_encoded_markup(raw):
    once = normalize(raw)
    assert normalize(once) == once


# --- segmentation ----------------------------------------------------------------------------


def test_jieba_segmentation_keeps_domain_words_whole():
    assert "退款" in segment("我申请的退款一直没到账")
    assert "验证码" in segment("手机收不到验证码")


@pytest.mark.parametrize("word", _userdict_words())
def test_jieba_segmentation_honours_every_user_dictionary_entry(word):
    # Plain jieba splits most of these (仅退款 → 仅/退款, 运费险 → 运费/险, ...).
    assert word in segment(f"关于{word}问题")


def test_jieba_segmentation_drops_whitespace_and_loses_no_characters():
    text = "快递员 把包裹\n放在门口 了"
    words = segment(text)
    assert all(w.strip() == w and w for w in words)
    assert "".join(words) == "".join(text.split())


def test_char_segmenter_yields_non_space_characters():
    assert segment("申请 退款\n谢谢", Segmenter.CHAR) == ["申", "请", "退", "款", "谢", "谢"]
    assert segment("", Segmenter.CHAR) == []


def test_segmenter_values_are_the_config_strings():
    assert Segmenter("jieba") is Segmenter.JIEBA
    assert Segmenter("char") is Segmenter.CHAR


def test_masked_text_stays_masked_when_normalised_again():
    from triage.pii import mask_pii

    masked = mask_pii(normalize("电话13812345678,邮箱a@b.cn,<b>加急</b>")).text
    assert masked == "电话<PHONE>,邮箱<EMAIL>,加急"
    assert normalize(masked) == masked
