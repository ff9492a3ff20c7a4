"""Agents' corrections as training data: one corpus record per corrected customer message, in the
format of ``training/corpus.py``, with the masked text the model saw (never the raw text)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from triage.errors import ConfigError, InputError
from triage.store.database import Database
from triage.store.models import Feedback, Ticket, TicketMessage
from triage.taxonomy import Taxonomy
from triage.training.corpus import CorpusRecord


def feedback_records(
    database: Database, taxonomy: Taxonomy, default_channel: str = "chat"
) -> list[CorpusRecord]:
    """The latest correction of every corrected message, oldest message first. Tickets that
    came without a channel get ``default_channel``."""
    if default_channel not in taxonomy.channels:
        raise ConfigError(
            f"default channel: expected one of {taxonomy.channels} (got {default_channel!r})"
        )
    latest: dict[int, CorpusRecord] = {}
    with database.transaction() as session:
        rows = session.execute(
            select(Feedback, TicketMessage.masked_text, Ticket.channel)
            .join(TicketMessage, Feedback.message_id == TicketMessage.id)
            .join(Ticket, Feedback.ticket_id == Ticket.id)
            .order_by(Feedback.created_at, Feedback.id)
        )
        for feedback, text, channel in rows:
            latest[feedback.message_id] = CorpusRecord(
                id=f"feedback-{feedback.message_id}",
                text=text,
                channel=channel or default_channel,
                **feedback.labels,
            )
    return [latest[message_id] for message_id in sorted(latest)]


def write_records(records: list[CorpusRecord], out: Path) -> None:
    """Write corpus records as JSON lines (UTF-8, one record a line)."""
    lines = [json.dumps(r.model_dump(), ensure_ascii=False) for r in records]
    try:
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{out}: cannot be written ({exc.strerror or exc})") from exc
