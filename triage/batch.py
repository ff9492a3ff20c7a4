"""Batch triage of CSV or JSONL files, streamed in chunks so that millions of rows fit in memory.

Every input row gives exactly one output row, in input order: either the triage result or the
row's id with an ``error`` ``{code, message}``, so that a bad row never stops or shortens a run.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice
from multiprocessing import get_context
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError
from tqdm import tqdm

from triage.config import Settings
from triage.errors import InputError
from triage.pipeline import Prepared, TriagePipeline
from triage.resources import describe_validation_error
from triage.schemas import Message
from triage.service import load_pipeline, pin_model

Format = Literal["csv", "jsonl"]
STDIO = "-"
FORMATS_BY_SUFFIX: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CSV_COLUMNS = (
    "id",
    "topic",
    "secondary_topics",
    "sentiment",
    "sentiment_score",
    "urgency",
    "is_complaint",
    "complaint_score",
    "needs_review",
    "cues",
    "masked_text",
    "model_version",
    "replies",
    "error_code",
    "error_message",
)
# A CSV field longer than the csv module's default limit (128 KiB) would end the whole run;
# texts that long must become a "too long" error row instead.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
# Bytes that do not decode are read as lone surrogates ("surrogateescape"), so that one badly
# encoded row becomes an error row instead of ending the run. A JSON escape such as "\ud83d"
# gives one too: normalising replaces it in a text, and an id holding one is replaced by the
# row number, since no lone surrogate may reach the output (strict UTF-8).
_UNDECODED = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class BatchOptions:
    """How to read, process and write a batch; formats default to the file extensions."""

    text_column: str = "text"
    # None: the "id" column when there is one, else row numbers; a named column must exist.
    id_column: str | None = None
    channel_column: str = "channel"
    encoding: str = "utf-8"  # of the input; e.g. gb18030 for files saved by Chinese Excel
    input_format: Format | None = None
    output_format: Format | None = None
    chunk_size: int = 512
    workers: int = 1
    progress: bool = True
    replies: bool = False  # reply drafts cost about as much as the triage itself

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.workers < 1:
            raise InputError(
                f"chunk_size and workers must be at least 1 (got {self.chunk_size}, {self.workers})"
            )
        try:
            "".encode(self.encoding)  # a text encoding: codecs such as hex or base64 fail here
        except LookupError:
            raise InputError(
                f"encoding: expected a text encoding such as utf-8 or gb18030 "
                f"(got {self.encoding!r})"
            ) from None

    @property
    def ids_from(self) -> str:
        return self.id_column or "id"

    def undecoded(self, where: str) -> tuple[str, str]:
        """The error of a row whose bytes are not text in the input's encoding."""
        hint = " (files saved by Chinese Excel: --encoding gb18030)" if _utf8(self.encoding) else ""
        return "invalid_encoding", f"{where}: not {self.encoding} text{hint}"


@dataclass
class BatchSummary:
    """What a run did; errors are counted by code."""

    rows_read: int = 0
    triaged: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    output: str = ""

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        by_code = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items()))
        return "\n".join(
            [
                f"rows read   {self.rows_read}",
                f"triaged     {self.triaged}",
                f"errors      {self.errors.total()}" + (f" ({by_code})" if by_code else ""),
                f"seconds     {self.seconds:.2f}",
                f"rows/s      {self.rows_per_second:.1f}",
                f"output      {self.output}",
            ]
        )


@dataclass(frozen=True)
class Row:
    """One input record as read, before validation; ``error`` is set when it could not be read."""

    number: int
    id: str
    text: Any = None
    channel: Any = None
    error: tuple[str, str] | None = None


def detect_format(path: str | Path, explicit: Format | None, role: str) -> Format:
    """The explicit format, else the one the extension names; stdin/stdout need an explicit one."""
    if explicit is not None:
        return explicit
    suffix = Path(path).suffix.lower()
    if str(path) == STDIO or suffix not in FORMATS_BY_SUFFIX:
        raise InputError(
            f"{path}: cannot tell the {role} format from the file name; name it .csv or .jsonl "
            f"or give the {role} format explicitly"
        )
    return FORMATS_BY_SUFFIX[suffix]


