"""Word lists a linear model counts with (polarity lexicon, urgency cues) travel with the model:
saved beside its weights, used on load, required when the config says so, and absent from
models saved before the option existed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from triage.cues import load_cue_lexicon_file
from triage.errors import ModelError
from triage.models.linear import CUES_FILE, LEXICON_FILE, HeadData, LinearConfig, LinearEngine
from triage.polarity import load_polarity_lexicon


def _no_negative_words(data: dict[str, Any]) -> None:
    data["negative"] = ["某某某"]


def _no_safety_terms(data: dict[str, Any]) -> None:
    data["kinds"]["safety"]["terms"] = ["某某某"]


@dataclass(frozen=True)
class SavedList:
    option: str  # the LinearConfig field that turns the features on
    config: LinearConfig  # a small config with that option on
    file: str
    load: Callable[..., Any]  # the list's loader: no argument = the shipped file
    head: str
    labels: list[str]
    texts: list[str]
    targets: list[str]
    gut: Callable[[dict[str, Any]], None]  # empties the part that ``probe`` hits
    probe: str


CASES = {
    "polarity": SavedList(
        option="polarity_lexicon",
        config=LinearConfig(char_features_log2=12, word_features_log2=12, polarity_lexicon=True),
        file=LEXICON_FILE,
        load=load_polarity_lexicon,
        head="polarity",
        labels=["negative", "positive"],
        texts=["很满意", "非常方便", "很失望", "太吵了", "质量不错", "真糟糕"],
        targets=["positive", "positive", "negative", "negative", "positive", "negative"],
        gut=_no_negative_words,
        probe="新的一句很失望",
    ),
    "cues": SavedList(
        option="cue_features",
        config=LinearConfig(char_features_log2=12, word_features_log2=12, cue_features=True),
        file=CUES_FILE,
        load=load_cue_lexicon_file,
        head="urgency",
        labels=["P1", "P2", "P3", "P4"],
        texts=[
            "热水器漏电了",
            "孩子误食了",
            "我要起诉你们",
            "请问怎么开发票",
            "几点发货",
            "谢谢你们",
        ],
        targets=["P1", "P1", "P1", "P4", "P4", "P4"],
        gut=_no_safety_terms,
        probe="新的一句:冒烟了",
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> SavedList:
    return CASES[request.param]


@pytest.fixture(scope="module")
def saved(case: SavedList, tmp_path_factory: pytest.TempPathFactory) -> Path:
    engine = LinearEngine.fit(
        case.config, {case.head: HeadData(case.texts, case.targets)}, {case.head: case.labels}
    )
    return engine.save(tmp_path_factory.mktemp(case.option) / "model")


def test_the_saved_list_is_the_shipped_one_and_the_loaded_model_counts_with_it(
    case: SavedList, saved: Path, tmp_path: Path
) -> None:
    assert case.load(saved / case.file) == case.load()
    changed = tmp_path / "changed"
    shutil.copytree(saved, changed)
    data = json.loads((changed / case.file).read_text(encoding="utf-8"))
    case.gut(data)
    (changed / case.file).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert not np.array_equal(
        LinearEngine.load(changed).predict_proba([case.probe])[case.head],
        LinearEngine.load(saved).predict_proba([case.probe])[case.head],
    )


def test_a_model_without_its_list_is_rejected_naming_the_file(
    case: SavedList, saved: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / case.file).unlink()
    with pytest.raises(ModelError, match=case.file):
        LinearEngine.load(broken)


def test_a_model_saved_before_the_option_existed_loads_without_it(
    case: SavedList, saved: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(saved, old)
    config = json.loads((old / "config.json").read_text(encoding="utf-8"))
    del config["features"][case.option]
    (old / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (old / case.file).unlink()
    assert getattr(LinearEngine.load(old).config, case.option) is False
