"""The shipped seed corpus and the corpus format checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from triage.errors import ConfigError
from triage.taxonomy import Taxonomy, load_taxonomy
from triage.text import normalize
from triage.training.corpus import CorpusRecord, check_disjoint, load_corpus, seed_corpus_path


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture(scope="module")
def train(taxonomy: Taxonomy) -> list[CorpusRecord]:
    return load_corpus(seed_corpus_path("train"), taxonomy)


@pytest.fixture(scope="module")
def dev(taxonomy: Taxonomy) -> list[CorpusRecord]:
    return load_corpus(seed_corpus_path("dev"), taxonomy)


def _record(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": "t-1",
        "text": "快递三天还没到",
        "channel": "chat",
        "topic": "logistics",
        "secondary_topics": [],
        "sentiment": "negative",
        "urgency": "P3",
        "is_complaint": True,
    }
    record.update(overrides)
    return record


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the shipped seed corpus -----------------------------------------------------------------


def test_seed_corpus_files_are_packaged():
    for split in ("train", "dev"):
        path = seed_corpus_path(split)
        assert path.is_file(), path
        assert path.name == f"{split}.jsonl"


def test_seed_corpus_sizes(train, dev):
    assert len(train) >= 2000
    assert len(dev) >= 400


def test_seed_corpus_ids_are_unique_across_both_splits(train, dev):
    ids = [r.id for r in train] + [r.id for r in dev]
    assert len(ids) == len(set(ids))


def test_seed_splits_are_disjoint(train, dev):
    check_disjoint(train, dev)


def test_seed_splits_share_no_text_even_after_normalisation(train, dev):
    train_texts = {normalize(r.text) for r in train}
    shared = sorted(train_texts & {normalize(r.text) for r in dev})
    assert not shared, shared[:5]


def test_seed_train_has_no_duplicate_texts(train):
    counts = Counter(normalize(r.text) for r in train)
    duplicated = [text for text, n in counts.items() if n > 1]
    assert not duplicated, duplicated[:5]


def test_every_topic_has_at_least_80_training_rows(train, taxonomy):
    counts = Counter(r.topic for r in train)
    thin = {topic: counts[topic] for topic in taxonomy.topic_ids if counts[topic] < 80}
    assert not thin, thin


def test_every_label_of_every_head_occurs_in_both_splits(train, dev, taxonomy):
    for split in (train, dev):
        assert {r.topic for r in split} == set(taxonomy.topic_ids)
        assert {r.sentiment for r in split} == set(taxonomy.sentiments)
        assert {r.urgency for r in split} == set(taxonomy.urgency_ids)
        assert {r.is_complaint for r in split} == {True, False}


def test_p1_is_at_least_ten_percent_of_train(train):
    p1 = sum(r.urgency == "P1" for r in train)
    assert p1 / len(train) >= 0.10


def test_seed_texts_are_non_blank(train, dev):
    assert all(normalize(r.text) for r in train + dev)


# --- load_corpus error reporting -------------------------------------------------------------


def test_load_corpus_reads_a_valid_file(tmp_path, taxonomy):
    path = _write_lines(
        tmp_path / "ok.jsonl",
        [
            json.dumps(_record(), ensure_ascii=False),
            "",
            json.dumps(_record(id="t-2", secondary_topics=["service"]), ensure_ascii=False),
        ],
    )
    records = load_corpus(path, taxonomy)
    assert [r.id for r in records] == ["t-1", "t-2"]
    assert records[1].secondary_topics == ["service"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (_record(topic="weather"), ["topic", "'weather'", "expected one of"]),
        (_record(urgency="P9"), ["urgency", "'P9'", "expected one of"]),
        (_record(channel="fax"), ["channel", "'fax'"]),
        (_record(sentiment="angry"), ["sentiment", "'angry'"]),
        (_record(secondary_topics=["logistics"]), ["secondary_topics.0", "repeats"]),
        (_record(secondary_topics=["nope"]), ["secondary_topics.0", "'nope'"]),
        (_record(is_complaint="yes"), ["is_complaint", "valid boolean"]),
        ({k: v for k, v in _record().items() if k != "urgency"}, ["urgency", "required"]),
        (_record(text=""), ["text", "at least 1 character"]),
        (_record(extra_field=1), ["extra_field", "not permitted"]),
    ],
)
def test_load_corpus_reports_file_line_and_key(tmp_path, taxonomy, bad_line, expected):
    path = _write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps(_record(id="ok-1"), ensure_ascii=False),
            json.dumps(dict(bad_line, id="bad-2"), ensure_ascii=False),
        ],
    )
    with pytest.raises(ConfigError) as caught:
        load_corpus(path, taxonomy)
    message = str(caught.value)
    assert f"{path}:2: " in message
    assert f"{path}:1:" not in message
    for part in expected:
        assert part in message, (part, message)


def test_load_corpus_reports_invalid_json_with_its_line(tmp_path, taxonomy):
    path = _write_lines(
        tmp_path / "bad.jsonl",
        [json.dumps(_record(), ensure_ascii=False), "", '{"id": "x", "text": '],
    )
    with pytest.raises(ConfigError, match=r"bad\.jsonl:3: not valid JSON"):
        load_corpus(path, taxonomy)


def test_load_corpus_reports_duplicate_ids(tmp_path, taxonomy):
    path = _write_lines(
        tmp_path / "dup.jsonl",
        [
            json.dumps(_record(id="same"), ensure_ascii=False),
            json.dumps(_record(id="same", text="另一条"), ensure_ascii=False),
        ],
    )
    with pytest.raises(ConfigError) as caught:
        load_corpus(path, taxonomy)
    assert f"{path}:2: id:" in str(caught.value)
    assert "'same'" in str(caught.value)


def test_load_corpus_reports_every_bad_line(tmp_path, taxonomy):
    lines = [json.dumps(_record(id=f"r{i}", topic="weather")) for i in range(3)]
    path = _write_lines(tmp_path / "many.jsonl", lines)
    with pytest.raises(ConfigError) as caught:
        load_corpus(path, taxonomy)
    for number in (1, 2, 3):
        assert f"{path}:{number}: topic" in str(caught.value)


def test_load_corpus_rejects_empty_and_missing_files(tmp_path, taxonomy):
    empty = _write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ConfigError, match="empty"):
        load_corpus(empty, taxonomy)
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ConfigError, match=r"missing\.jsonl"):
        load_corpus(missing, taxonomy)


# --- check_disjoint --------------------------------------------------------------------------


def test_check_disjoint_rejects_shared_ids_and_texts():
    a = CorpusRecord.model_validate(_record(id="a", text="快递三天还没到"))
    b_same_id = CorpusRecord.model_validate(_record(id="a", text="别的内容"))
    b_same_text = CorpusRecord.model_validate(_record(id="b", text="  快递三天还没到 "))
    b_other = CorpusRecord.model_validate(_record(id="c", text="别的内容"))
    check_disjoint([a], [b_other])
    with pytest.raises(ConfigError, match="'a'"):
        check_disjoint([a], [b_same_id])
    with pytest.raises(ConfigError, match="快递三天还没到"):
        check_disjoint([a], [b_same_text])


@pytest.mark.parametrize(
    "copy",
    [
        "快遞三天還沒到，電話13812345678",
        "快递三天还没到, 电话 139 0000 1111 ",
        "<p>快递三天还没到，电话13812345678</p>",
    ],
)
def test_check_disjoint_sees_copies_that_differ_only_as_the_model_cannot_see(copy):
    train = [CorpusRecord.model_validate(_record(id="a", text="快递三天还没到，电话13812345678"))]
    dev = [CorpusRecord.model_validate(_record(id="b", text=copy))]
    with pytest.raises(ConfigError, match="1 texts"):
        check_disjoint(train, dev)
