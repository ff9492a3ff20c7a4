"""Shipped data files load, and a broken copy is rejected with a message a person can act on."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from triage.cues import CueLexicon, load_cue_lexicon
from triage.errors import ConfigError
from triage.followups import load_followup_lexicon
from triage.models.e5_import import parity_sentences
from triage.polarity import load_polarity_lexicon
from triage.replies import (
    load_product_lexicon,
    load_situation_keywords,
    load_template_bank,
    load_tone_rules,
)
from triage.resources import packaged_data_path
from triage.routing import load_routing
from triage.taxonomy import Taxonomy, load_taxonomy

DATA_DIR = packaged_data_path("taxonomy.yaml").parent

LOADERS: dict[str, Callable[[Path], object]] = {
    "taxonomy.yaml": load_taxonomy,
    "cues.yaml": lambda path: load_cue_lexicon(load_taxonomy(), path),
    "tone_rules.yaml": load_tone_rules,
    "encoder_parity.yaml": parity_sentences,
    "products.yaml": load_product_lexicon,
    "situation_keywords.yaml": lambda path: load_situation_keywords(
        load_template_bank(load_taxonomy()), path
    ),
    "routing.yaml": lambda path: load_routing(
        load_taxonomy(), load_cue_lexicon(load_taxonomy()).kinds, path
    ),
    "followups.yaml": load_followup_lexicon,
    "polarity_lexicon.yaml": load_polarity_lexicon,
}


def _shipped(name: str) -> dict[str, Any]:
    data = yaml.safe_load(packaged_data_path(name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _config_error(load: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as caught:
        load()
    return str(caught.value)


# --- the shipped files -----------------------------------------------------------------------


def test_every_shipped_yaml_file_has_a_loader():
    shipped = sorted(p.name for p in DATA_DIR.glob("*.yaml"))
    assert shipped, f"no YAML files found in {DATA_DIR}"
    unchecked = [name for name in shipped if name not in LOADERS]
    assert not unchecked, f"add a loader for {unchecked} to LOADERS in this test"


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_shipped_yaml_file_loads(name):
    assert (DATA_DIR / name).is_file()
    LOADERS[name](DATA_DIR / name)


def test_default_loaders_use_the_shipped_files():
    taxonomy = load_taxonomy()
    assert isinstance(taxonomy, Taxonomy)
    assert taxonomy.urgency_ids[0] == "P1"
    assert "refund" in taxonomy.topic_ids
    assert len(set(taxonomy.topic_ids)) == len(taxonomy.topic_ids)
    lexicon = load_cue_lexicon(taxonomy)
    assert isinstance(lexicon, CueLexicon)
    assert all(kind.floor in taxonomy.urgency_ids for kind in lexicon.kinds.values())
    assert all(kind.terms or kind.patterns for kind in lexicon.kinds.values())


def test_shipped_cue_terms_are_unique_non_empty_strings():
    lexicon = load_cue_lexicon(load_taxonomy())
    seen: dict[str, str] = {}
    for name, kind in lexicon.kinds.items():
        for term in kind.terms:
            assert term and term == term.strip(), f"{name}: bad term {term!r}"
            assert term not in seen, f"{term!r} is listed in both {seen.get(term)} and {name}"
            seen[term] = name


def test_shipped_user_dictionary_lines_are_word_frequency_tag():
    lines = packaged_data_path("userdict.txt").read_text(encoding="utf-8").splitlines()
    entries = [line.split() for line in lines if line.strip()]
    assert entries
    for parts in entries:
        assert len(parts) in (2, 3), parts
        assert parts[1].isdigit() and int(parts[1]) > 0, parts
    words = [parts[0] for parts in entries]
    assert len(words) == len(set(words))


def test_unchanged_copies_load_from_another_path(tmp_path):
    taxonomy = load_taxonomy(_write(tmp_path, "taxonomy.yaml", _shipped("taxonomy.yaml")))
    assert taxonomy == load_taxonomy()
    lexicon = load_cue_lexicon(taxonomy, _write(tmp_path, "cues.yaml", _shipped("cues.yaml")))
    assert lexicon.kinds == load_cue_lexicon(taxonomy).kinds


# --- broken cue lexicons ---------------------------------------------------------------------


def _broken_cues(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> tuple[Path, str]:
    data = copy.deepcopy(_shipped("cues.yaml"))
    mutate(data)
    path = _write(tmp_path, "cues.yaml", data)
    return path, _config_error(lambda: load_cue_lexicon(load_taxonomy(), path))


def test_cue_floor_outside_the_taxonomy_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["safety"]["floor"] = "P9"

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.safety.floor" in message
    assert str(load_taxonomy().urgency_ids) in message  # the expected values
    assert "'P9'" in message


def test_missing_cue_key_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        del data["kinds"]["legal"]["floor"]

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.legal.floor" in message
    assert "required" in message.lower()


def test_missing_negation_section_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        del data["negation"]

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert re.search(r"negation: .*required", message, re.IGNORECASE)


def test_bad_regular_expression_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["anger"].setdefault("patterns", []).append("(unclosed")

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.anger.patterns" in message
    assert "regular expression" in message
    assert "(unclosed" in message


def test_bad_exclusion_pattern_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["legal"]["exclude_patterns"] = ["报警[器"]

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.legal.exclude_patterns" in message
    assert "报警[器" in message


@pytest.mark.parametrize("gate", [-0.1, 1.5, "high"])
def test_gate_probability_outside_zero_to_one_is_rejected(tmp_path, gate):
    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["media"]["gate"] = {"min_model_probability": gate}

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.media.gate.min_model_probability" in message
    assert str(gate) in message


def test_gate_without_a_condition_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["media"]["gate"] = {"complaint": False}

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.media.gate" in message
    assert "min_model_probability (0 to 1) or complaint: true" in message


@pytest.mark.parametrize("bad_term", [123, None, ["nested"]])
def test_non_string_term_is_rejected(tmp_path, bad_term):
    index = len(_shipped("cues.yaml")["kinds"]["safety"]["terms"])

    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["safety"]["terms"].append(bad_term)

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert f"kinds.safety.terms.{index}" in message
    assert "valid string" in message


def test_unknown_cue_key_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["kinds"]["safety"]["flor"] = "P1"

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "kinds.safety.flor" in message
    assert "not permitted" in message


def test_negation_window_out_of_range_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["negation"]["window"] = 99

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "negation.window" in message
    assert "20" in message and "99" in message


def test_negation_scope_end_longer_than_one_character_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["negation"]["scope_ends"] = ["就", "的话"]

    path, message = _broken_cues(tmp_path, mutate)
    assert str(path) in message
    assert "negation.scope_ends" in message
    assert "one character" in message and "的话" in message


def test_cue_floors_are_checked_against_a_custom_taxonomy(tmp_path):
    data = copy.deepcopy(_shipped("taxonomy.yaml"))
    data["urgencies"] = [u for u in data["urgencies"] if u["id"] != "P2"]
    taxonomy = load_taxonomy(_write(tmp_path, "taxonomy.yaml", data))
    message = _config_error(lambda: load_cue_lexicon(taxonomy))
    assert str(packaged_data_path("cues.yaml")) in message
    assert re.search(r"kinds\.\w+\.floor", message)
    assert "'P2'" in message


# --- broken taxonomies -----------------------------------------------------------------------


def _broken_taxonomy(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> tuple[Path, str]:
    data = copy.deepcopy(_shipped("taxonomy.yaml"))
    mutate(data)
    path = _write(tmp_path, "taxonomy.yaml", data)
    return path, _config_error(lambda: load_taxonomy(path))


def test_duplicated_topic_id_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["topics"].append(dict(data["topics"][0], name_zh="重复"))

    duplicated = _shipped("taxonomy.yaml")["topics"][0]["id"]
    path, message = _broken_taxonomy(tmp_path, mutate)
    assert str(path) in message
    assert "topics" in message
    assert "unique" in message
    assert repr(duplicated) in message


def test_missing_taxonomy_key_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        del data["sentiments"]

    path, message = _broken_taxonomy(tmp_path, mutate)
    assert str(path) in message
    assert "sentiments" in message
    assert "required" in message.lower()


def test_badly_formed_urgency_id_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["urgencies"][0]["id"] = "Q1"

    path, message = _broken_taxonomy(tmp_path, mutate)
    assert str(path) in message
    assert "urgencies.0.id" in message
    assert "^P[0-9]$" in message
    assert "'Q1'" in message


def test_non_string_topic_name_is_rejected(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["topics"][1]["name_zh"] = 5

    path, message = _broken_taxonomy(tmp_path, mutate)
    assert str(path) in message
    assert "topics.1.name_zh" in message
    assert "valid string" in message


def test_every_problem_gets_its_own_line(tmp_path):
    def mutate(data: dict[str, Any]) -> None:
        data["topics"][0]["id"] = "Bad-Id"
        del data["channels"]

    path, message = _broken_taxonomy(tmp_path, mutate)
    lines = message.splitlines()
    assert any("topics.0.id" in line for line in lines)
    assert any("channels" in line for line in lines)
    assert all(line.startswith(f"{path}: ") for line in lines)


# --- unreadable files ------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "taxonomy.yaml"
    path.write_text("version: 1\ntopics: [\n", encoding="utf-8")
    message = _config_error(lambda: load_taxonomy(path))
    assert str(path) in message
    assert "YAML" in message


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "cues.yaml"
    message = _config_error(lambda: load_cue_lexicon(load_taxonomy(), path))
    assert str(path) in message
