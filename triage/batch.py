"""Batch triage of CSV or JSONL files, streamed in chunks so that millions of rows fit in memory.

Every input row gives exactly one output row, in input order: either the triage result or the
row's id with an ``error`` ``{code, message}``, so that a bad row never stops or shortens a run.
That one-to-one order is also what lets an interrupted run resume: the rows already in the output
are the first rows of the input.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing, contextmanager
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
from triage.pii import mask_pii
from triage.pipeline import Prepared, TriagePipeline
from triage.resources import describe_validation_error
from triage.schemas import Message
from triage.service import load_pipeline, pin_model
from triage.text import normalize

Format = Literal["csv", "jsonl"]
# new: refuse to replace an existing non-empty output; resume: append the rows it lacks, when
# OUTPUT.batch.json shows it was written from this input with these options.
OutputMode = Literal["new", "overwrite", "resume"]
STDIO = "-"
FORMATS_BY_SUFFIX: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CSV_COLUMNS = (
    "id",
    "channel",
    "topic",
    "secondary_topics",
    "sentiment",
    "sentiment_score",
    "urgency",
    "is_complaint",
    "complaint_score",
    "needs_review",
    "review_reasons",
    "cues",
    "explanation",
    "masked_text",
    "model_version",
    "replies",
    "error_code",
    "error_message",
)
# Kept input columns are written under "input" (JSONL) or as "input.<column>" (CSV), apart from
# the result's own fields.
KEPT = "input"
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
    # Input columns copied into every output row ("all": every one but the text, which is
    # written only masked); with JSONL input, "all" means the fields of the first object. A
    # value that holds personal data is copied masked.
    keep_columns: tuple[str, ...] | Literal["all"] = ()
    output_mode: OutputMode = "new"
    csv_bom: bool = False  # a byte order mark makes Excel read UTF-8 CSV as UTF-8

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.workers < 1:
            raise InputError(
                f"chunk_size and workers must be at least 1 (got {self.chunk_size}, {self.workers})"
            )
        if self.keep_columns != "all" and self.text_column in self.keep_columns:
            raise InputError(
                f"keep columns: {self.text_column!r} is the text, which is written only masked "
                "(masked_text)"
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
    skipped: int = 0  # input rows an earlier, interrupted run had written (resume)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_written(self) -> int:
        """The input rows whose output rows are in the output, this run's and earlier ones."""
        return self.skipped + self.rows_read

    def format(self) -> str:
        by_code = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items()))
        resumed = [f"skipped     {self.skipped} (already in the output)"] if self.skipped else []
        return "\n".join(
            [
                *resumed,
                f"rows read   {self.rows_read}",
                f"triaged     {self.triaged}",
                f"errors      {self.errors.total()}" + (f" ({by_code})" if by_code else ""),
                f"seconds     {self.seconds:.2f}",
                f"rows/s      {self.rows_per_second:.1f}",
                f"output      {self.output}",
            ]
        )


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run between chunks: the output ends with whole rows, ``summary`` counts
    them, and a run with ``output_mode="resume"`` goes on from there."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__(f"interrupted after {summary.rows_written} rows")
        self.summary = summary


@dataclass(frozen=True)
class Row:
    """One input record as read, before validation; ``error`` is set when it could not be read.

    ``kept`` holds the input columns to copy into the output (None when none are kept, or when
    the record could not be read).
    """

    number: int
    id: str
    text: Any = None
    channel: Any = None
    error: tuple[str, str] | None = None
    kept: dict[str, Any] | None = None


def keep_columns_option(value: str) -> tuple[str, ...] | Literal["all"]:
    """``--keep-columns``: "all", or column names separated by commas."""
    if value.strip() == "all":
        return "all"
    return tuple(name.strip() for name in value.split(",") if name.strip())


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


def _kept_columns(columns: list[str], options: BatchOptions) -> list[str]:
    """The input columns to copy: those named, or for "all" every named one but the text."""
    if options.keep_columns == "all":
        return [name for name in columns if name and name != options.text_column]
    return list(options.keep_columns)


