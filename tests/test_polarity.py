"""The polarity lexicon: hits, negation, ignored words, validation, and the engine feature."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import read_jsonl
from triage.errors import ConfigError
from triage.models.linear import Featurizer, LinearConfig, LinearEngine
from triage.polarity import PolarityLexicon, load_polarity_lexicon
from triage.training.corpus import prepare_text

SMALL = LinearConfig(char_features_log2=12, word_features_log2=12)


def _polarities(lexicon: PolarityLexicon, text: str) -> list[tuple[str, bool]]:
    return [(hit.text, hit.positive) for hit in lexicon.find(text)]


@pytest.fixture(scope="module")
def lexicon() -> PolarityLexicon:
    return load_polarity_lexicon()


def test_positive_and_negative_words_are_found_in_order(lexicon):
    assert _polarities(lexicon, "房间干净，但是太吵了") == [("干净", True), ("吵", False)]


def test_negation_in_the_same_clause_flips_the_polarity(lexicon):
    hits = lexicon.find("交通不太方便")
    assert [(h.text, h.positive, h.negated) for h in hits] == [("方便", False, True)]
    assert _polarities(lexicon, "价格不贵") == [("贵", True)]


def test_negation_does_not_reach_across_a_clause_end(lexicon):
    assert _polarities(lexicon, "没有，满意") == [("满意", True)]


def test_longer_words_in_the_ignore_list_hide_their_terms(lexicon):
    assert lexicon.find("这次出差住了三天，差不多") == []
    assert _polarities(lexicon, "出差三天，服务很差") == [("差", False)]


def test_an_ignore_word_straddling_the_window_start_negates_nothing(lexicon):
    # The window before 热情 is 别都很: the 别 belongs to 特别, which the lexicon ignores.
    assert _polarities(lexicon, "员工特别都很热情") == [("热情", True)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 贵 before an institution is the polite "your" of letters, not "expensive".
        ("恳请贵司尽快处理,感谢贵行", [("感谢", True)]),
        ("太贵所以没买", [("太贵", False)]),
        # 麻烦 opening a clause asks politely; trouble still counts.
        ("发票开错了,麻烦重开一张", []),
        ("麻烦您帮我查一下", []),
        ("手续太麻烦了", [("麻烦", False)]),
        ("给您添麻烦了", [("麻烦", False)]),
        ("退个货,麻烦死了", [("麻烦", False)]),
        # Set phrases that judge nothing, beside the same words judging.
        ("不好意思,打扰一下", []),
        ("质量不好", [("不好", False)]),
        ("客服只会说请耐心等待", []),
        ("师傅很耐心", [("耐心", True)]),
        ("垃圾桶满了", []),
        ("简直是垃圾", [("垃圾", False)]),
        ("你们的负责人是谁", []),
        ("这合理吗?", []),
        ("价格合理", [("合理", True)]),
    ],
)
def test_words_count_only_where_they_judge(lexicon, text, expected):
    assert _polarities(lexicon, text) == expected


def test_longest_term_wins(lexicon):
    assert _polarities(lexicon, "性价比高") == [("性价比高", True)]


def _write(tmp_path: Path, data: Mapping[str, object]) -> Path:
    path = tmp_path / "polarity_lexicon.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_a_word_in_both_lists_is_rejected_naming_the_file_and_word(tmp_path):
    data = {"negation": {"window": 2, "words": ["不"]}, "positive": ["好"], "negative": ["好"]}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_polarity_lexicon(path)
    assert str(path) in str(caught.value) and "'好'" in str(caught.value)


def test_an_empty_word_list_is_rejected_naming_the_key(tmp_path):
    data = {"negation": {"window": 2, "words": ["不"]}, "positive": [], "negative": ["差"]}
    with pytest.raises(ConfigError, match="positive"):
        load_polarity_lexicon(_write(tmp_path, data))


def test_an_ignore_pattern_that_does_not_compile_is_rejected_naming_the_key(tmp_path):
    data = {
        "negation": {"window": 2, "words": ["不"]},
        "positive": ["好"],
        "negative": ["差"],
        "ignore_patterns": ["(差"],
    }
    with pytest.raises(ConfigError, match="ignore_patterns"):
        load_polarity_lexicon(_write(tmp_path, data))


# --- the engine feature ----------------------------------------------------------------------


def _lexicon_columns(config: LinearConfig, text: str) -> set[int]:
    """Word-block columns of ``text`` that exist only because of the lexicon."""
    with_lexicon = Featurizer(config, np.ones(1, np.float32), np.ones(1, np.float32))
    without = Featurizer(
        LinearConfig(**{**config.__dict__, "polarity_lexicon": False}),
        np.ones(1, np.float32),
        np.ones(1, np.float32),
    )
    return set(with_lexicon.counts([text]).columns) - set(without.counts([text]).columns)


def test_lexicon_hits_add_one_feature_per_polarity():
    assert len(_lexicon_columns(SMALL, "很满意，很方便")) == 1  # both positive
    assert len(_lexicon_columns(SMALL, "很满意，但是很吵")) == 2
    assert _lexicon_columns(SMALL, "请问几点发货") == set()
    # A negated positive word counts as negative: the same column as a negative word.
    assert _lexicon_columns(SMALL, "不方便啊") == _lexicon_columns(SMALL, "很失望啊")


def test_the_option_is_validated_quoting_the_value():
    with pytest.raises(ConfigError, match=r"polarity_lexicon: expected true or false \(got 1\)"):
        LinearConfig(polarity_lexicon=1)  # type: ignore[arg-type]


# --- training: review sentences train the polarity and genre heads ---------------------------

REVIEWS = [
    ("这本书的故事很精彩，推荐阅读", "positive"),
    ("这款笔记本做工精致，屏幕清晰", "positive"),
    ("作者写得太啰嗦，看完很失望", "negative"),
    ("键盘手感差，散热也不好", "negative"),
] * 5


def test_training_with_reviews_adds_polarity_and_genre_heads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_train_file: Path
) -> None:
    import triage.training.train as train

    monkeypatch.setattr(train, "load_review_sentences", lambda: REVIEWS)
    out = tmp_path / "model"
    train.train_linear(
        train.TrainArguments(
            out_dir=out, train_path=small_train_file, dev_path=None, situation_labels_path=None
        )
    )
    engine = LinearEngine.load(out)
    assert engine.heads["polarity"].labels == ["negative", "positive"]
    assert engine.heads["genre"].labels == ["message", "review"]
    genre = engine.predict_proba([REVIEWS[0][0], "我的快递到哪了，三天还没到"])["genre"]
    assert genre[0, 1] > 0.5 > genre[1, 1]
    # The corpus's own review-channel messages are reviews to the genre head, the rest messages.
    rows = read_jsonl(small_train_file)
    for channel, review_expected in (("review", True), ("chat", False)):
        texts = [prepare_text(str(r["text"])) for r in rows if r["channel"] == channel]
        p_review = engine.predict_proba(texts)["genre"][:, 1]
        assert np.mean((p_review > 0.5) == review_expected) > 0.9, channel