def _row_id(value: Any, number: int) -> str:
    return str(number) if value is None or value == "" else str(value)


def _utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def _undecoded(*values: Any) -> bool:
    return any(isinstance(v, str) and _UNDECODED.search(v) for v in values)


def _blank_to_none(value: Any) -> Any:
    return None if value == "" else value


def _allow_long_csv_fields() -> None:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))


def _check_header(columns: list[str], source: str, options: BatchOptions) -> None:
    """The header must decode and name the text column once, and the id column if one is named."""
    if not columns:
        raise InputError(f"{source}: the file is empty; expected a header row with a text column")
    if _undecoded(*columns):
        raise InputError(f"{source}:1: {options.undecoded('the header row')[1]}")
    wanted = [options.text_column] + ([options.id_column] if options.id_column else [])
    for name in wanted:
        if name not in columns:
            raise InputError(f"{source}: no {name!r} column; the columns found are {columns}")
        if columns.count(name) > 1:
            raise InputError(f"{source}: the {name!r} column appears {columns.count(name)} times")


def _csv_rows(stream: IO[str], source: str, options: BatchOptions) -> Iterator[Row]:
    _allow_long_csv_fields()
    reader = csv.DictReader(stream)
    _check_header(list(reader.fieldnames or []), source, options)

    def rows() -> Iterator[Row]:
        try:
            for number, record in enumerate(reader, start=1):
                text = record.get(options.text_column)
                channel = _blank_to_none(record.get(options.channel_column))
                row_id = _row_id(record.get(options.ids_from), number)
                if _undecoded(row_id):
                    row_id = str(number)
                if _undecoded(row_id, text, channel):  # other columns are not read
                    where = f"row {number} (line {reader.line_num})"
                    yield Row(number, row_id, error=options.undecoded(where))
                    continue
                missing = ("missing_text", "the row has no text field") if text is None else None
                yield Row(number, row_id, text, channel, missing)
        except csv.Error as exc:
            raise InputError(f"{source}:{reader.line_num}: malformed CSV ({exc})") from exc

    return rows()


def _jsonl_row(number: int, line: str, options: BatchOptions) -> Row:
    if _undecoded(line):
        return Row(number, str(number), error=options.undecoded(f"line {number}"))
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        where = f"line {number}, column {exc.colno}"
        return Row(number, str(number), error=("invalid_json", f"{where}: {exc.msg}"))
    if not isinstance(record, dict):
        return Row(
            number,
            str(number),
            error=(
                "invalid_json",
                f"line {number}: expected a JSON object (got {type(record).__name__})",
            ),
        )
    row_id = _row_id(record.get(options.ids_from), number)
    text, channel = record.get(options.text_column), record.get(options.channel_column)
    if _undecoded(row_id):  # an escape such as "\ud83d" cannot be written out
        row_id = str(number)
    if options.text_column not in record:
        return Row(number, row_id, error=("missing_text", f"no {options.text_column!r} field"))
    return Row(number, row_id, text, _blank_to_none(channel))


def _jsonl_rows(stream: IO[str], source: str, options: BatchOptions) -> Iterator[Row]:
    lines = enumerate(stream, start=1)
    peeked: list[tuple[int, str]] = []
    for number, line in lines:  # the first object decides whether the fields exist at all
        peeked.append((number, line))
        if not line.strip():
            continue
        first = _jsonl_row(number, line, options)
        if first.error is not None and first.error[0] != "missing_text":
            continue
        fields = list(json.loads(line))
        for name in [options.text_column, options.id_column]:
            if name is not None and name not in fields:
                raise InputError(
                    f"{source}:{number}: no {name!r} field; the fields found are {fields}"
                )
        break
    return (
        _jsonl_row(number, line, options) for number, line in chain(peeked, lines) if line.strip()
    )


