"""The labeled corpus format: JSON lines validated against the taxonomy in use."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from triage.errors import ConfigError
from triage.pii import mask_pii
from triage.resources import load_jsonl_records
from triage.taxonomy import Taxonomy
from triage.text import normalize


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
    records = load_jsonl_records(
        path, CorpusRecord, lambda record: _label_problems(record, taxonomy)
    )
    if not records:
        raise ConfigError(f"{path}: expected at least one record (the file is empty)")
    return records


def prepare_text(text: str) -> str:
    """The text a model learns from: the same normal, masked form the pipeline produces."""
    return mask_pii(normalize(text)).text


def overlap_key(text: str) -> str:
    """What two texts share when the model sees the same message (spaces aside)."""
    return "".join(prepare_text(text).split())


def check_disjoint(train: list[CorpusRecord], dev: list[CorpusRecord]) -> None:
    """The dev split must share neither ids nor texts with the training split; texts are
    compared as the model sees them and without spaces, so a copy that differs only in width,
    script, markup, spacing or personal data counts too."""
    shared_ids = {r.id for r in train} & {r.id for r in dev}
    dev_texts = {overlap_key(r.text): r.text for r in dev}
    shared_texts = {dev_texts[k] for k in (overlap_key(r.text) for r in train) if k in dev_texts}
    if shared_ids or shared_texts:
        raise ConfigError(
            f"train and dev overlap: {len(shared_ids)} ids {sorted(shared_ids)[:5]}, "
            f"{len(shared_texts)} texts {sorted(shared_texts)[:3]}"
        )
