"""Situation labels: which reply situation of the template bank fits each labeled complaint.

One JSON object per line, ``{"id", "topic", "situation", "acceptable", "note"?}``: the message's
topic, the (topic's) situation a person judged best or ``"none"`` when the bank has no fitting
one (``note`` then names the missing situation), and other situations that fit as well. They
train the ``situation`` head of the linear engine (the acceptable ones with a lower weight),
together with the bank's own example messages.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from triage.errors import ConfigError
from triage.models.linear import HeadData
from triage.replies import TemplateBank, load_template_bank, situation_label
from triage.resources import load_jsonl_records
from triage.taxonomy import Taxonomy
from triage.training.corpus import CorpusRecord

NO_SITUATION = "none"
# The weight of a labeled message's row for each of its acceptable situations (its labeled
# situation has weight 1): chosen out of fold on the training split (bench/situation_weights.py).
ACCEPTABLE_WEIGHT = 0.5


class SituationLabel(BaseModel):
    """A person's judgment of the reply situation that fits one corpus message."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(min_length=1)
    topic: str
    situation: str = Field(pattern=r"^[a-z_]+$")
    acceptable: list[str] = Field(default_factory=list)
    note: str | None = None

    @property
    def fitting(self) -> set[str]:
        """Every situation a draft may have and still fit the message."""
        return {self.situation, *self.acceptable} - {NO_SITUATION}


def seed_situations_path() -> Path:
    """The packaged situation labels of the seed training split."""
    root = resources.files("triage.training").joinpath("data", "seed", "train_situations.jsonl")
    return Path(str(root))


def _problems(
    label: SituationLabel, bank: dict[str, set[str]], records: dict[str, CorpusRecord] | None
) -> Iterable[str]:
    situations = bank.get(label.topic)
    if situations is None:
        yield f"topic: expected a topic of the template bank {sorted(bank)} (got {label.topic!r})"
        return
    if label.situation != NO_SITUATION and label.situation not in situations:
        yield (
            f"situation: expected {NO_SITUATION!r} or a situation of {label.topic} "
            f"{sorted(situations)} (got {label.situation!r})"
        )
    for index, other in enumerate(label.acceptable):
        if other not in situations or other == label.situation:
            yield (
                f"acceptable.{index}: expected another situation of {label.topic} "
                f"{sorted(situations - {label.situation})} (got {other!r})"
            )
    if records is not None:
        record = records.get(label.id)
        if record is None:
            yield f"id: expected the id of a corpus message (got {label.id!r})"
        elif record.topic != label.topic:
            yield f"topic: expected the message's topic {record.topic!r} (got {label.topic!r})"


def load_situation_labels(
    path: Path,
    bank: TemplateBank,
    records: Sequence[CorpusRecord] | None = None,
    *,
    partial: bool = False,
) -> list[SituationLabel]:
    """Read and validate a label file against the bank and, when given, the corpus: each label
    must name one of its messages, with the same topic. With ``partial`` (training on part of a
    corpus) labels of other messages are dropped instead. Every problem is reported as
    ``file:line: key: expected ... (got ...)``."""
    known: dict[str, set[str]] = {}
    for topic, situation in bank.situations():
        known.setdefault(topic, set()).add(situation)
    by_id = None if records is None else {r.id: r for r in records}
    return load_jsonl_records(
        path,
        SituationLabel,
        lambda label: _problems(label, known, by_id),
        keep=lambda label: not (partial and by_id is not None and label.id not in by_id),
    )


def situation_head_labels(bank: TemplateBank) -> list[str]:
    """The situation head's labels: every (topic, situation) of the bank."""
    return [situation_label(topic, situation) for topic, situation in bank.situations()]


def situation_head_data(
    records: Sequence[CorpusRecord],
    texts: Sequence[str],
    labels: Sequence[SituationLabel],
    bank: TemplateBank,
    prepare: Callable[[str], str],
    acceptable_weight: float = ACCEPTABLE_WEIGHT,
) -> HeadData:
    """Rows of the situation head: the labeled messages that have a situation (once more, with
    ``acceptable_weight``, for each acceptable situation), the messages of topics with a single
    situation in the bank (nothing to judge there), and every example message of the bank (made
    ready for the model by ``prepare``, as ``texts`` were)."""
    by_id = {label.id: label for label in labels}
    situations_of = Counter(topic for topic, _ in bank.situations())
    only_situation = {topic: s for topic, s in bank.situations() if situations_of[topic] == 1}
    rows: list[tuple[str, str, float]] = []
    for record, text in zip(records, texts, strict=True):
        label = by_id.get(record.id)
        if label is not None:
            if label.situation != NO_SITUATION:
                rows.append((text, situation_label(label.topic, label.situation), 1.0))
                if acceptable_weight > 0:
                    rows += [
                        (text, situation_label(label.topic, other), acceptable_weight)
                        for other in label.acceptable
                    ]
        elif record.topic in only_situation:
            rows.append((text, situation_label(record.topic, only_situation[record.topic]), 1.0))
    rows += [
        (prepare(example), situation_label(t.topic, t.situation), 1.0)
        for t in bank.templates
        for example in t.examples
    ]
    return HeadData(
        [text for text, _, _ in rows],
        [label for _, label, _ in rows],
        [weight for _, _, weight in rows],
    )


def _labels_any(path: Path, ids: set[str]) -> bool:
    """Whether a label file names any of these messages (a line that is not a JSON object is
    left to the full, validating read)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the situation labels ({exc.strerror})") from exc
    for line in filter(str.strip, lines):
        try:
            label = json.loads(line)
        except ValueError:
            return True
        if not isinstance(label, dict) or label.get("id") in ids:
            return True
    return False


def situation_head(
    path: Path,
    records: Sequence[CorpusRecord],
    texts: Sequence[str],
    taxonomy: Taxonomy,
    prepare: Callable[[str], str],
    log: Callable[[str], None],
    bank_dir: Path | None = None,
) -> tuple[HeadData, list[str]] | None:
    """Rows and labels of the situation head, from the labels of the training messages in
    ``path`` and the bank in ``bank_dir`` (None: the packaged one); None when no training
    message is labeled there. The bank is read only then, so that a corpus of another
    taxonomy, without situation labels, trains without a bank of its own."""
    labels = []
    if _labels_any(path, {r.id for r in records}):
        try:
            bank = load_template_bank(taxonomy, bank_dir)
        except ConfigError as exc:
            raise ConfigError(
                f"situation head: {exc}. It learns the situations of a reply bank that fits "
                "the taxonomy: give one (TRIAGE_REPLIES_DIR), or train without the head "
                "(triage train --no-situation-head)"
            ) from exc
        labels = load_situation_labels(path, bank, records, partial=True)
    if not labels:
        log(f"situation head: none of the training messages is labeled in {path}; not trained")
        return None
    data = situation_head_data(records, texts, labels, bank, prepare)
    log(
        f"situation head: {len(data.texts)} rows ({len(labels)} labeled messages, "
        f"{sum(label.situation == NO_SITUATION for label in labels)} of them without a "
        "situation, plus single-situation topics and the bank's examples)"
    )
    return data, situation_head_labels(bank)