def _reading(encoding: str) -> tuple[str, str]:
    """How input is decoded: utf-8-sig drops the byte order mark that spreadsheet programs put
    before CSV headers; bytes that do not decode become error rows (see ``_UNDECODED``)."""
    return "utf-8-sig" if _utf8(encoding) else encoding, "surrogateescape"


@contextmanager
def _open_text(
    path: str | Path, mode: Literal["r", "w"], encoding: str = "utf-8"
) -> Iterator[IO[str]]:
    """A text stream on a file, or on stdin/stdout for ``-`` (left open afterwards); output is
    always UTF-8."""
    encoding, errors = _reading(encoding) if mode == "r" else ("utf-8", "strict")
    if str(path) == STDIO:
        binary = sys.stdin.buffer if mode == "r" else sys.stdout.buffer
        wrapper = io.TextIOWrapper(binary, encoding=encoding, errors=errors, newline="")
        try:
            yield wrapper
        finally:
            wrapper.flush()
            wrapper.detach()
        return
    try:
        stream = open(path, mode, encoding=encoding, errors=errors, newline="")  # noqa: SIM115
    except OSError as exc:
        verb = "read" if mode == "r" else "written"
        raise InputError(f"{path}: cannot be {verb} ({exc.strerror or exc})") from exc
    with stream:
        yield stream


def count_records(path: Path, fmt: Format, encoding: str = "utf-8") -> int:
    """The number of records, for the progress total (a quoted CSV text may span lines)."""
    if fmt == "csv":
        _allow_long_csv_fields()
        encoding, errors = _reading(encoding)
        with open(path, encoding=encoding, errors=errors, newline="") as stream:
            return max(0, sum(1 for row in csv.reader(stream) if row) - 1)
    with open(path, "rb") as stream:
        return sum(1 for line in stream if line.strip())


