"""The model registry: register, list, show and promote through the CLI; atomic, concurrent-safe
state; which model the service, classify and batch load; GET /v1/models."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import triage.service
from tests.conftest import read_jsonl
from tests.fixed_engine import save_fixed_model
from triage.api.app import create_app
from triage.api.deps import get_registry
from triage.batch import BatchOptions, run_batch
from triage.cli import main
from triage.config import Settings
from triage.errors import ConfigError, ModelError
from triage.models.linear import CONFIG_FILE
from triage.pipeline import TriagePipeline
from triage.registry import STATE_FILE, ModelRegistry
from triage.service import FIRST_START_REASON, load_pipeline, resolve_model_dir
from triage.serving import Supervisor
from triage.training.corpus import seed_corpus_path

TEXT = "快递到哪里了"
DEV_METRICS = {
    "topic": {"accuracy": 0.9, "macro_f1": 0.88, "ece": 0.04},
    "sentiment": {"accuracy": 0.8, "macro_f1": 0.75},
    "needs_review_rate": 0.1,
}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def registry(isolated_registry: Path) -> ModelRegistry:
    return ModelRegistry(isolated_registry)


@pytest.fixture
def fixed_model(tmp_path: Path, fixed_engine_kind: str) -> Path:
    """A non-linear model that carries dev metrics and a training date in its config."""
    prediction = {
        "topic": ("logistics", 0.9),
        "sentiment": ("neutral", 0.8),
        "urgency": ("P3", 0.7),
        "complaint": ("no", 0.1),
    }
    return save_fixed_model(
        tmp_path / "fixed",
        {TEXT: prediction},
        name="fixed-test",
        meta={"metrics": {"dev": DEV_METRICS}, "trained_at": "2030-01-02T03:04:05+00:00"},
    )


def version_id(model_dir: Path) -> str:
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    return f"{config['name']}-{config['version']}"


def renamed_copy(model_dir: Path, name: str, parent: Path) -> Path:
    """The same model (same version) saved under another name."""
    copy = parent / name
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / CONFIG_FILE).read_text(encoding="utf-8"))
    (copy / CONFIG_FILE).write_text(json.dumps({**config, "name": name}), encoding="utf-8")
    return copy


def test_register_list_show_promote(runner, registry, small_model_dir, fixed_model):
    linear_id, fixed_id = version_id(small_model_dir), version_id(fixed_model)
    empty = runner.invoke(main, ["models", "list"])
    assert empty.exit_code == 0 and "no versions in" in empty.stdout

    for model in (small_model_dir, fixed_model):
        added = runner.invoke(main, ["models", "register", str(model)])
        assert added.exit_code == 0, added.output
        assert f"promote with  triage models promote {version_id(model)}" in added.stdout
    again = runner.invoke(main, ["models", "register", str(fixed_model)])
    assert f"registered    {fixed_id} (already in the registry)" in again.stdout
    assert (registry.root / fixed_id / CONFIG_FILE).is_file()
    assert (small_model_dir / CONFIG_FILE).is_file()  # copied, not moved

    listed = json.loads(runner.invoke(main, ["models", "list", "--json"]).stdout)
    assert [v["id"] for v in listed] == [linear_id, fixed_id]  # the fixed one is newer
    assert listed[1] == {
        "id": fixed_id,
        "name": "fixed-test",
        "version": fixed_id.rsplit("-", 1)[1],
        "engine": "fixed",
        "created": "2030-01-02T03:04:05+00:00",
        "promoted": False,
        "metrics": {
            "topic": {"accuracy": 0.9, "macro_f1": 0.88, "ece": 0.04},
            "sentiment": {"accuracy": 0.8, "macro_f1": 0.75},
        },
    }
    assert listed[0]["metrics"] == {}  # saved without dev metrics

    promoted = runner.invoke(main, ["models", "promote", fixed_id.rsplit("-", 1)[1]])
    assert promoted.exit_code == 0, promoted.output
    assert promoted.stdout.startswith(f"promoted {fixed_id};")
    table = runner.invoke(main, ["models", "list"]).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "VERSION", "ENGINE", "CREATED", "TOPIC", "F1", "SENTIMENT", "F1",
        "URGENCY", "F1", "COMPLAINT", "F1",
    ]  # fmt: skip
    fixed_row = next(line for line in table if "fixed-test" in line)
    assert fixed_row.startswith("*") and fixed_row.split()[-4:] == ["0.880", "0.750", "-", "-"]
    assert not next(line for line in table if linear_id.rsplit("-", 1)[1] in line).startswith("*")
    assert "promoted by " in table[-1] and "promoted with triage models promote" in table[-1]

    switched = runner.invoke(main, ["models", "promote", linear_id, "--reason", "rollback"])
    assert f"promoted {linear_id} (was {fixed_id})" in switched.stdout
    shown = runner.invoke(main, ["models", "show", linear_id])
    assert shown.exit_code == 0, shown.output
    lines = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line[:1] != " ")
    assert lines["engine"] == "linear"
    assert lines["promoted"].startswith("yes, by ") and lines["promoted"].endswith("(rollback)")
    assert lines["model"] == f"card    {registry.root / linear_id / 'README.md'}"
    details = json.loads(runner.invoke(main, ["models", "show", fixed_id, "--json"]).stdout)
    assert details["promoted"] is False and details["promotion"] is None
    assert details["registered"]["source"] == str(fixed_model.resolve())
    assert [p.reason for p in registry.state().history] == [
        "promoted with triage models promote",
        "rollback",
    ]


def test_unknown_version_lists_the_known_ones(runner, registry, small_model_dir):
    registry.register(small_model_dir)
    result = runner.invoke(main, ["models", "promote", "v9"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: unknown model version 'v9' in {registry.root}; "
        f"known versions: {version_id(small_model_dir)}"
    )
    shown = runner.invoke(main, ["models", "show", "v9"])
    assert shown.exit_code == 2 and "known versions" in shown.stderr
    assert registry.state().promoted is None


def test_a_version_shared_by_two_names_must_be_named_in_full(registry, small_model_dir, tmp_path):
    registry.register(small_model_dir)
    registry.register(renamed_copy(small_model_dir, "other-name", tmp_path))
    version = version_id(small_model_dir).rsplit("-", 1)[1]
    with pytest.raises(ModelError, match="is ambiguous"):
        registry.get(version)
    assert registry.get(f"other-name-{version}").record.name == "other-name"


def test_an_unwritable_registry_is_an_error_not_a_traceback(runner, registry, small_model_dir):
    registry.root.rmdir()
    registry.root.write_text("a file where the registry should be", encoding="utf-8")
    result = runner.invoke(main, ["models", "register", str(small_model_dir)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {registry.root}: cannot register {small_model_dir}")


def test_a_broken_model_is_not_registered(runner, registry, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CONFIG_FILE).write_text('{"engine": "linear"}', encoding="utf-8")
    result = runner.invoke(main, ["models", "register", str(tmp_path / "broken")])
    assert result.exit_code == 2 and "model.safetensors missing" in result.stderr
    assert registry.versions() == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"versions": {"m-1": {"name": "m"}}}', "versions.m-1.version: Field required"),
        ('{"promoted": {"version": "x", "by": "a", "at": "b", "reason": "c"}}', "promoted.version"),
    ],
)
def test_a_corrupt_state_file_is_named_with_the_key(runner, registry, content, expected):
    registry.root.mkdir(parents=True, exist_ok=True)
    registry.state_path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected) as caught:
        registry.versions()
    assert str(caught.value).startswith(str(registry.state_path))
    listed = runner.invoke(main, ["models", "list"])
    assert listed.exit_code == 2 and str(registry.state_path) in listed.stderr


def test_concurrent_promotions_and_registrations_lose_no_update(
    registry, small_model_dir, fixed_model, tmp_path
):
    versions = [version_id(small_model_dir), version_id(fixed_model)]
    registry.register(small_model_dir)
    registry.register(fixed_model)
    copies = [renamed_copy(fixed_model, f"copy-{i}", tmp_path) for i in range(6)]
    errors: list[BaseException] = []

    def register_and_promote(worker: int) -> None:
        try:
            registry.register(copies[worker])
            for step in range(10):
                registry.promote(versions[(worker + step) % 2], f"worker {worker}")
        except BaseException as exc:  # a thread cannot fail the test: collected, checked below
            errors.append(exc)

    threads = [threading.Thread(target=register_and_promote, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    state = registry.state()  # parses: never half-written
    assert len(state.history) == 60
    assert set(state.versions) == {*versions, *(version_id(copy) for copy in copies)}
    assert state.promoted == state.history[-1]
    leftovers = [
        p.name for p in registry.root.iterdir() if p.name.startswith(".") and p.name != ".lock"
    ]
    assert leftovers == []


def settings_for(registry: ModelRegistry, **overrides) -> Settings:
    return Settings(registry_dir=registry.root, **overrides)


def test_explicit_model_dir_wins_over_the_registry(registry, small_model_dir, fixed_model):
    registry.register(fixed_model, promote_reason="test")
    assert resolve_model_dir(settings_for(registry)) == registry.root / version_id(fixed_model)
    explicit = settings_for(registry, model_dir=small_model_dir)
    assert resolve_model_dir(explicit) == small_model_dir


def test_fresh_machine_trains_the_default_into_the_registry_and_promotes_it(
    registry, small_model_dir, monkeypatch
):
    trained: list[Path] = []

    def fake_training(out_dir: Path) -> None:  # the real one trains the full model (a minute)
        trained.append(out_dir)
        shutil.copytree(small_model_dir, out_dir)

    monkeypatch.setattr(triage.service, "_train_default", fake_training)
    pipeline = load_pipeline(settings_for(registry))
    assert len(trained) == 1 and not trained[0].exists()  # moved into place
    (promoted,) = registry.versions()
    assert promoted.promoted and promoted.id == version_id(small_model_dir)
    assert registry.state().promoted.reason == FIRST_START_REASON
    assert promoted.record.source == "trained into the registry"
    assert pipeline.model_info.version == promoted.record.version
    load_pipeline(settings_for(registry))  # the second start loads it
    assert len(trained) == 1


def test_versions_without_a_promoted_one_are_an_error_not_a_reason_to_train(
    registry, small_model_dir
):
    registry.register(small_model_dir)
    with pytest.raises(ModelError, match="has no promoted version: run `triage models promote"):
        resolve_model_dir(settings_for(registry))


def test_empty_registry_without_training_is_an_error(registry):
    with pytest.raises(ModelError, match="is empty"):
        resolve_model_dir(settings_for(registry, train_if_missing=False))


def test_classify_and_batch_use_the_promoted_model(
    runner, registry, tmp_path, small_model_dir, fixed_model
):
    registry.register(small_model_dir)
    registry.register(fixed_model, promote_reason="test")
    fixed_version = version_id(fixed_model).rsplit("-", 1)[1]
    classified = runner.invoke(main, ["classify", TEXT, "--json"])
    assert classified.exit_code == 0, classified.output
    assert json.loads(classified.stdout)["model"]["version"] == fixed_version

    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"id": "1", "text": TEXT}, ensure_ascii=False) + "\n", "utf-8")
    result = runner.invoke(main, ["batch", str(source), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [r["model"]["version"] for r in read_jsonl(out)] == [fixed_version]


def test_batch_workers_load_the_model_chosen_at_the_start(
    registry, tmp_path, small_model_dir, fixed_model, monkeypatch
):
    """A promotion while a batch starts must not give its workers another model."""
    registry.register(small_model_dir, promote_reason="test")
    registry.register(fixed_model)
    pinned: list[Settings] = []

    def load_then_promote(settings: Settings) -> TriagePipeline:
        pinned.append(settings)
        pipeline = load_pipeline(settings)
        registry.promote(version_id(fixed_model), "promoted meanwhile")
        return pipeline

    monkeypatch.setattr("triage.batch.load_pipeline", load_then_promote)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"id": "1", "text": TEXT}, ensure_ascii=False) + "\n", "utf-8")
    run_batch(source, out, settings_for(registry), BatchOptions(progress=False))
    (settings,) = pinned
    assert settings.model_dir == registry.root / version_id(small_model_dir)
    assert settings.train_if_missing is False


def test_serve_workers_all_get_the_promoted_model(runner, registry, small_model_dir, monkeypatch):
    registry.register(small_model_dir, promote_reason="test")
    supervised: list[Supervisor] = []
    monkeypatch.setattr(Supervisor, "run", lambda self: supervised.append(self))
    for name in ("TRIAGE_HOST", "TRIAGE_PORT"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(main, ["serve", "--workers", "2"])
    assert result.exit_code == 0, result.output
    (supervisor,) = supervised
    assert supervisor.workers == 2
    assert os.environ["TRIAGE_MODEL_DIR"] == str(registry.root / version_id(small_model_dir))


def test_train_without_out_adds_a_version_and_promotes_it(
    runner, registry, small_train_file, tmp_path
):
    dev = tmp_path / "dev.jsonl"
    dev_lines = seed_corpus_path("dev").read_text(encoding="utf-8").splitlines(keepends=True)
    dev.write_text("".join(dev_lines[:60]), encoding="utf-8")
    args = ["train", "--data", str(small_train_file), "--dev", str(dev), "--no-review-corpus"]
    result = runner.invoke(main, [*args, "--promote"])
    assert result.exit_code == 0, result.output
    (version,) = registry.versions()
    assert f"model         {version.path}" in result.stdout
    assert f"registered    {version.id}\npromoted      yes" in result.stdout
    assert version.promoted and version.record.source == "trained into the registry"
    assert registry.state().promoted.reason == "triage train --promote"
    topic = version.describe()["metrics"]["topic"]  # dev metrics saved by training, with ECE
    assert set(topic) == {"accuracy", "macro_f1", "ece"} and 0.0 <= topic["ece"] <= 1.0
    assert [p.name for p in registry.root.iterdir() if p.name.startswith(".staging")] == []


@pytest.fixture
def served_registry(
    registry: ModelRegistry, small_model_dir: Path, fixed_model: Path
) -> ModelRegistry:
    registry.register(small_model_dir, promote_reason="test")
    registry.register(fixed_model)
    return registry


@pytest.fixture
def client(served_registry: ModelRegistry) -> Iterator[TestClient]:
    app = create_app(settings_for(served_registry, train_if_missing=False))
    with TestClient(app) as test_client:
        yield test_client


def test_api_lists_versions_and_marks_the_served_one(
    client, served_registry, small_model_dir, fixed_model
):
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    linear_version = version_id(small_model_dir).rsplit("-", 1)[1]
    assert body["serving"] == {
        "name": "triage-linear-default",
        "version": linear_version,
        "engine": "linear",
    }
    by_id = {m["id"]: m for m in body["models"]}
    linear, fixed = by_id[version_id(small_model_dir)], by_id[version_id(fixed_model)]
    assert (linear["promoted"], linear["serving"]) == (True, True)
    assert (fixed["promoted"], fixed["serving"], fixed["engine"]) == (False, False, "fixed")
    assert fixed["metrics"]["topic"] == {"accuracy": 0.9, "macro_f1": 0.88, "ece": 0.04}
    assert fixed["metrics"]["sentiment"]["ece"] is None
    # Promoting changes the marker at once; the served model changes on restart only.
    served_registry.promote(fixed["id"], "test")
    after = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert after[fixed["id"]]["promoted"] and after[linear["id"]]["serving"]


def test_api_models_while_no_model_is_loaded(served_registry, tmp_path):
    settings = settings_for(served_registry, model_dir=tmp_path / "none", train_if_missing=False)
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/models").json()
    assert body["serving"] is None and not any(m["serving"] for m in body["models"])
    assert len(body["models"]) == 2


def test_api_corrupt_registry_is_a_500_without_paths(client, tmp_path):
    broken = ModelRegistry(tmp_path / "broken")
    broken.root.mkdir()
    (broken.root / STATE_FILE).write_text("[]", encoding="utf-8")
    client.app.dependency_overrides[get_registry] = lambda: broken
    try:
        response = client.get("/v1/models")
    finally:
        client.app.dependency_overrides.clear()
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "invalid_config"
    assert str(tmp_path) not in response.text
