"""The model registry: a directory of saved model versions and a state file naming the promoted
one, with who promoted it, when and why.

Layout::

    <registry_dir>/
      registry.json                      state: versions, promoted version, promotion history
      triage-linear-default-93d93922b1ef/  one saved model per version: <name>-<version>
      ...

Versions are added by copying (or moving) a saved model directory into a staging directory
inside the registry and renaming it into place, so a version directory is always complete.
Every change of the state file takes an exclusive lock, rewrites a temporary file and renames it
over the old one: readers never see a half-written file and concurrent writers never lose an
update. Any engine works: a model is loaded through :func:`triage.engines.load_engine` once,
when it is registered, to check it and read its name, version and engine kind.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from triage.engines import load_engine
from triage.errors import ModelError
from triage.models.linear import CONFIG_FILE
from triage.resources import load_data_file

STATE_FILE = "registry.json"
LOCK_FILE = ".lock"
CARD_FILE = "README.md"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_user() -> str:
    """Who is acting, for the promotion record; 'unknown' where the system cannot tell."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class VersionRecord(BaseModel):
    """What the registry keeps about one version (the model itself is its directory)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    engine: str
    created: str = Field(description="when the model was trained (else registered), ISO 8601")
    registered_at: str
    registered_by: str
    source: str = Field(
        description="the directory it was copied from, or 'trained into the registry'"
    )


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="id of the promoted version: <name>-<version>")
    by: str
    at: str
    reason: str


class RegistryState(BaseModel):
    """The content of ``registry.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    versions: dict[str, VersionRecord] = Field(default_factory=dict)
    promoted: Promotion | None = None
    history: list[Promotion] = Field(default_factory=list)

    @model_validator(mode="after")
    def _promoted_is_registered(self) -> RegistryState:
        if self.promoted is not None and self.promoted.version not in self.versions:
            raise ValueError(
                f"promoted.version {self.promoted.version!r} is not one of the registered "
                f"versions {sorted(self.versions)}"
            )
        return self


