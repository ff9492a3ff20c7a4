"""Model cards: a README.md written beside every saved model."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

_LIBRARIES = (
    "triage",
    "numpy",
    "scikit-learn",
    "scipy",
    "jieba",
    "OpenCC",
    "safetensors",
    "torch",
    "transformers",
    "tokenizers",
    "onnxruntime",
)


class MetaIdentity:
    """``name`` and ``version`` of an engine, read from its ``meta`` (``save`` sets the
    version from the weights, so an unsaved engine says so)."""

    meta: dict[str, Any]
    default_name = "triage-model"

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.default_name))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unsaved"))


def readable_as_umask_allows(path: Path) -> None:
    """Give a file the mode a plain new file gets: safetensors' ``save_file`` creates it
    readable by its owner only, which hides a model's weights from a service account."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def non_default_fields(config: Any) -> dict[str, Any]:
    """The fields of a dataclass config that differ from its defaults: what a card lists."""
    default = type(config)()
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def library_versions(names: Sequence[str] = _LIBRARIES) -> dict[str, str]:
    """Versions of the libraries a model was built with, for the card and the config."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _table(rows: list[tuple[str, str]]) -> str:
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


DEFAULT_FILES = (
    "`config.json` (this card's source), `model.safetensors` (weights). No pickle is used."
)


def write_model_card(directory: Path, config: dict[str, Any], files: str = DEFAULT_FILES) -> Path:
    """Render ``config`` (labels, data summary, hyperparameters, metrics) as a Markdown card."""
    heads = config.get("heads", {})
    sections = [
        f"# {config['name']} ({config['engine']} engine), version {config['version']}",
        "Triage model for Chinese customer messages, produced by the `triage` library.",
        "## Labels",
        "\n".join(f"- **{head}**: {', '.join(spec['labels'])}" for head, spec in heads.items()),
        "## Training data",
        "```json\n" + json.dumps(config.get("data", {}), ensure_ascii=False, indent=2) + "\n```",
        "## Hyperparameters (non-default values)",
        _table(
            [(k, json.dumps(v)) for k, v in config.get("non_default_hyperparameters", {}).items()]
        )
        or "none",
        "## Metrics",
        "```json\n" + json.dumps(config.get("metrics", {}), ensure_ascii=False, indent=2) + "\n```",
        "## Review thresholds",
        "```json\n" + json.dumps(config.get("thresholds", {}), indent=2) + "\n```",
        "## Library versions",
        _table(sorted(config.get("library_versions", {}).items())),
        "## Files",
        files,
    ]
    path = directory / "README.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path