def _check_columns(columns: list[str], where: str, kind: str, options: BatchOptions) -> list[str]:
    """The text column, and the id and kept columns asked for, must each appear once; returns
    the kept columns."""
    kept = _kept_columns(columns, options)
    wanted = [options.text_column, *([options.id_column] if options.id_column else []), *kept]
    for name in wanted:
        if name not in columns:
            raise InputError(f"{where}: no {name!r} {kind}; the {kind}s found are {columns}")
        if columns.count(name) > 1:
            raise InputError(f"{where}: the {name!r} {kind} appears {columns.count(name)} times")
    return kept


def _kept_values(record: dict[str, Any], kept: list[str], options: BatchOptions) -> Any:
    """The values to copy into the output row; None when no columns are kept."""
    return {name: record.get(name) for name in kept} if options.keep_columns else None


class _Lines:
    """A text stream's lines, numbered, for ``csv.reader``; lines given back are read again."""

    def __init__(self, stream: IO[str]) -> None:
        self._numbered = enumerate(stream, start=1)
        self._back: deque[tuple[int, str]] = deque()
        self.taken: list[tuple[int, str]] = []  # the lines of the record being read

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        item = self._back.popleft() if self._back else next(self._numbered)
        self.taken.append(item)
        return item[1]

    def give_back(self) -> None:
        """Read every line of the last record but its first again."""
        self._back.extendleft(reversed(self.taken[1:]))


def _read_again(taken: list[tuple[int, str]]) -> bool:
    """Whether the lines of a bad record after its first are read again as records of their
    own (trivially when it has one line): its quote ran to the end of the file, or into a quote
    that opens a field (at the start of a line or after a comma, as in ``r20,"...``), so it was
    a stray one.

    Otherwise the record is one text over several lines whose quoting is broken: read again, a
    piece of it would pass for a record, and its start for an id.
    """
    before, quote, _ = taken[-1][1].partition('"')
    return len(taken) == 1 or not quote or before[-1:] in ("", ",")


def _csv_records(stream: IO[str]) -> Iterator[tuple[int, list[str] | str]]:
    """The header, then every record, with its first line; a bad record comes as its problem,
    one per line when no line of it may be read again (:func:`_read_again`).

    The csv module's lenient mode folds every line after a stray quote, up to the next quote,
    into one text (or all of them when none follows), and never says so. Here quoting is strict
    (a quote left open at the end, text after a closing quote) and a record with more values
    than the header is bad too; after a stray quote reading goes on from the line after it, so
    that it costs one row and the rows after it are read as they were written.
    """
    lines = _Lines(stream)
    reader = csv.reader(lines, strict=True)
    width = 0
    while True:
        lines.taken.clear()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problem = f"malformed CSV ({exc}; a stray quote?)"
        else:
            if not fields:  # a blank line
                continue
            width = width or len(fields)
            if not any(fields[width:]):
                yield lines.taken[0][0], fields
                continue
            problem = f"{len(fields)} values where the header has {width} (an unquoted comma?)"
        first, last = lines.taken[0][0], lines.taken[-1][0]
        if _read_again(lines.taken):
            lines.give_back()
            yield first, f"{problem}; only this line is left out"
            continue
        yield first, f"{problem}; it spans lines {first}-{last}, each left out as an error row"
        for line, _ in lines.taken[1:]:
            yield line, f"part of the malformed record on line {first}"


def _check_header(columns: list[str], where: str, options: BatchOptions) -> list[str]:
    """The header must decode and name the columns wanted once; returns the kept columns."""
    if not columns:
        raise InputError(f"{where}: the file is empty; expected a header row with a text column")
    if _undecoded(*columns):
        raise InputError(f"{where}: {options.undecoded('the header row')[1]}")
    return _check_columns(columns, where, "column", options)


