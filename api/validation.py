"""Checks that depend on settings and the taxonomy, so they cannot live in the request models.

They run over every item before any is triaged, and each problem names where it is.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        details += _channel_problems(message.channel, taxonomy, where)
        details += _customer_problems(message, taxonomy, where)
    _raise_for(details)


def check_draft_request(draft: str, channel: str | None, taxonomy: Taxonomy) -> None:
    """An agent's draft must keep some text once markup is removed; its channel must exist."""
    details = _channel_problems(channel, taxonomy, ["body"])
    if not normalize(draft):
        details.insert(
            0,
            ErrorDetail(
                loc=["body", "draft"],
                msg="empty or whitespace only (after removing markup)",
                type="empty_text",
            ),
        )
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


def _channel_problems(
    channel: str | None, taxonomy: Taxonomy, where: list[str | int]
) -> list[ErrorDetail]:
    if channel is None or channel in taxonomy.channels:
        return []
    return [
        ErrorDetail(
            loc=[*where, "channel"],
            msg=f"{channel!r} is not one of {taxonomy.channels}",
            type="invalid_channel",
        )
    ]


def _customer_problems(
    message: Message, taxonomy: Taxonomy, where: list[str | int]
) -> list[ErrorDetail]:
    """A tier the taxonomy does not know, and a customer id that is personal data (it would be
    stored and returned as given: the service promises to keep no personal data unmasked)."""
    customer = message.customer
    if customer is None:
        return []
    problems = []
    if customer.tier is not None and customer.tier not in taxonomy.customer_tiers:
        problems.append(
            ErrorDetail(
                loc=[*where, "customer", "tier"],
                msg=f"{customer.tier!r} is not one of {taxonomy.customer_tiers}",
                type="invalid_tier",
            )
        )
    if customer.id is not None:
        found = mask_pii(normalize(customer.id)).spans
        if found:
            kinds = sorted({span.kind for span in found})
            problems.append(
                ErrorDetail(
                    loc=[*where, "customer", "id"],
                    msg=f"looks like personal data ({', '.join(kinds)}); send an opaque id",
                    type="personal_data_in_id",
                )
            )
    return problems


def _raise_for(details: list[ErrorDetail]) -> None:
    """One :class:`ApiError` listing every problem; its code is the first problem's."""
    if details:
        first = details[0]
        more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
        raise ApiError(422, first.type, f"{describe_loc(first.loc)}: {first.msg}{more}", details)
