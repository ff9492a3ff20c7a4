"""The labeled corpus format: JSON lines validated against the taxonomy in use."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from triage.errors import ConfigError
from triage.resources import describe_validation_error
from triage.taxonomy import Taxonomy


class CorpusRecord(BaseModel):
    """One labeled message. ``id`` and ``text`` are required; labels follow the taxonomy."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    channel: str
    topic: str
    secondary_topics: list[str] = Field(default_factory=list)
    sentiment: str
    urgency: str
    is_complaint: bool


def seed_corpus_path(split: str) -> Path:
    """The packaged seed corpus file for ``train`` or ``dev``."""
    root = resources.files("triage.training").joinpath("data", "seed", f"{split}.jsonl")
    return Path(str(root))


def _label_problems(record: CorpusRecord, taxonomy: Taxonomy) -> Iterable[str]:
    allowed = {
        "channel": taxonomy.channels,
        "topic": taxonomy.topic_ids,
        "sentiment": taxonomy.sentiments,
        "urgency": taxonomy.urgency_ids,
    }
    for key, values in allowed.items():
        if getattr(record, key) not in values:
            yield f"{key}: expected one of {values} (got {getattr(record, key)!r})"
    for index, topic in enumerate(record.secondary_topics):
        if topic not in taxonomy.topic_ids:
            yield f"secondary_topics.{index}: expected one of {taxonomy.topic_ids} (got {topic!r})"
        elif topic == record.topic:
            yield f"secondary_topics.{index}: repeats the primary topic {topic!r}"
    if len(set(record.secondary_topics)) != len(record.secondary_topics):
        yield "secondary_topics: duplicated values"


def load_corpus(path: Path, taxonomy: Taxonomy) -> list[CorpusRecord]:
    """Read and validate a corpus file; every problem is reported as ``file:line: key: ...``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    records, problems, seen = [], [], Counter[str]()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = CorpusRecord.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        except ValidationError as exc:
            problems.append(describe_validation_error(where, exc))
            continue
        problems += [f"{where}: {problem}" for problem in _label_problems(record, taxonomy)]
        seen[record.id] += 1
        if seen[record.id] == 2:
            problems.append(f"{where}: id: expected unique ids (got duplicate {record.id!r})")
        records.append(record)
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise ConfigError("\n".join(shown))
    if not records:
        raise ConfigError(f"{path}: expected at least one record (the file is empty)")
    return records


def check_disjoint(train: list[CorpusRecord], dev: list[CorpusRecord]) -> None:
    """The dev split must share neither ids nor texts with the training split."""
    shared_ids = {r.id for r in train} & {r.id for r in dev}
    shared_texts = {r.text.strip() for r in train} & {r.text.strip() for r in dev}
    if shared_ids or shared_texts:
        raise ConfigError(
            f"train and dev overlap: {len(shared_ids)} ids {sorted(shared_ids)[:5]}, "
            f"{len(shared_texts)} texts {sorted(shared_texts)[:3]}"
        )
