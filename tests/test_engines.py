"""Loading a saved model by the engine its config names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from triage.engines import engine_kind, load_engine
from triage.errors import ModelError
from triage.models.linear import CONFIG_FILE, LinearEngine


def test_linear_model_loads_by_its_config(small_model_dir: Path) -> None:
    engine = load_engine(small_model_dir)
    assert isinstance(engine, LinearEngine)
    assert engine_kind(small_model_dir) == "linear"


def test_unknown_engine_is_named_with_the_choices(small_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(small_model_dir, copy)
    config = json.loads((copy / CONFIG_FILE).read_text(encoding="utf-8"))
    config["engine"] = "quantum"
    (copy / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match=r"engine: expected one of .*'linear'.*got 'quantum'"):
        load_engine(copy)


def test_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a triage model directory"):
        load_engine(tmp_path)
