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


class TextTooLongError(InputError):
    """The message is longer than the configured limit."""

    code = "text_too_long"
