"""Checks that depend on settings and the taxonomy, so they cannot live in the request models.

They run over every item before any is triaged, and each problem names where it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from triage.api.errors import ApiError, describe_loc
from triage.api.schemas import ErrorDetail
from triage.config import Settings
from triage.schemas import Message
from triage.taxonomy import Taxonomy


def check_batch_size(count: int, settings: Settings) -> None:
    if count > settings.max_batch_items:
        raise ApiError(
            422,
            "too_many_items",
            f"a batch holds at most {settings.max_batch_items} items (got {count})",
            [ErrorDetail(loc=["body", "items"], msg="too many items", type="too_many_items")],
        )


def check_messages(
    messages: Sequence[Message], settings: Settings, taxonomy: Taxonomy, *, batch: bool
) -> None:
    """Raise one :class:`ApiError` listing every unusable item; its code is the first problem's."""
    details: list[ErrorDetail] = []
    for index, message in enumerate(messages):
        where: list[str | int] = ["body", "items", index] if batch else ["body"]
        length = len(message.text)
        if not message.text.strip():
            details.append(
                ErrorDetail(loc=[*where, "text"], msg="empty or whitespace only", type="empty_text")
            )
        elif length > settings.max_text_length:
            details.append(
                ErrorDetail(
                    loc=[*where, "text"],
                    msg=f"{length} characters; the limit is {settings.max_text_length}",
                    type="text_too_long",
                )
            )
        if message.channel is not None and message.channel not in taxonomy.channels:
            details.append(
                ErrorDetail(
                    loc=[*where, "channel"],
                    msg=f"{message.channel!r} is not one of {taxonomy.channels}",
                    type="invalid_channel",
                )
            )
    if details:
        first = details[0]
        more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
        raise ApiError(422, first.type, f"{describe_loc(first.loc)}: {first.msg}{more}", details)
