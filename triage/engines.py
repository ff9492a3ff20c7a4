"""What the pipeline needs from a model engine, and loading any saved engine by its config."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from triage.errors import ModelError
from triage.models.linear import CONFIG_FILE, FloatArray, HeadSpec

# engine name in config.json -> "module:class"; modules are imported only when such a model is
# loaded, so the default linear service never imports torch.
ENGINE_CLASSES = {
    "linear": "triage.models.linear:LinearEngine",
    "transformer": "triage.models.transformer:TransformerEngine",
    "ensemble": "triage.models.ensemble:EnsembleEngine",
}


class Engine(Protocol):
    """A model with named heads; ``predict_proba`` is the only call that runs it."""

    engine: str
    heads: dict[str, HeadSpec]
    meta: dict[str, Any]

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]: ...


def engine_kind(directory: Path) -> str:
    """The ``engine`` field of a saved model's config, with errors that name the file."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"{directory}: not a triage model directory ({CONFIG_FILE} missing)")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path}: unreadable ({exc})") from exc
    kind = saved.get("engine") if isinstance(saved, dict) else None
    if kind not in ENGINE_CLASSES:
        raise ModelError(
            f"{config_path}: engine: expected one of {sorted(ENGINE_CLASSES)} (got {kind!r})"
        )
    return str(kind)


def load_engine(directory: Path) -> Engine:
    """Load a saved model of any engine kind."""
    module_name, class_name = ENGINE_CLASSES[engine_kind(directory)].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"{directory}: a {engine_kind(directory)!r} model needs optional dependencies "
            f"that are not installed ({exc}); install triage[transformer]"
        ) from exc
    engine: Engine = getattr(module, class_name).load(directory)
    return engine
