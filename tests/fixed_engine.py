"""A second engine kind for tests: its probabilities per text are written in its config.

Evaluation and the registry must work for any engine through the contract of
``triage.engines`` (``load_engine``, ``Engine``); this engine gives hand-checkable predictions
and proves that nothing is specific to the linear engine. Tests make ``load_engine`` know it
with the ``fixed_engine_kind`` fixture (conftest.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triage.models.linear import CONFIG_FILE, FloatArray, HeadSpec
from triage.pipeline import HEADS
from triage.taxonomy import load_taxonomy
from triage.training.corpus import prepare_text
from triage.training.train import label_sets


class FixedEngine:
    """Looks up each text's probabilities; a text it does not know is an error."""

    engine = "fixed"

    def __init__(
        self,
        heads: dict[str, HeadSpec],
        table: dict[str, dict[str, list[float]]],
        meta: dict[str, Any],
    ):
        self.heads = heads
        self.table = table
        self.meta = meta

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        return {
            head: np.array([self.table[t][head] for t in texts], np.float32).reshape(
                len(texts), len(spec.labels)
            )
            for head, spec in self.heads.items()
        }

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(json.dumps(self.table, sort_keys=True).encode()).hexdigest()
        self.meta["version"] = digest[:12]
        config = {
            "engine": self.engine,
            **self.meta,
            "heads": {
                h: {"labels": s.labels, "activation": s.activation} for h, s in self.heads.items()
            },
            "table": self.table,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False), "utf-8")
        (directory / "README.md").write_text(f"# {self.name} (fixed engine)\n", "utf-8")
        return directory

    @classmethod
    def load(cls, directory: Path) -> FixedEngine:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        heads = {h: HeadSpec(**spec) for h, spec in config.pop("heads").items()}
        table = config.pop("table")
        config.pop("engine")
        return cls(heads, table, config)


def peaked(labels: list[str], label: str, probability: float) -> list[float]:
    """``probability`` on ``label``, the rest spread evenly over the other labels."""
    rest = (1.0 - probability) / (len(labels) - 1)
    return [probability if x == label else rest for x in labels]


def save_fixed_model(
    directory: Path,
    predictions: dict[str, dict[str, tuple[str, float]]],
    name: str = "fixed-test",
    meta: dict[str, Any] | None = None,
) -> Path:
    """A fixed-engine model over the packaged taxonomy: for each text, each head's predicted
    label and its probability (for complaint: the probability of "yes")."""
    taxonomy = load_taxonomy()
    labels = {head: label_sets(taxonomy)[head] for head in HEADS}
    table = {}
    for text, heads in predictions.items():
        row = {h: peaked(labels[h], *heads[h]) for h in ("topic", "sentiment", "urgency")}
        row["complaint"] = [1.0 - heads["complaint"][1], heads["complaint"][1]]
        table[prepare_text(text)] = row
    specs = {
        head: HeadSpec(values, "sigmoid" if head == "complaint" else "softmax")
        for head, values in labels.items()
    }
    return FixedEngine(specs, table, {"name": name, **(meta or {})}).save(directory)
