"""The ensemble engine: a weighted average of its members' probabilities, head by head.

A saved ensemble is a directory with its own ``config.json`` (members, weights per head,
thresholds, metrics), a model card, and one subfolder per member holding that member's saved
model (e.g. ``linear/`` and ``transformer/``), loadable on its own. The weights are fitted on a
dev set: for each head, among the member weights (on a grid summing to one) whose dev accuracy
lies within one standard error of the best, those with the lowest log-loss
(``criterion="accuracy"``, the default), or simply the lowest log-loss
(``criterion="log_loss"``). Log-loss alone rewards calibration: on the seed dev set it gave the
better-calibrated but less accurate e5 heads 0.75 of the topic weight and cost 6 points of topic
macro-F1 (docs/benchmarks.md, section 9). The best accuracy alone rewards chance: on 167 seed dev
messages, a chance gain in accuracy gave an untrained transformer 0.55 of the topic weight
against a linear model trained on a quarter of the seed corpus; within the standard error (about
five messages there) the lower log-loss decides.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from triage.engines import Engine, load_engine
from triage.errors import ConfigError, ModelError
from triage.models.card import MetaIdentity, library_versions, write_model_card
from triage.models.linear import CONFIG_FILE, FloatArray, HeadSpec

FORMAT_VERSION = 1
GRID_STEP = 0.05
CRITERIA = ("accuracy", "log_loss")


def ensemble_heads(members: dict[str, Engine]) -> dict[str, HeadSpec]:
    """Every member head, in first-seen order; members that share a head must agree on its
    labels. A head only some members have (e.g. the linear polarity head) comes from those."""
    heads: dict[str, HeadSpec] = {}
    for member_name, member in members.items():
        for name, spec in member.heads.items():
            known = heads.setdefault(name, HeadSpec(list(spec.labels), "softmax"))
            if known.labels != spec.labels:
                raise ConfigError(
                    f"ensemble member {member_name!r}: {name} labels {spec.labels} differ "
                    f"from another member's {known.labels}"
                )
    return heads


def log_loss(probs: FloatArray, gold: np.ndarray[Any, Any]) -> float:
    """Mean negative log-probability of the gold class."""
    picked = probs[np.arange(len(gold)), gold]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def blend(parts: Sequence[tuple[float, FloatArray]]) -> FloatArray:
    """The weighted sum of probability arrays of equal shape."""
    total = np.zeros_like(parts[0][1], dtype=np.float32)
    for weight, probs in parts:
        total += np.float32(weight) * probs
    return total


def accuracy(probs: FloatArray, gold: np.ndarray[Any, Any]) -> float:
    return float(np.mean(probs.argmax(axis=1) == gold))


def chosen_setting(
    accuracies: Sequence[float], losses: Sequence[float], n: int, criterion: str
) -> int:
    """Index of the weight setting to keep: the lowest log-loss, by ``"log_loss"``; by
    ``"accuracy"``, the lowest log-loss among the settings within one standard error of the
    best accuracy on ``n`` messages, so that a chance gain of a message or two decides nothing."""
    if criterion == "log_loss":
        return min(range(len(losses)), key=losses.__getitem__)
    best = max(accuracies)
    slack = math.sqrt(best * (1 - best) / n)
    near = [i for i, value in enumerate(accuracies) if value >= best - slack]
    return min(near, key=losses.__getitem__)


def weight_grid(n_members: int, step: float = GRID_STEP) -> list[tuple[float, ...]]:
    """Every weight vector on a grid of ``step`` whose entries sum to one."""
    units = round(1 / step)
    return [
        (*(c / units for c in combo), (units - sum(combo)) / units)
        for combo in itertools.product(range(units + 1), repeat=n_members - 1)
        if sum(combo) <= units
    ]


class EnsembleEngine(MetaIdentity):
    """Weighted average of member engines' probabilities. Members run on the same texts."""

    engine = "ensemble"
    default_name = "triage-ensemble"

    def __init__(
        self,
        members: dict[str, Engine],
        weights: dict[str, dict[str, float]],
        meta: dict[str, Any] | None = None,
    ):
        self.members = members
        self.heads = ensemble_heads(members)
        for head in self.heads:
            owners = sorted(name for name, m in members.items() if head in m.heads)
            if sorted(weights.get(head, {})) != owners:
                raise ConfigError(
                    f"ensemble weights.{head}: expected weights for members {owners} "
                    f"(got {weights.get(head)!r})"
                )
        self.weights = weights
        self.meta = dict(meta or {})

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        """Per head, the weighted average of the members' probabilities."""
        outputs = {name: member.predict_proba(texts) for name, member in self.members.items()}
        out = {}
        for head, spec in self.heads.items():
            parts = [(w, outputs[name][head]) for name, w in self.weights[head].items()]
            out[head] = (
                blend(parts) if parts else np.zeros((len(texts), len(spec.labels)), np.float32)
            )
        return out

    @classmethod
    def fit(
        cls,
        members: dict[str, Engine],
        texts: Sequence[str],
        gold: Mapping[str, Sequence[int]],
        meta: dict[str, Any] | None = None,
        criterion: str = "accuracy",
    ) -> EnsembleEngine:
        """Weights per head chosen on dev by ``criterion``; ``gold`` holds, per head, the label
        index of each text (heads without gold, or with one member, keep equal weights)."""
        if criterion not in CRITERIA:
            raise ConfigError(f"criterion: expected one of {CRITERIA} (got {criterion!r})")
        heads = ensemble_heads(members)
        outputs = {name: member.predict_proba(texts) for name, member in members.items()}
        weights: dict[str, dict[str, float]] = {}
        fit_report: dict[str, Any] = {}
        for head in heads:
            owners = [name for name in members if head in members[name].heads]
            if head not in gold or len(owners) == 1:
                weights[head] = {name: round(1 / len(owners), 4) for name in owners}
                continue
            labels = np.asarray(gold[head])
            grid = weight_grid(len(owners))
            accuracies, losses = [], []
            for ws in grid:
                mixed = blend([(w, outputs[n][head]) for w, n in zip(ws, owners, strict=True)])
                accuracies.append(accuracy(mixed, labels))
                losses.append(log_loss(mixed, labels))
            chosen = chosen_setting(accuracies, losses, len(labels), criterion)
            weights[head] = {
                name: round(w, 4) for w, name in zip(grid[chosen], owners, strict=True)
            }
            mixed = blend(
                [(w, outputs[n][head]) for w, n in zip(grid[chosen], owners, strict=True)]
            )
            fit_report[head] = {
                "criterion": criterion,
                "dev_accuracy": round(accuracy(mixed, labels), 4),
                "dev_log_loss": round(log_loss(mixed, labels), 4),
                **{
                    f"{name}_alone": {
                        "dev_accuracy": round(accuracy(outputs[name][head], labels), 4),
                        "dev_log_loss": round(log_loss(outputs[name][head], labels), 4),
                    }
                    for name in owners
                },
            }
        return cls(members, weights, {**(meta or {}), "weight_fit": fit_report})

    def save(self, directory: Path, meta: dict[str, Any] | None = None) -> Path:
        """Each member in its own subfolder, then ``config.json`` and the model card."""
        directory.mkdir(parents=True, exist_ok=True)
        versions = {}
        for name, member in self.members.items():
            save = getattr(member, "save", None)
            if save is None:
                raise ModelError(f"ensemble member {name!r} cannot be saved")
            save(directory / name)
            versions[name] = member.version
        self.meta.update(meta or {})
        digest = hashlib.sha256(json.dumps([versions, self.weights], sort_keys=True).encode())
        digest.update(json.dumps(self.meta.get("thresholds", {}), sort_keys=True).encode())
        self.meta["version"] = digest.hexdigest()[:12]
        config = {
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "name": self.name,
            **{k: v for k, v in self.meta.items() if k != "name"},
            "members": {
                name: {"engine": m.engine, "version": m.version} for name, m in self.members.items()
            },
            "weights": self.weights,
            "non_default_hyperparameters": {"weights": self.weights},
            "heads": {name: asdict(spec) for name, spec in self.heads.items()},
            "library_versions": library_versions(),
        }
        (directory / CONFIG_FILE).write_text(
            json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        members = ", ".join(f"`{name}/` ({m.engine})" for name, m in self.members.items())
        write_model_card(
            directory,
            config,
            files=f"`{CONFIG_FILE}` (this card's source, with the weights per head); "
            f"members, each a saved model with its own card: {members}. No pickle is used.",
        )
        return directory

    @classmethod
    def load(cls, directory: Path) -> EnsembleEngine:
        """Load an ensemble saved by :meth:`save`, members included."""
        config_path = directory / CONFIG_FILE
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{config_path}: unreadable ({exc})") from exc
        if not isinstance(saved, dict) or (saved.get("engine"), saved.get("format_version")) != (
            cls.engine,
            FORMAT_VERSION,
        ):
            raise ModelError(f"{config_path}: expected engine 'ensemble' format {FORMAT_VERSION}")
        try:
            members = {name: load_engine(directory / name) for name in saved["members"]}
            meta = {
                k: v
                for k, v in saved.items()
                if k
                not in {
                    "format_version",
                    "engine",
                    "members",
                    "weights",
                    "non_default_hyperparameters",
                    "heads",
                    "library_versions",
                }
            }
            return cls(members, saved["weights"], meta)
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelError(f"{config_path}: incomplete or inconsistent ({exc!r})") from exc