def _csv_rows(
    stream: IO[str], source: str, options: BatchOptions
) -> tuple[list[str], Iterator[Row]]:
    """The kept columns, and the rows; a bad record becomes an error row naming its line."""
    _allow_long_csv_fields()
    records = _csv_records(stream)
    line, columns = next(records, (1, []))
    if isinstance(columns, str):
        raise InputError(f"{source}:{line}: the header row: {columns}")
    kept = _check_header(columns, f"{source}:{line}", options)

    def rows() -> Iterator[Row]:
        for number, (line, fields) in enumerate(records, start=1):
            where = f"row {number} (line {line})"
            if isinstance(fields, str):
                yield Row(number, str(number), error=("malformed_csv", f"{where}: {fields}"))
                continue
            record = dict(zip(columns, fields, strict=False))
            text = record.get(options.text_column)
            channel = _blank_to_none(record.get(options.channel_column))
            row_id = _row_id(record.get(options.ids_from), number)
            values = _kept_values(record, kept, options)
            if _undecoded(row_id):
                row_id = str(number)
            if _undecoded(row_id, text, channel, *(values or {}).values()):  # others are not read
                yield Row(number, row_id, error=options.undecoded(where))
                continue
            missing = ("missing_text", "the row has no text field") if text is None else None
            yield Row(number, row_id, text, channel, missing, values)

    return kept, rows()


