"""Batch triage as a library: formats, error rows, chunking, workers and up-front checks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import read_jsonl
from triage.batch import (
    CSV_COLUMNS,
    BatchOptions,
    _in_pool,
    count_records,
    detect_format,
    run_batch,
)
from triage.config import Settings
from triage.errors import InputError, ModelError
from triage.pipeline import TriagePipeline
from triage.schemas import TriageResult
from triage.training.corpus import seed_corpus_path

QUIET = BatchOptions(progress=False)


@pytest.fixture(scope="module")
def seed_rows() -> list[dict[str, str]]:
    """Forty dev messages with their id, text and channel."""
    lines = seed_corpus_path("dev").read_text(encoding="utf-8").splitlines()[:40]
    return [
        {key: record[key] for key in ("id", "text", "channel")} for record in map(json.loads, lines)
    ]


@pytest.fixture
def settings(small_model_dir: Path) -> Settings:
    return Settings(model_dir=small_model_dir, train_if_missing=False)


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def test_csv_to_jsonl_keeps_every_row_in_order(tmp_path, settings, seed_rows, small_pipeline):
    rows = [*seed_rows[:5], {"id": "blank", "text": "   ", "channel": "chat"}, *seed_rows[5:10]]
    out = tmp_path / "out.jsonl"
    summary = run_batch(write_csv(tmp_path / "in.csv", rows), out, settings, QUIET)

    records = read_jsonl(out)
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    assert set(records[5]) == {"id", "error"}
    error = records[5]["error"]
    assert isinstance(error, dict) and error["code"] == "empty_text"
    assert error["message"].startswith("text is empty")
    expected = small_pipeline.triage_one(rows[0]["text"], id=rows[0]["id"], channel="review")
    assert TriageResult.model_validate(records[0]) == expected
    assert (summary.rows_read, summary.triaged) == (11, 10)
    assert summary.errors == {"empty_text": 1}
    assert summary.rows_per_second > 0


def test_jsonl_to_csv_reports_each_kind_of_bad_row(tmp_path, small_model_dir, seed_rows):
    settings = Settings(model_dir=small_model_dir, train_if_missing=False, max_text_length=200)
    lines = [
        json.dumps(seed_rows[0], ensure_ascii=False),
        json.dumps({"id": "empty", "text": ""}),
        '{"id": "broken", "text": "没有结尾',
        "",
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "no-text", "body": "正文在别的字段"}),
        json.dumps({"id": "long", "text": "太长了" * 100}, ensure_ascii=False),
        json.dumps({"id": "number", "text": 42}),
        json.dumps({"text": "没有编号的消息，快递三天没到"}, ensure_ascii=False),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    summary = run_batch(source, out, settings, QUIET)

    rows = read_csv(out)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["id"], r["error_code"]) for r in rows] == [
        (seed_rows[0]["id"], ""),
        ("empty", "empty_text"),
        ("3", "invalid_json"),
        ("5", "invalid_json"),
        ("no-text", "missing_text"),
        ("long", "text_too_long"),
        ("number", "invalid_input"),
        ("9", ""),  # no id: the line number stands in
    ]
    assert "limit is 200" in rows[5]["error_message"]
    assert rows[7]["masked_text"] == "没有编号的消息,快递三天没到"
    assert summary.errors == {
        "empty_text": 1,
        "text_too_long": 1,
        "invalid_input": 1,
        "invalid_json": 2,
        "missing_text": 1,
    }
    assert (summary.rows_read, summary.triaged) == (8, 2)


def test_csv_columns_are_flat(tmp_path, small_model_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(small_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["thresholds"]["secondary_topic"] = 0.0  # every result gets three secondary topics
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    pipeline = TriagePipeline.from_directory(model_dir)
    text = "手机号13812345678，快递丢了还不赔，我要去消协投诉，还要起诉你们！"
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\n", "utf-8")
    out = tmp_path / "out.csv"
    run_batch(source, out, Settings(model_dir=model_dir), QUIET)

    (row,) = read_csv(out)
    expected = pipeline.triage_one(text, id="a")
    assert len(expected.secondary_topics) == 3
    assert row["secondary_topics"].split("|") == expected.secondary_topics
    assert row["is_complaint"] == str(expected.is_complaint).lower()
    assert float(row["complaint_score"]) == expected.complaint_score
    assert expected.cues
    assert json.loads(row["cues"]) == [cue.model_dump() for cue in expected.cues]
    assert ", " not in row["cues"] and '": ' not in row["cues"]
    assert "13812345678" not in row["masked_text"]
    assert row["masked_text"] == expected.masked_text
    assert row["model_version"] == expected.model.version
    assert row["error_code"] == row["error_message"] == ""


def test_configurable_columns_and_row_numbers_for_missing_ids(tmp_path, settings):
    rows = [{"body": "发票开错了", "ref": "r1"}, {"body": "谢谢你们", "ref": ""}]
    out = tmp_path / "out.jsonl"
    options = BatchOptions(text_column="body", id_column="ref", progress=False)
    run_batch(write_csv(tmp_path / "in.csv", rows), out, settings, options)
    assert [r["id"] for r in read_jsonl(out)] == ["r1", "2"]


def test_a_line_in_another_encoding_becomes_an_error_row(tmp_path, settings):
    source = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "text": "快递三天没到"},
        {"id": "gbk", "text": "东西坏了"},
        {"id": "z", "text": "谢谢"},
    ]
    encoded = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in lines]
    encoded[1] = json.dumps(lines[1], ensure_ascii=False).encode("gbk")
    source.write_bytes(b"\n".join(encoded) + b"\n")
    out = tmp_path / "out.jsonl"
    summary = run_batch(source, out, settings, QUIET)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["a", "2", "z"]
    assert records[1]["error"]["code"] == "invalid_encoding"
    assert records[1]["error"]["message"].startswith("line 2: not utf-8 text")
    assert "--encoding gb18030" in records[1]["error"]["message"]
    assert (summary.rows_read, summary.triaged) == (3, 2)


def test_escaped_lone_surrogates_never_reach_the_output(tmp_path, settings):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "a\\ud83d", "text": "快递没到"}\n{"id": "b", "text": "\\ud83d 谢谢"}\n', "utf-8"
    )
    out = tmp_path / "out.jsonl"
    run_batch(source, out, settings, QUIET)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["1", "b"]  # an id that cannot be written: the line
    assert records[1]["masked_text"] == "\ufffd 谢谢"


def test_a_badly_encoded_column_that_is_not_read_loses_nothing(tmp_path, settings):
    source = tmp_path / "in.csv"
    source.write_bytes("id,text,备注\n1,快递没到,".encode() + "客户很急".encode("gbk") + b"\n")
    out = tmp_path / "out.jsonl"
    run_batch(source, out, settings, QUIET)
    assert "error" not in read_jsonl(out)[0]


def test_csv_in_the_encoding_given_is_read(tmp_path, settings):
    source = tmp_path / "in.csv"
    source.write_bytes("id,text\n1,空调不制冷\n2,退款什么时候到账\n".encode("gb18030"))
    out = tmp_path / "out.jsonl"
    run_batch(source, out, settings, BatchOptions(encoding="gb18030", progress=False))
    assert [r["masked_text"] for r in read_jsonl(out)] == ["空调不制冷", "退款什么时候到账"]
    run_batch(source, out, settings, QUIET)  # read as UTF-8: every row is an error row
    assert {r["error"]["code"] for r in read_jsonl(out)} == {"invalid_encoding"}
    for codec in ("klingon", "hex"):
        with pytest.raises(InputError, match="encoding: expected a text encoding"):
            BatchOptions(encoding=codec)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("id,text,text\n1,a,b\n", "the 'text' column appears 2 times"),
        ("ref,text\n1,a\n", r"no 'id' column; the columns found are \['ref', 'text'\]"),
    ],
)
def test_unusable_csv_headers_fail_before_writing(tmp_path, settings, content, message):
    source = tmp_path / "in.csv"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match=message):
        run_batch(source, out, settings, BatchOptions(id_column="id", progress=False))
    assert not out.exists()


def test_a_named_id_field_must_exist_in_jsonl(tmp_path, settings):
    source = tmp_path / "in.jsonl"
    source.write_text('{"ref": "1", "text": "快递没到"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"in.jsonl:1: no 'id' field"):
        run_batch(source, tmp_path / "out.jsonl", settings, BatchOptions(id_column="id"))


def test_unknown_channel_becomes_an_error_row(tmp_path, settings):
    rows = [
        {"id": "1", "text": "快递没到", "channel": "fax"},
        {"id": "2", "text": "谢谢", "channel": ""},
    ]
    out = tmp_path / "out.jsonl"
    run_batch(write_csv(tmp_path / "in.csv", rows), out, settings, QUIET)
    records = read_jsonl(out)
    assert records[0]["error"]["code"] == "unknown_label"
    assert "channel: 'fax' is not one of" in records[0]["error"]["message"]
    assert "error" not in records[1]


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_missing_text_column_fails_before_writing(tmp_path, settings, name):
    source = tmp_path / name
    if name.endswith(".csv"):
        write_csv(source, [{"id": "1", "message": "快递没到"}])
    else:
        source.write_text('\n{"id": "1", "message": "快递没到"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match=r"no 'text' (column|field).*\['id', 'message'\]"):
        run_batch(source, out, settings, QUIET)
    assert not out.exists()


def test_workers_give_the_same_output_as_one_process(tmp_path, settings, seed_rows):
    rows = [*seed_rows, {"id": "bad", "text": "", "channel": "chat"}, *seed_rows[:3]]
    source = write_csv(tmp_path / "in.csv", rows)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run_batch(source, one, settings, BatchOptions(chunk_size=7, progress=False))
    options = BatchOptions(chunk_size=7, workers=2, progress=False)
    summary = run_batch(source, two, settings, options)
    assert one.read_bytes() == two.read_bytes()
    assert (summary.rows_read, summary.errors) == (44, {"empty_text": 1})


def test_rows_reach_the_model_in_chunks(tmp_path, settings, seed_rows, monkeypatch):
    sizes: list[int] = []
    run_prepared = TriagePipeline.run_prepared

    def spy(self, prepared, replies=False):
        sizes.append(len(prepared))
        return run_prepared(self, prepared, replies=replies)

    monkeypatch.setattr(TriagePipeline, "run_prepared", spy)
    run_batch(
        write_csv(tmp_path / "in.csv", seed_rows),
        tmp_path / "out.jsonl",
        settings,
        BatchOptions(chunk_size=16, progress=False),
    )
    assert sizes == [16, 16, 8]


def test_a_worker_that_cannot_load_the_model_fails_the_run(tmp_path):
    broken = Settings(model_dir=tmp_path / "missing", train_if_missing=False)
    with pytest.raises(ModelError, match="no model found"):
        list(_in_pool(iter([[]]), broken, workers=2, replies=False))


def test_formats_come_from_extensions_or_explicit_options(tmp_path, settings, seed_rows):
    assert detect_format("x.NDJSON", None, "input") == "jsonl"
    with pytest.raises(InputError, match="cannot tell the input format"):
        detect_format("x.txt", None, "input")
    with pytest.raises(InputError, match="cannot tell the output format"):
        detect_format("-", None, "output")
    source = tmp_path / "export.txt"
    source.write_text(json.dumps(seed_rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "result.dat"
    options = BatchOptions(input_format="jsonl", output_format="csv", progress=False)
    assert run_batch(source, out, settings, options).triaged == 1
    assert read_csv(out)[0]["id"] == seed_rows[0]["id"]


def test_output_may_not_overwrite_input(tmp_path, settings, seed_rows):
    source = write_csv(tmp_path / "in.csv", seed_rows[:2])
    with pytest.raises(InputError, match="overwrite the input"):
        run_batch(source, tmp_path / "." / "in.csv", settings, QUIET)


def test_count_records_for_the_progress_total(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"two\nlines"\n\n2,b', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}', encoding="utf-8")
    assert count_records(tmp_path / "a.csv", "csv") == 2
    assert count_records(tmp_path / "b.jsonl", "jsonl") == 2