def _error_record(row_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": row_id, "error": {"code": code, "message": message}}


def triage_rows(
    pipeline: TriagePipeline, rows: list[Row], replies: bool = False
) -> list[dict[str, Any]]:
    """Output records for one chunk, in row order; rows that cannot be triaged become errors."""
    out: list[dict[str, Any] | None] = []
    prepared: list[Prepared] = []
    slots: list[int] = []
    for row in rows:
        if row.error is not None:
            out.append(_error_record(row.id, *row.error))
            continue
        try:
            prepared.append(
                pipeline.preprocess(Message(id=row.id, text=row.text, channel=row.channel))
            )
        except InputError as exc:
            out.append(_error_record(row.id, exc.code, str(exc)))
            continue
        except ValidationError as exc:
            message = describe_validation_error(f"row {row.number}", exc)
            out.append(_error_record(row.id, InputError.code, message))
            continue
        slots.append(len(out))
        out.append(None)
    results = pipeline.run_prepared(prepared, replies=replies)
    for slot, result in zip(slots, results, strict=True):
        out[slot] = result.model_dump(mode="json")
    return [record for record in out if record is not None]


def _csv_record(record: dict[str, Any]) -> dict[str, Any]:
    if "error" in record:
        error = record["error"]
        return {"id": record["id"], "error_code": error["code"], "error_message": error["message"]}
    return {
        "id": record["id"],
        "topic": record["topic"],
        "secondary_topics": "|".join(record["secondary_topics"]),
        "sentiment": record["sentiment"],
        "sentiment_score": record["sentiment_score"],
        "urgency": record["urgency"],
        "is_complaint": str(record["is_complaint"]).lower(),
        "complaint_score": record["complaint_score"],
        "needs_review": str(record["needs_review"]).lower(),
        "cues": json.dumps(record["cues"], ensure_ascii=False, separators=(",", ":")),
        "masked_text": record["masked_text"],
        "model_version": record["model"]["version"],
        "replies": json.dumps(record["replies"], ensure_ascii=False, separators=(",", ":")),
    }


def _record_writer(stream: IO[str], fmt: Format) -> Callable[[dict[str, Any]], object]:
    if fmt == "jsonl":
        return lambda record: stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    return lambda record: writer.writerow(_csv_record(record))


_worker_pipeline: TriagePipeline | Exception | None = None


def _init_worker(settings: Settings) -> None:
    """Load the pipeline once per worker process; Ctrl-C is left to the parent, which stops all.

    A load failure is kept and raised by the first task: raised here, it would make the pool
    restart the worker forever and the run would hang.
    """
    global _worker_pipeline
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _worker_pipeline = load_pipeline(settings)
    except Exception as exc:
        _worker_pipeline = exc


def _triage_in_worker(rows: list[Row], replies: bool) -> list[dict[str, Any]]:
    if isinstance(_worker_pipeline, Exception):
        raise _worker_pipeline
    if _worker_pipeline is None:
        raise RuntimeError("batch worker used before its initializer ran")
    return triage_rows(_worker_pipeline, rows, replies)


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _in_pool(
    chunks: Iterator[list[Row]], settings: Settings, workers: int, replies: bool
) -> Iterator[list[dict[str, Any]]]:
    """Chunk results in input order, with at most two chunks per worker read ahead.

    ``Pool.imap`` would read the whole input into its task queue; the bounded window keeps
    memory flat. ``spawn`` avoids forking a parent that holds threads (tqdm's monitor).
    ``settings`` name the model directory (:func:`triage.service.pin_model`).
    """
    with get_context("spawn").Pool(workers, _init_worker, (settings,)) as pool:
        pending: deque[AsyncResult[list[dict[str, Any]]]] = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_triage_in_worker, (chunk, replies)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def run_batch(
    input_path: str | Path,
    output_path: str | Path,
    settings: Settings,
    options: BatchOptions | None = None,
) -> BatchSummary:
    """Triage every row of ``input_path`` into ``output_path`` and return the summary.

    Problems with the file as a whole (format, missing text column, unreadable model) raise
    before the output is created; problems with single rows become error rows.
    """
    options = options or BatchOptions()
    started = time.perf_counter()
    in_format = detect_format(input_path, options.input_format, "input")
    out_format = detect_format(output_path, options.output_format, "output")
    if STDIO not in (str(input_path), str(output_path)) and (
        Path(input_path).resolve() == Path(output_path).resolve()
    ):
        raise InputError(f"{output_path}: the output would overwrite the input")
    read = _csv_rows if in_format == "csv" else _jsonl_rows
    summary = BatchSummary(output=str(output_path))
    with _open_text(input_path, "r", options.encoding) as source:
        try:
            rows = read(source, str(input_path), options)
            # Resolved and loaded here even with workers, so that a missing model is trained (or
            # a broken one reported) once, before any worker starts or any output is written,
            # and every worker loads this very model even if another version is promoted.
            settings = pin_model(settings)
            pipeline = load_pipeline(settings)
            total = (
                count_records(Path(input_path), in_format, options.encoding)
                if options.progress and str(input_path) != STDIO
                else None
            )
            chunks = _chunks(rows, options.chunk_size)
            with (
                _open_text(output_path, "w") as sink,
                tqdm(total=total, unit="row", disable=not options.progress) as progress,
            ):
                write = _record_writer(sink, out_format)
                results = (
                    (triage_rows(pipeline, chunk, options.replies) for chunk in chunks)
                    if options.workers == 1
                    else _in_pool(chunks, settings, options.workers, options.replies)
                )
                for records in results:
                    for record in records:
                        write(record)
                        if "error" in record:
                            summary.errors[record["error"]["code"]] += 1
                    summary.rows_read += len(records)
                    progress.update(len(records))
        except OSError as exc:  # e.g. a full disk or a closed pipe in the middle of a run
            raise InputError(f"batch stopped after {summary.rows_read} rows: {exc}") from exc
    summary.triaged = summary.rows_read - summary.errors.total()
    summary.seconds = time.perf_counter() - started
    return summary
