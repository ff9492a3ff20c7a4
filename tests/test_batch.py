"""Batch triage, as a library and as `triage batch`: formats, error rows, chunking, workers,
up-front checks, Ctrl-C and resuming."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from tqdm import tqdm

import triage.batch as batch_module
from tests.conftest import read_jsonl
from triage.batch import (
    CSV_COLUMNS,
    BatchInterrupted,
    BatchOptions,
    _in_pool,
    count_records,
    detect_format,
    run_batch,
)
from triage.cli import main
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


def read_csv(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as stream:
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
    config["thresholds"]["review_topic_confidence"] = 1.01  # and needs review
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    pipeline = TriagePipeline.from_directory(model_dir)
    text = "手机号13812345678，快递丢了还不赔，我要去消协投诉，还要起诉你们！"
    source = tmp_path / "in.jsonl"
    record = {"id": "a", "text": text, "channel": "chat"}
    source.write_text(json.dumps(record, ensure_ascii=False) + "\n", "utf-8")
    out = tmp_path / "out.csv"
    run_batch(source, out, Settings(model_dir=model_dir), QUIET)

    (row,) = read_csv(out)
    expected = pipeline.triage_one(text, id="a", channel="chat")
    assert row["channel"] == "chat"
    assert row["needs_review"] == "true" and expected.review_reasons
    assert row["review_reasons"] == "; ".join(expected.review_reasons)
    assert row["explanation"].split("\n") == expected.explanation
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
    as_utf8 = BatchOptions(output_mode="overwrite", progress=False)
    run_batch(source, out, settings, as_utf8)  # every row is an error row
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


@pytest.fixture
def ctrl_c_in_second_chunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real SIGINT to this process while the second chunk is written, as Ctrl-C sends.

    Python raises KeyboardInterrupt on SIGINT only where the shell let it: a test session
    started in the background (``&``, as CI may) ignores the signal, so a terminal's default
    is set for the test and the session's own put back after it."""
    updates: list[int] = []

    class Interrupting(tqdm):  # type: ignore[misc]
        def update(self, n=1):
            updates.append(1)
            if len(updates) == 2:
                # Without the handler, this would stop the test session itself.
                assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
                os.kill(os.getpid(), signal.SIGINT)
            return super().update(n)

    monkeypatch.setattr(batch_module, "tqdm", Interrupting)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(("workers", "name"), [(1, "out.jsonl"), (2, "out.csv")])
@pytest.mark.usefixtures("ctrl_c_in_second_chunk")
def test_ctrl_c_keeps_whole_rows_and_resume_completes_the_output(
    tmp_path, settings, seed_rows, workers, name
):
    source = write_csv(tmp_path / "in.csv", seed_rows)
    reference, out = tmp_path / f"reference{Path(name).suffix}", tmp_path / name
    options = BatchOptions(chunk_size=7, workers=workers, progress=False)
    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(source, out, settings, options)
    assert stopped.value.summary.rows_written == 14  # two chunks of 7, nothing torn
    assert len(read_jsonl(out) if name.endswith(".jsonl") else read_csv(out)) == 14

    resumed = run_batch(source, out, settings, replace(options, output_mode="resume"))
    assert (resumed.skipped, resumed.rows_read, resumed.rows_written) == (14, 26, 40)
    assert "skipped     14 (already in the output)" in resumed.format()
    run_batch(source, reference, settings, options)
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv"])
def test_resume_writes_a_row_torn_by_a_kill_again(tmp_path, settings, seed_rows, name):
    """A kill tore row 11: in CSV just after a line end in its explanation, which is quoted."""
    source = write_csv(tmp_path / "in.csv", seed_rows)
    first_ten = write_csv(tmp_path / "ten.csv", seed_rows[:10])
    out = tmp_path / name
    # A byte order mark too, which appending must not repeat.
    options = BatchOptions(csv_bom=name.endswith(".csv"), progress=False)
    run_batch(first_ten, out, settings, options)
    ten = out.read_bytes()
    run_batch(source, out, settings, replace(options, output_mode="overwrite"))
    whole = out.read_bytes()
    torn = whole.index(b"\n", len(ten)) + 1 if name.endswith(".csv") else len(ten) + 60
    assert name.endswith(".jsonl") or whole[len(ten) : torn].count(b'"') % 2 == 1
    out.write_bytes(whole[:torn])

    summary = run_batch(source, out, settings, replace(options, output_mode="resume"))
    assert (summary.skipped, summary.rows_written) == (10, 40)
    assert out.read_bytes() == whole


