"""One exception tree for the whole library; entry points map it to exit codes and HTTP errors."""

from __future__ import annotations


class TriageError(Exception):
    """Base of every error the library raises on purpose."""

    code = "triage_error"


class ConfigError(TriageError):
    """A data file (taxonomy, lexicon, templates, rules, corpus) is missing or invalid."""

    code = "invalid_config"


class InputError(TriageError):
    """A message or an input file given by the user cannot be processed."""

    code = "invalid_input"


class ModelError(TriageError):
    """A model directory is missing, incomplete or incompatible with this version."""

    code = "model_error"


class EmptyTextError(InputError):
    """The message has no text once markup and whitespace are removed."""

    code = "empty_text"


class UnknownLabelError(InputError):
    """A channel or customer tier that the taxonomy in use does not list."""

    code = "unknown_label"


class TextTooLongError(InputError):
    """The message is longer than the configured limit."""

    code = "text_too_long"


class StoreError(TriageError):
    """The ticket database cannot be reached or refused an operation."""

    code = "store_error"


class NotFoundError(TriageError):
    """A ticket, handler or message that was asked for does not exist."""

    code = "not_found"


class ConflictError(TriageError):
    """The request contradicts the current state (a full handler, a reused idempotency key)."""

    code = "conflict"


class IdempotencyKeyReusedError(ConflictError):
    """An idempotency key was sent again with a different request."""

    code = "idempotency_key_reused"


class CapacityError(ConflictError):
    """A handler cannot take a ticket: off duty or at capacity."""

    code = "handler_unavailable"


class TransitionError(ConflictError):
    """A status change that the ticket's current status does not allow."""

    code = "invalid_transition"
