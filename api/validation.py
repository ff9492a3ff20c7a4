"""Checks that depend on settings and the taxonomy, so they cannot live in the request models.

They run over every item before any is triaged, and each problem names where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from triage.api.errors import ApiError, describe_loc
from triage.api.schemas import ErrorDetail
from triage.config import Settings
from triage.errors import InputError
from triage.pii import mask_pii
from triage.pipeline import Prepared, TriagePipeline
from triage.schemas import Message
from triage.taxonomy import Taxonomy
from triage.text import normalize


def check_batch_size(count: int, settings: Settings) -> None:
    if count > settings.max_batch_items:
        raise ApiError(
            422,
            "too_many_items",
            f"a batch holds at most {settings.max_batch_items} items (got {count})",
            [ErrorDetail(loc=["body", "items"], msg="too many items", type="too_many_items")],
        )


def check_messages(
    messages: Sequence[Message],
    settings: Settings,
    taxonomy: Taxonomy,
    *,
    batch: bool,
    text_field: str = "text",
) -> None:
    """Raise one :class:`ApiError` listing every unusable item; its code is the first problem's.
    ``text_field`` names the request field the text came from (``message`` for a draft check)."""
    details: list[ErrorDetail] = []
    for index, message in enumerate(messages):
        where: list[str | int] = ["body", "items", index] if batch else ["body"]
        length = len(message.text)
        if not message.text.strip():
            details.append(
                ErrorDetail(
                    loc=[*where, text_field], msg="empty or whitespace only", type="empty_text"
                )
            )
        elif length > settings.max_text_length:
            details.append(
                ErrorDetail(
                    loc=[*where, text_field],
                    msg=f"{length} characters; the limit is {settings.max_text_length}",
                    type="text_too_long",
                )
            )
        details += _unknown(taxonomy, "channel", message.channel, [*where, "channel"])
        if message.customer is not None:
            customer_at = [*where, "customer"]
            details += _unknown(taxonomy, "tier", message.customer.tier, [*customer_at, "tier"])
            details += _personal_id(message.customer.id, [*customer_at, "id"])
    _raise_for(details)


def check_draft_request(draft: str, channel: str | None, taxonomy: Taxonomy) -> None:
    """An agent's draft must keep some text once markup is removed; its channel must exist."""
    details = _unknown(taxonomy, "channel", channel, ["body", "channel"])
    if not normalize(draft):
        details.insert(0, _empty(["body", "draft"]))
    _raise_for(details)


def prepare_batch(pipeline: TriagePipeline, messages: Sequence[Message]) -> list[Prepared]:
    """Every item prepared for the model; items that normalising leaves unusable (markup or
    invisible characters only) are all named by their index, as :func:`check_messages` does."""
    prepared, details = [], []
    for index, message in enumerate(messages):
        try:
            prepared.append(pipeline.preprocess(message))
        except InputError as error:
            details.append(
                ErrorDetail(loc=["body", "items", index, "text"], msg=str(error), type=error.code)
            )
    _raise_for(details)
    return prepared


def empty_after_markup(field: str = "text") -> ApiError:
    """The error of a single message whose text normalising leaves empty."""
    detail = _empty(["body", field])
    return ApiError(422, detail.type, f"{describe_loc(detail.loc)}: {detail.msg}", [detail])


def _empty(loc: list[str | int]) -> ErrorDetail:
    return ErrorDetail(
        loc=loc, msg="empty or whitespace only (after removing markup)", type="empty_text"
    )


def _unknown(
    taxonomy: Taxonomy, field: Literal["channel", "tier"], value: str | None, loc: list[str | int]
) -> list[ErrorDetail]:
    problem = taxonomy.unknown(field, value)
    return [ErrorDetail(loc=loc, msg=problem, type=f"invalid_{field}")] if problem else []


# An identifier that is wholly one of these is personal data; a long number that merely passes
# the card checksum (one in ten does) may be any system's id.
_PERSONAL_IDS = {"PHONE": "a phone number", "EMAIL": "an e-mail address", "ID": "a resident ID"}


def _personal_id(value: str | None, loc: list[str | int]) -> list[ErrorDetail]:
    """A customer id is stored and returned as given, so one that is itself a phone number,
    e-mail address or resident ID number is refused: the service keeps no personal data
    unmasked."""
    if value is None:
        return []
    text = normalize(value)
    spans = mask_pii(text).spans
    if len(spans) != 1 or spans[0].kind not in _PERSONAL_IDS:
        return []
    if (spans[0].start, spans[0].end) != (0, len(text)):
        return []
    msg = f"{_PERSONAL_IDS[spans[0].kind]} is personal data: send an opaque id instead"
    return [ErrorDetail(loc=loc, msg=msg, type="personal_data_in_id")]


def _raise_for(details: list[ErrorDetail]) -> None:
    """One :class:`ApiError` listing every problem; its code is the first problem's."""
    if details:
        first = details[0]
        more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
        raise ApiError(422, first.type, f"{describe_loc(first.loc)}: {first.msg}{more}", details)