def test_resume_refuses_an_output_it_would_not_continue(tmp_path, settings, seed_rows):
    # No ids: every input's ids are row numbers, so only the recorded SHA-256 tells them apart.
    rows = [{"text": row["text"], "region": "华东"} for row in seed_rows]
    source = write_csv(tmp_path / "in.csv", rows[:10])
    out = tmp_path / "out.csv"
    run_batch(source, out, settings, QUIET)
    recorded = json.loads((tmp_path / "out.csv.batch.json").read_text(encoding="utf-8"))
    assert recorded["input_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    written = out.read_bytes() + b"1,torn"
    out.write_bytes(written)
    resume = BatchOptions(output_mode="resume", progress=False)
    other = write_csv(tmp_path / "other.csv", rows[10:30])
    refusals = [
        (other, resume, "input_sha256"),
        (source, replace(resume, replies=True), "replies"),
        (source, replace(resume, keep_columns=("region",)), "keep_columns"),
    ]
    for refused, options, differs in refusals:
        message = rf"not written from this input with these options \({differs} differ from"
        with pytest.raises(InputError, match=message):
            run_batch(refused, out, settings, options)
    (tmp_path / "out.csv.batch.json").unlink()
    with pytest.raises(InputError, match=r"out\.csv\.batch\.json is missing"):
        run_batch(source, out, settings, resume)
    assert out.read_bytes() == written  # the torn row is cut only when the run goes on

    doubled = tmp_path / "doubled.jsonl"  # rows added by hand: more than the input has
    run_batch(source, doubled, settings, QUIET)
    doubled.write_bytes(doubled.read_bytes() * 2)
    with pytest.raises(InputError, match="has 20 rows but the input only 10"):
        run_batch(source, doubled, settings, resume)

    os.mkfifo(tmp_path / "pipe.csv")  # refused before it is opened, which would wait
    unreadable: list[tuple[str | Path, str | Path]] = [
        ("-", out),
        (tmp_path / "pipe.csv", out),
        (source, "-"),
    ]
    formats = replace(resume, input_format="csv", output_format="csv")
    for input_path, output_path in unreadable:
        with pytest.raises(InputError, match="resuming needs files, not - or a pipe"):
            run_batch(input_path, output_path, settings, formats)


def test_an_output_with_rows_is_replaced_only_when_asked(tmp_path, settings, seed_rows):
    source = write_csv(tmp_path / "in.csv", seed_rows[:2])
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n", encoding="utf-8")
    message = rf"{out}: the file exists and is not empty; give --overwrite .* or --resume"
    with pytest.raises(InputError, match=message):
        run_batch(source, out, settings, QUIET)
    assert out.read_text(encoding="utf-8") == "earlier results\n"
    run_batch(source, out, settings, BatchOptions(output_mode="overwrite", progress=False))
    assert len(read_jsonl(out)) == 2
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert run_batch(source, empty, settings, QUIET).rows_read == 2


def test_kept_columns_travel_with_every_row(tmp_path, settings, seed_rows):
    rows = [
        {**seed_rows[0], "region": "华东", "agent_note": "回访", "topic": "mine"},
        {"id": "empty", "text": "", "channel": "", "region": "华北", "agent_note": "", "topic": ""},
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    keep = BatchOptions(keep_columns=("region", "agent_note", "topic"), progress=False)
    run_batch(source, tmp_path / "out.jsonl", settings, keep)
    result, error = read_jsonl(tmp_path / "out.jsonl")
    assert result["input"] == {"region": "华东", "agent_note": "回访", "topic": "mine"}
    assert result["topic"] != "mine"  # a kept column never replaces a result field
    assert error["input"]["region"] == "华北" and error["error"]["code"] == "empty_text"

    run_batch(source, tmp_path / "out.csv", settings, replace(keep, keep_columns="all"))
    table = read_csv(tmp_path / "out.csv")
    assert list(table[0])[len(CSV_COLUMNS) :] == [
        "input.id",
        "input.channel",
        "input.region",
        "input.agent_note",
        "input.topic",
    ]  # all: every column but the text, which is written only masked
    assert [r["input.region"] for r in table] == ["华东", "华北"]

    with pytest.raises(InputError, match=r"no 'note' column; the columns found are"):
        run_batch(source, tmp_path / "x.jsonl", settings, replace(keep, keep_columns=("note",)))
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(InputError, match="'text' is the text, which is written only masked"):
        BatchOptions(keep_columns=("text",))


def test_kept_values_are_masked(tmp_path, settings):
    """A kept column may hold personal data as much as the text does; other values are copied
    as sent."""
    wide = "１３８１２３４５６７８"
    rows = [
        {"id": "a", "text": "快递没到", "phone": wide, "notes": "回电 138 1234 5678"},
        {"id": "b", "text": "", "phone": "", "notes": "地区:華東"},
    ]
    out = tmp_path / "out.jsonl"
    keep_all = BatchOptions(keep_columns="all", progress=False)
    run_batch(write_csv(tmp_path / "in.csv", rows), out, settings, keep_all)
    assert [r["input"] for r in read_jsonl(out)] == [
        {"id": "a", "phone": "<PHONE>", "notes": "回电 <PHONE>"},
        {"id": "b", "phone": "", "notes": "地区:華東"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "c", "text": "谢谢", "phone": 13812345678, "n": 3}\n', "utf-8")
    run_batch(source, tmp_path / "out.csv", settings, keep_all)
    (row,) = read_csv(tmp_path / "out.csv")
    assert (row["input.phone"], row["input.n"]) == ("<PHONE>", "3")


def test_kept_json_values_in_csv_output(tmp_path, settings):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "a", "text": "快递没到", "tags": ["急", 2], "n": 3, "who": "\\ud83d王"}\n'
        '{"id": "b", "text": "谢谢"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out.csv"
    run_batch(source, out, settings, BatchOptions(keep_columns="all", progress=False))
    first, second = read_csv(out)
    assert (first["input.tags"], first["input.n"]) == ('["急",2]', "3")
    assert first["input.who"] == "\ufffd王"  # an escaped lone surrogate, as in texts
    assert second["input.tags"] == second["input.n"] == ""  # absent from the row


def test_a_byte_order_mark_is_for_csv_only(tmp_path, settings, seed_rows):
    source = write_csv(tmp_path / "in.csv", seed_rows[:1])
    run_batch(source, tmp_path / "out.csv", settings, BatchOptions(csv_bom=True, progress=False))
    assert (tmp_path / "out.csv").read_bytes().startswith(b"\xef\xbb\xbfid,channel,")
    with pytest.raises(InputError, match="byte order mark is for CSV output only"):
        run_batch(source, tmp_path / "o.jsonl", settings, BatchOptions(csv_bom=True))


def test_an_unclosed_quote_at_the_end_is_an_error_row(tmp_path, settings):
    source = tmp_path / "x.csv"
    source.write_text('id,text\n1,"unclosed quote 快递\n2,退款\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = run_batch(source, out, settings, QUIET)
    broken, refund = read_jsonl(out)
    assert broken["id"] == "1" and broken["error"]["code"] == "malformed_csv"
    assert broken["error"]["message"].startswith("row 1 (line 2): malformed CSV")
    assert refund["masked_text"] == "退款"
    assert (summary.rows_read, summary.errors) == (2, {"malformed_csv": 1})
    assert count_records(source, "csv") == 2


def test_a_stray_quote_costs_one_row(tmp_path, settings, seed_rows):
    texts = [row["text"] for row in seed_rows if "\n" not in row["text"]][:30]
    rows = [{"id": f"r{i}", "text": text} for i, text in enumerate(texts, start=1)]
    rows[19]["text"] = "第一行,有逗号\n第二行"  # quoted over two lines: a good record
    source = write_csv(tmp_path / "in.csv", rows)
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[10] = 'r10,"客户说 136 1122 0098 然后\n'  # row 10 (line 11): a quote never closed
    lines[15] = "r15,三个值,多了一个\n"
    source.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = run_batch(source, out, settings, QUIET)

    records = read_jsonl(out)
    ids = [row["id"] for row in rows]
    ids[9], ids[14] = "10", "15"  # an error row's id is its number: its values are suspect
    assert [r["id"] for r in records] == ids
    errors = {r["id"]: r["error"]["message"] for r in records if "error" in r}
    assert errors == {
        "10": "row 10 (line 11): malformed CSV (',' expected after '\"'; a stray quote?); "
        "only this line is left out",
        "15": "row 15 (line 16): 3 values where the header has 2 (an unquoted comma?); "
        "only this line is left out",
    }
    assert records[19]["masked_text"] == "第一行,有逗号\n第二行"
    assert summary.errors == {"malformed_csv": 2}


def test_a_text_over_several_lines_with_broken_quoting_is_one_error_row_per_line(
    tmp_path, settings
):
    """Its closing quote is followed by text: read again, its second line would pass for a
    record whose id is a phone number."""
    source = tmp_path / "in.csv"
    source.write_text(
        'id,text\n1,"第一行\n电话13812345678,请回电\n最后一行"x\nr5,退款\n', encoding="utf-8"
    )
    out = tmp_path / "out.jsonl"
    summary = run_batch(source, out, settings, QUIET)

    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["1", "2", "3", "r5"]
    assert [r["error"]["message"] for r in records[:3]] == [
        "row 1 (line 2): malformed CSV (',' expected after '\"'; a stray quote?); it spans "
        "lines 2-4, each left out as an error row",
        "row 2 (line 3): part of the malformed record on line 2",
        "row 3 (line 4): part of the malformed record on line 2",
    ]
    assert records[3]["masked_text"] == "退款"
    assert "13812345678" not in out.read_text(encoding="utf-8")
    assert summary.errors == {"malformed_csv": 3}
    assert count_records(source, "csv") == 4


def test_error_rows_carry_no_personal_data(tmp_path, settings):
    """Nor in their ids, which a row that cannot be triaged gives no reason to trust; the ids
    of good rows are written as sent."""
    phone, wide = "136 1122 0098", "１３６１１２２００９８"
    source = tmp_path / "in.jsonl"
    rows = [
        {"id": "channel", "text": "快递没到", "channel": f"客户 {phone}"},
        {"id": f"客户电话 {phone} " + "很长" * 100, "text": "快递没到"},
        {"id": "text", "text": ["电话", phone]},
        {"id": "wide", "text": "快递没到", "channel": f"客户{wide}"},
        {"id": f"会员{wide}", "text": ""},
        {"id": f"会员{wide}", "text": "快递没到"},
    ]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    run_batch(source, tmp_path / "out.jsonl", settings, QUIET)
    records = read_jsonl(tmp_path / "out.jsonl")
    messages = [r["error"]["message"] for r in records[:5]]
    assert not [m for m in messages if "1122" in m or "１１２２" in m]
    assert "<PHONE>" in messages[0] and "<PHONE>" in messages[1] and "<PHONE>" in messages[3]
    assert [r["id"] for r in records] == [
        "channel",
        "客户电话 <PHONE> " + "很长" * 100,
        "text",
        "wide",
        "会员<PHONE>",
        f"会员{wide}",
    ]


def batch_args(source: Path, out: Path, model_dir: Path, *more: str) -> list[str]:
    return ["batch", str(source), str(out), "--no-progress", "--model-dir", str(model_dir), *more]


@pytest.mark.usefixtures("ctrl_c_in_second_chunk")
def test_cli_ctrl_c_says_how_far_it_got_and_how_to_go_on(tmp_path, small_model_dir, seed_rows):
    rows = [{**row, "id": f"{row['id']}-{k}"} for k in range(30) for row in seed_rows]
    source = write_csv(tmp_path / "in.csv", rows)  # 1200 rows: three chunks of 512
    out = tmp_path / "out.jsonl"
    out.write_text("an older run\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, batch_args(source, out, small_model_dir, "--overwrite"))
    assert result.exit_code == 130, result.output
    assert result.stderr.endswith(
        f"interrupted: the first 1024 input rows are in {out}; to continue, run the same command"
        " with --resume instead of --overwrite\n"
    )
    assert "rows read   1024" in result.stdout
    assert len(read_jsonl(out)) == 1024

    resumed = runner.invoke(main, batch_args(source, out, small_model_dir, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert "skipped     1024 (already in the output)" in resumed.stdout
    assert [r["id"] for r in read_jsonl(out)] == [row["id"] for row in rows]


def test_cli_a_second_ctrl_c_stops_at_once(tmp_path, small_model_dir, seed_rows, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TriagePipeline, "run_prepared", interrupted)
    source = write_csv(tmp_path / "in.csv", seed_rows)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, batch_args(source, out, small_model_dir))
    assert result.exit_code == 130
    assert result.stderr == "interrupted; to continue, run the same command with --resume\n"


def test_cli_output_options(tmp_path, small_model_dir, seed_rows):
    rows = [{**row, "region": "华东"} for row in seed_rows[:2]]
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.csv"
    runner = CliRunner()
    args = batch_args(source, out, small_model_dir, "--keep-columns", " region, channel ")
    assert runner.invoke(main, [*args, "--csv-bom"]).exit_code == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbfid,")
    table = read_csv(out, encoding="utf-8-sig")
    assert [(r["id"], r["input.region"], r["input.channel"]) for r in table] == [
        (row["id"], "华东", row["channel"]) for row in rows
    ]

    refused = runner.invoke(main, args)
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {out}: the file exists and is not empty; give --overwrite to replace it or "
        "--resume to add the rows it lacks\n"
    )
    both = runner.invoke(main, [*args, "--overwrite", "--resume"])
    assert both.exit_code == 2 and "--overwrite and --resume exclude each other" in both.stderr
