"""Urgency cue kinds as features of the linear engine, saved and loaded with the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage.cues import load_cue_lexicon_file
from triage.errors import ConfigError
from triage.models.linear import CUES_FILE, Featurizer, HeadData, LinearConfig, LinearEngine

SMALL = LinearConfig(char_features_log2=12, word_features_log2=12, cue_features=True)
WITHOUT_CUES = LinearConfig(char_features_log2=12, word_features_log2=12)


def _cue_columns(text: str) -> set[int]:
    """Word-block columns of ``text`` that exist only because of the cue features."""
    ones = np.ones(1, np.float32)
    with_cues = Featurizer(SMALL, ones, ones).counts([text]).columns
    without = Featurizer(WITHOUT_CUES, ones, ones).counts([text]).columns
    return set(with_cues) - set(without)


def test_each_cue_kind_found_adds_one_feature():
    assert len(_cue_columns("热水器漏电了,我要起诉你们")) == 2  # safety and legal
    assert len(_cue_columns("漏电了,还冒烟")) == 1  # two safety hits, one kind
    assert _cue_columns("漏电了") == _cue_columns("冒烟了")
    assert _cue_columns("请问几点发货") == set()
    assert _cue_columns("烟雾报警器怎么换电池") == set()  # an excluded hit is no feature


def test_the_option_is_validated_quoting_the_value():
    with pytest.raises(ConfigError, match=r"cue_features: expected true or false \(got 'yes'\)"):
        LinearConfig(cue_features="yes")  # type: ignore[arg-type]


TEXTS = ["热水器漏电了", "孩子误食了", "我要起诉你们", "请问怎么开发票", "几点发货", "谢谢你们"]
LABELS = ["P1", "P1", "P1", "P4", "P4", "P4"]
LEVELS = ["P1", "P2", "P3", "P4"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    engine = LinearEngine.fit(SMALL, {"urgency": HeadData(TEXTS, LABELS)}, {"urgency": LEVELS})
    return engine.save(tmp_path_factory.mktemp("cues") / "model")


def test_the_cue_lexicon_is_saved_and_the_loaded_model_predicts_the_same(saved):
    assert load_cue_lexicon_file(saved / CUES_FILE) == load_cue_lexicon_file()
    texts = ["厨房冒烟了", "发票开错了"]
    engine = LinearEngine.fit(SMALL, {"urgency": HeadData(TEXTS, LABELS)}, {"urgency": LEVELS})
    np.testing.assert_allclose(
        LinearEngine.load(saved).predict_proba(texts)["urgency"],
        engine.predict_proba(texts)["urgency"],
        rtol=1e-6,
    )