def _writable(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Kept JSON values as they can be written: a lone surrogate (from an escape such as
    "\\ud83d") becomes U+FFFD, as in texts."""
    dumped = json.dumps(values, ensure_ascii=False)
    return json.loads(_UNDECODED.sub("\ufffd", dumped)) if _undecoded(dumped) else values


def _jsonl_row(number: int, line: str, options: BatchOptions, kept: list[str]) -> Row:
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
    values = _writable(_kept_values(record, kept, options))
    if _undecoded(row_id):  # an escape such as "\ud83d" cannot be written out
        row_id = str(number)
    if options.text_column not in record:
        missing = ("missing_text", f"no {options.text_column!r} field")
        return Row(number, row_id, error=missing, kept=values)
    return Row(number, row_id, text, _blank_to_none(channel), kept=values)


def _jsonl_rows(
    stream: IO[str], source: str, options: BatchOptions
) -> tuple[list[str], Iterator[Row]]:
    """The kept columns (the first object's fields decide), and the rows."""
    lines = enumerate(stream, start=1)
    peeked: list[tuple[int, str]] = []
    kept: list[str] = []
    for number, line in lines:  # the first object decides whether the fields exist at all
        peeked.append((number, line))
        if not line.strip():
            continue
        first = _jsonl_row(number, line, options, kept)
        if first.error is not None and first.error[0] != "missing_text":
            continue
        kept = _check_columns(list(json.loads(line)), f"{source}:{number}", "field", options)
        break
    return kept, (
        _jsonl_row(number, line, options, kept)
        for number, line in chain(peeked, lines)
        if line.strip()
    )


def _reading(encoding: str) -> tuple[str, str]:
    """How input is decoded: utf-8-sig drops the byte order mark that spreadsheet programs put
    before CSV headers; bytes that do not decode become error rows (see ``_UNDECODED``)."""
    return "utf-8-sig" if _utf8(encoding) else encoding, "surrogateescape"


@contextmanager
def _open_text(
    path: str | Path, mode: Literal["r", "w", "a"], encoding: str = "utf-8"
) -> Iterator[IO[str]]:
    """A text stream on a file, or on stdin/stdout for ``-`` (left open afterwards); output is
    UTF-8, with a byte order mark when ``encoding`` is utf-8-sig (none when appending)."""
    encoding, errors = _reading(encoding) if mode == "r" else (encoding, "strict")
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
            return max(0, sum(1 for _ in _csv_records(stream)) - 1)
    with open(path, "rb") as stream:
        return sum(1 for line in stream if line.strip())


@dataclass(frozen=True)
class _Written:
    """What an earlier run left in an output: its whole rows and the byte offset where they end
    (what follows is a row torn by a kill), and the CSV header."""

    rows: int = 0
    end: int = 0
    header: list[str] | None = None


def _written(path: Path, fmt: Format) -> _Written:
    """The whole rows of an output, which end with a line end: every row is written at once."""
    if not path.is_file():
        return _Written()
    with path.open("rb") as stream:
        if fmt == "jsonl":
            rows = end = 0
            for line in stream:
                if not line.endswith(b"\n"):
                    break
                rows, end = rows + 1, end + len(line)
            return _Written(rows, end)
        return _csv_written(stream, path)


def _csv_written(stream: IO[bytes], path: Path) -> _Written:
    """:func:`_written` for CSV, whose texts may span lines; strict parsing stops at a row torn
    inside a quoted field."""
    _allow_long_csv_fields()
    consumed, whole = 0, True

    def lines() -> Iterator[str]:
        nonlocal consumed, whole
        for raw in stream:
            consumed, whole = consumed + len(raw), raw.endswith(b"\n")
            yield raw.decode("utf-8-sig" if consumed == len(raw) else "utf-8", "surrogateescape")

    found = _Written()
    try:
        for fields in csv.reader(lines(), strict=True):
            if not whole:
                break
            if found.header is None:
                found = _Written(0, consumed, fields)
            else:
                found = _Written(found.rows + 1, consumed, found.header)
    except csv.Error as exc:
        if consumed < path.stat().st_size:  # not at the end: not a torn row
            raise InputError(f"{path}: not a CSV written by triage batch ({exc})") from exc
    return found


def _rereadable(path: str | Path) -> bool:
    """Whether the input can be read more than once (for its SHA-256 or its record count): not
    stdin, nor a pipe such as ``<(zcat export.csv.gz)``, which reading would consume."""
    return str(path) != STDIO and Path(path).is_file()


def _provenance_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.batch.json")


def _provenance(
    input_path: str | Path, formats: tuple[Format, Format], kept: list[str], options: BatchOptions
) -> dict[str, Any]:
    """What the rows of an output depend on: the input's bytes (its SHA-256; None for stdin or
    a pipe) and the options that shape rows. Written beside the output as OUTPUT.batch.json, it
    lets ``resume`` refuse an output it would not continue: comparing rows cannot tell two
    inputs apart when their ids are row numbers."""
    digest = None
    if _rereadable(input_path):
        with open(input_path, "rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
    return {
        "input_sha256": digest,
        "input_format": formats[0],
        "encoding": options.encoding,
        "text_column": options.text_column,
        "id_column": options.id_column,
        "channel_column": options.channel_column,
        "keep_columns": kept,
        "replies": options.replies,
        "output_format": formats[1],
    }


def _check_provenance(output: Path, expected: dict[str, Any]) -> None:
    """An output with rows is resumed only from the input and with the options it was started
    with, as its OUTPUT.batch.json records them."""
    path = _provenance_path(output)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{output}: {path.name} is missing, which says what input and options it was "
            "written from; start again with --overwrite"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    found = recorded if isinstance(recorded, dict) else {}
    differ = [key for key, value in expected.items() if found.get(key) != value]
    if differ:
        raise InputError(
            f"{output}: not written from this input with these options ({', '.join(differ)} "
            f"differ from {path.name}); resume with the INPUT and options it was started with, "
            "or start again with --overwrite"
        )


def _skip_written(rows: Iterator[Row], written: _Written, output: str) -> None:
    """Skip the input rows whose output rows are in ``output`` already."""
    seen = sum(1 for _ in islice(rows, written.rows))
    if seen < written.rows:
        raise InputError(
            f"{output}: has {written.rows} rows but the input only {seen}; "
            "it was not written from this input"
        )


def _without_pii(value: Any) -> Any:
    """``value`` as it is, or, when it holds personal data, its text masked as the store masks
    free text: normalised first, so that full-width digits are found too (JSON values other than
    strings are read, and then written, as compact JSON)."""
    text = value if isinstance(value, str) else _compact_json(value)
    masked = mask_pii(normalize(text))
    return masked.text if masked.spans else value


def _error_record(row: Row, code: str, message: str) -> dict[str, Any]:
    """An error row; its message may quote a piece of text, and its id may be one (a row that
    cannot be triaged is no proof that its id column holds ids), so both are masked."""
    return {"id": _without_pii(row.id), "error": {"code": code, "message": _without_pii(message)}}


def triage_rows(
    pipeline: TriagePipeline, rows: list[Row], replies: bool = False
) -> list[dict[str, Any]]:
    """Output records for one chunk, in row order; rows that cannot be triaged become errors."""
    out: list[dict[str, Any] | None] = []
    prepared: list[Prepared] = []
    slots: list[int] = []
    for row in rows:
        if row.error is not None:
            out.append(_error_record(row, *row.error))
            continue
        try:
            prepared.append(
                pipeline.preprocess(Message(id=row.id, text=row.text, channel=row.channel))
            )
        except InputError as exc:
            out.append(_error_record(row, exc.code, str(exc)))
            continue
        except ValidationError as exc:
            message = describe_validation_error(f"row {row.number}", exc)
            out.append(_error_record(row, InputError.code, message))
            continue
        slots.append(len(out))
        out.append(None)
    results = pipeline.run_prepared(prepared, replies=replies)
    for slot, result in zip(slots, results, strict=True):
        out[slot] = result.model_dump(mode="json")
    records = [record for record in out if record is not None]
    for row, record in zip(rows, records, strict=True):
        if row.kept is not None:
            record[KEPT] = {name: _without_pii(value) for name, value in row.kept.items()}
    return records


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _csv_columns(kept: list[str]) -> list[str]:
    """The columns of CSV output: the result's, then the kept input columns."""
    return [*CSV_COLUMNS, *(f"{KEPT}.{name}" for name in kept)]


def _csv_record(record: dict[str, Any]) -> dict[str, Any]:
    if "error" in record:
        error = record["error"]
        flat = {"id": record["id"], "error_code": error["code"], "error_message": error["message"]}
    else:
        flat = {
            "id": record["id"],
            "channel": record["channel"],
            "topic": record["topic"],
            "secondary_topics": "|".join(record["secondary_topics"]),
            "sentiment": record["sentiment"],
            "sentiment_score": record["sentiment_score"],
            "urgency": record["urgency"],
            "is_complaint": str(record["is_complaint"]).lower(),
            "complaint_score": record["complaint_score"],
            "needs_review": str(record["needs_review"]).lower(),
            "review_reasons": "; ".join(record["review_reasons"]),
            "cues": _compact_json(record["cues"]),
            # One line each, as `triage classify` prints them; a line may hold "; ".
            "explanation": "\n".join(record["explanation"]),
            "masked_text": record["masked_text"],
            "model_version": record["model"]["version"],
            "replies": _compact_json(record["replies"]),
        }
    for name, value in record.get(KEPT, {}).items():
        plain = value is None or isinstance(value, str)  # JSON input may hold any JSON value
        flat[f"{KEPT}.{name}"] = value if plain else _compact_json(value)
    return flat


def _record_writer(
    stream: IO[str], fmt: Format, kept: list[str], header: bool
) -> Callable[[dict[str, Any]], object]:
    """Writes one record with one ``write`` call, so that an output holds whole rows (a kill
    can still tear the last one)."""
    if fmt == "jsonl":
        return lambda record: stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    writer = csv.DictWriter(stream, fieldnames=_csv_columns(kept), lineterminator="\n")
    if header:
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
) -> Generator[list[dict[str, Any]], None, None]:
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


@contextmanager
def _stop_between_chunks() -> Iterator[Callable[[], bool]]:
    """Ctrl-C asks the run to stop once the chunk in hand is written, so that the output ends
    with whole rows and their count is exact; a second Ctrl-C stops at once.

    Left alone where Ctrl-C would not raise KeyboardInterrupt anyway (ignored, as for a job
    started with ``&``, or handled elsewhere) or where no handler may be set (not the main
    thread).
    """
    requested = False
    if (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        or threading.current_thread() is not threading.main_thread()
    ):
        yield lambda: False
        return

    def request(signum: int, frame: Any) -> None:
        nonlocal requested
        requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _check_output(input_path: str | Path, output_path: str | Path, options: BatchOptions) -> None:
    """Refuse to replace an output with rows in it unless told to (stdout is always fine)."""
    if options.output_mode == "resume" and (
        str(output_path) == STDIO or not _rereadable(input_path)
    ):
        raise InputError(
            "resuming needs files, not - or a pipe: an output to count the rows in, and an "
            "input whose SHA-256 shows that the output was written from it"
        )
    if str(output_path) == STDIO:
        return
    path = Path(output_path)
    if options.output_mode == "new" and path.is_file() and path.stat().st_size > 0:
        raise InputError(
            f"{output_path}: the file exists and is not empty; give --overwrite to replace it "
            "or --resume to add the rows it lacks"
        )


def run_batch(
    input_path: str | Path,
    output_path: str | Path,
    settings: Settings,
    options: BatchOptions | None = None,
) -> BatchSummary:
    """Triage every row of ``input_path`` into ``output_path`` and return the summary.

    Problems with the file as a whole (format, missing text column, unreadable model, an output
    that would be replaced or does not belong to the input when resuming) raise before the
    output is changed; problems with single rows become error rows. Ctrl-C raises
    :class:`BatchInterrupted` after the chunk being written.
    """
    options = options or BatchOptions()
    started = time.perf_counter()
    in_format = detect_format(input_path, options.input_format, "input")
    out_format = detect_format(output_path, options.output_format, "output")
    if STDIO not in (str(input_path), str(output_path)) and (
        Path(input_path).resolve() == Path(output_path).resolve()
    ):
        raise InputError(f"{output_path}: the output would overwrite the input")
    if options.csv_bom and out_format != "csv":
        raise InputError("a byte order mark is for CSV output only")
    _check_output(input_path, output_path, options)
    resume = options.output_mode == "resume"
    written = _written(Path(output_path), out_format) if resume else _Written()
    read = _csv_rows if in_format == "csv" else _jsonl_rows
    summary = BatchSummary(output=str(output_path), skipped=written.rows)
    interrupted = False
    with _open_text(input_path, "r", options.encoding) as source:
        try:
            kept, rows = read(source, str(input_path), options)
            provenance = (
                None
                if str(output_path) == STDIO
                else _provenance(input_path, (in_format, out_format), kept, options)
            )
            if provenance is not None and written.end:  # resuming an output with rows
                _check_provenance(Path(output_path), provenance)
            _skip_written(rows, written, str(output_path))
            # Resolved and loaded here even with workers, so that a missing model is trained (or
            # a broken one reported) once, before any worker starts or any output is written,
            # and every worker loads this very model even if another version is promoted.
            settings = pin_model(settings)
            pipeline = load_pipeline(settings)
            total = (
                count_records(Path(input_path), in_format, options.encoding)
                if options.progress and _rereadable(input_path)
                else None
            )
            if resume and Path(output_path).is_file():
                os.truncate(output_path, written.end)  # a row torn by a kill is written again
            chunks = _chunks(rows, options.chunk_size)
            results = (
                (triage_rows(pipeline, chunk, options.replies) for chunk in chunks)
                if options.workers == 1
                else _in_pool(chunks, settings, options.workers, options.replies)
            )
            encoding = "utf-8-sig" if options.csv_bom else "utf-8"
            with (
                _stop_between_chunks() as stop_requested,
                closing(results),
                _open_text(output_path, "a" if resume else "w", encoding) as sink,
                tqdm(
                    total=total, initial=written.rows, unit="row", disable=not options.progress
                ) as progress,
            ):
                if provenance is not None:
                    _provenance_path(Path(output_path)).write_text(
                        json.dumps(provenance, indent=2) + "\n", encoding="utf-8"
                    )
                write = _record_writer(sink, out_format, kept, header=written.header is None)
                for records in results:
                    for record in records:
                        write(record)
                        if "error" in record:
                            summary.errors[record["error"]["code"]] += 1
                    summary.rows_read += len(records)
                    progress.update(len(records))
                    if stop_requested():
                        interrupted = True
                        break
        except OSError as exc:  # e.g. a full disk or a closed pipe in the middle of a run
            raise InputError(f"batch stopped after {summary.rows_written} rows: {exc}") from exc
    summary.triaged = summary.rows_read - summary.errors.total()
    summary.seconds = time.perf_counter() - started
    if interrupted:
        raise BatchInterrupted(summary)
    return summary