def dev_metrics_summary(config: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Accuracy, macro-F1 (and ECE when measured) per head from a saved model's dev metrics;
    heads without accuracy and macro-F1 are left out, and a model saved without dev metrics
    gives an empty summary."""
    metrics = config.get("metrics")
    dev = metrics.get("dev") if isinstance(metrics, dict) else None
    summary: dict[str, dict[str, float]] = {}
    for head, value in dev.items() if isinstance(dev, dict) else ():
        if not isinstance(value, dict):
            continue
        numbers = {
            key: float(value[key])
            for key in ("accuracy", "macro_f1", "ece")
            if isinstance(value.get(key), int | float)
        }
        if {"accuracy", "macro_f1"} <= numbers.keys():
            summary[head] = numbers
    return summary


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as listed and shown."""

    id: str
    record: VersionRecord
    path: Path
    promoted: bool

    def config(self) -> dict[str, Any]:
        """The model's saved config.json (empty when it cannot be read)."""
        try:
            saved = json.loads((self.path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    @property
    def card(self) -> Path | None:
        card = self.path / CARD_FILE
        return card if card.is_file() else None

    def describe(self) -> dict[str, Any]:
        """The listing fields: identity, engine, dates, dev metrics, promoted marker."""
        return {
            "id": self.id,
            "name": self.record.name,
            "version": self.record.version,
            "engine": self.record.engine,
            "created": self.record.created,
            "promoted": self.promoted,
            "metrics": dev_metrics_summary(self.config()),
        }


@dataclass(frozen=True)
class Registration:
    version: ModelVersion
    added: bool  # False when the same name and version were registered already


class ModelRegistry:
    """Versions in ``root``; creating the object touches no file."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def state(self) -> RegistryState:
        """The state file, validated; an absent file is an empty registry."""
        if not self.state_path.is_file():
            return RegistryState()
        return load_data_file(self.state_path, RegistryState)

    def _version(self, state: RegistryState, version_id: str) -> ModelVersion:
        promoted = state.promoted is not None and state.promoted.version == version_id
        return ModelVersion(
            version_id, state.versions[version_id], self.root / version_id, promoted
        )

    def versions(self) -> list[ModelVersion]:
        """All versions, oldest first."""
        state = self.state()
        ordered = sorted(state.versions, key=lambda v: (state.versions[v].created, v))
        return [self._version(state, version_id) for version_id in ordered]

    def promoted(self) -> ModelVersion | None:
        state = self.state()
        return None if state.promoted is None else self._version(state, state.promoted.version)

    def _find(self, state: RegistryState, reference: str) -> str:
        """The id named by ``reference``: a version id, or a version shared by one id only."""
        if reference in state.versions:
            return reference
        matches = [v for v, record in state.versions.items() if record.version == reference]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(sorted(state.versions)) or "none, the registry is empty"
        if matches:
            raise ModelError(
                f"model version {reference!r} is ambiguous in {self.root}: "
                f"name one of {', '.join(sorted(matches))}"
            )
        raise ModelError(
            f"unknown model version {reference!r} in {self.root}; known versions: {known}"
        )

    def get(self, reference: str) -> ModelVersion:
        """A version by id (``<name>-<version>``) or by version alone when that is unique."""
        state = self.state()
        return self._version(state, self._find(state, reference))

    @contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """Maps file-system failures (permissions, a full disk) to :class:`ModelError`."""
        try:
            yield
        except OSError as exc:
            raise ModelError(f"{self.root}: cannot {action} ({exc.strerror or exc})") from exc

    @contextmanager
    def _locked(self) -> Iterator[RegistryState]:
        """The current state under an exclusive lock; a changed state is saved atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.state()
                before = state.model_dump()
                yield state
                if state.model_dump() != before:
                    self._save(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, state: RegistryState) -> None:
        handle, temporary = tempfile.mkstemp(prefix=".registry-", suffix=".json", dir=self.root)
        try:
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a service user
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(json.dumps(state.model_dump(), ensure_ascii=False, indent=2) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.state_path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch directory inside the registry, on the same file system as the versions,
        so that :meth:`register` with ``move=True`` only renames it; removed afterwards."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def register(
        self,
        model_dir: Path,
        *,
        move: bool = False,
        promote_reason: str | None = None,
        by: str | None = None,
    ) -> Registration:
        """Add the saved model in ``model_dir`` as version ``<name>-<version>``: copied, or
        moved when it was saved into :meth:`staging`. With ``promote_reason`` it is also
        promoted, in the same change of the state file."""
        engine = load_engine(model_dir)
        version_id = f"{engine.name}-{engine.version}"
        if not _SAFE_ID.match(version_id):
            raise ModelError(
                f"{model_dir}: model name and version {version_id!r} cannot name a registry "
                "version (expected letters, digits, '.', '_' or '-')"
            )
        config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        with self._writing(f"register {model_dir}"), self.staging() as scratch:
            copy = scratch / "model"
            if move:
                model_dir.rename(copy)
            else:
                shutil.copytree(model_dir, copy)
            with self._locked() as state:
                added = version_id not in state.versions
                if added:
                    target = self.root / version_id
                    if target.exists():  # left by an interrupted registration
                        shutil.rmtree(target)
                    copy.rename(target)
                    registered_at = _now()
                    state.versions[version_id] = VersionRecord(
                        name=engine.name,
                        version=engine.version,
                        engine=engine.engine,
                        created=str(config.get("trained_at") or registered_at),
                        registered_at=registered_at,
                        registered_by=by or current_user(),
                        source="trained into the registry" if move else str(model_dir.resolve()),
                    )
                if promote_reason is not None:
                    self._promote(state, version_id, promote_reason, by)
                return Registration(self._version(state, version_id), added)

    def promote(self, reference: str, reason: str, by: str | None = None) -> ModelVersion:
        """Make a registered version the one the service, classify and batch load."""
        with self._writing(f"promote {reference!r}"), self._locked() as state:
            version_id = self._find(state, reference)
            self._promote(state, version_id, reason, by)
            return self._version(state, version_id)

    @staticmethod
    def _promote(state: RegistryState, version_id: str, reason: str, by: str | None) -> None:
        promotion = Promotion(version=version_id, by=by or current_user(), at=_now(), reason=reason)
        state.promoted = promotion
        state.history.append(promotion)
