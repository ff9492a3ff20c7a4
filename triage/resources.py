"""Loading of the YAML/JSON data files that hold every label set, lexicon and rule.

Validation errors name the file, the key path and what was expected, so that a person editing a
deployment's configuration can fix it without reading the code.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from triage.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def compilable_patterns(patterns: list[str]) -> list[str]:
    """Validator for lists of regular expressions in data files: each must compile."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {pattern!r} ({exc})") from exc
    return patterns


def packaged_data_path(name: str) -> Path:
    """Path of a data file shipped inside the ``triage.data`` package."""
    return Path(str(resources.files("triage.data").joinpath(name)))


def read_structured_file(path: Path) -> Any:
    """Parse a YAML or JSON file, mapping parser errors to :class:`ConfigError`."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        if path.suffix == ".json":
            return json.loads(raw)
        return yaml.safe_load(raw)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc


def describe_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: ``source: key.path: message (got value)``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        lines.append(f"{source}: {key}: {item['msg']} (got {shown})")
    return "\n".join(lines)


def validate_data(source: str, data: Any, schema: type[ModelT]) -> ModelT:
    """Validate parsed data against a schema, raising :class:`ConfigError` with precise lines."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc)) from exc


def load_data_file(path: Path, schema: type[ModelT]) -> ModelT:
    """Read and validate one configuration file."""
    return validate_data(str(path), read_structured_file(path), schema)


def load_jsonl_records(
    path: Path,
    model: type[ModelT],
    problems_of: Callable[[ModelT], Iterable[str]],
    keep: Callable[[ModelT], bool] = lambda _: True,
) -> list[ModelT]:
    """Every non-blank line of a JSON-lines file validated as ``model`` (which has an ``id``),
    skipping those ``keep`` rejects. All problems, ``problems_of`` each record and duplicate ids
    included, are reported together as ``file:line: key: ...`` in one :class:`ConfigError`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    records: list[ModelT] = []
    problems: list[str] = []
    seen = Counter[str]()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = model.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        except ValidationError as exc:
            problems.append(describe_validation_error(where, exc))
            continue
        if not keep(record):
            continue
        problems += [f"{where}: {problem}" for problem in problems_of(record)]
        record_id = str(getattr(record, "id"))  # noqa: B009 (any model with an id field)
        seen[record_id] += 1
        if seen[record_id] == 2:
            problems.append(f"{where}: id: expected unique ids (got duplicate {record_id!r})")
        records.append(record)
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise ConfigError("\n".join(shown))
    return records
