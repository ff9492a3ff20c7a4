"""The ensemble engine: weights fitted on dev, blending, saving and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from triage.cli import main
from triage.engines import load_engine
from triage.errors import ConfigError
from triage.models.ensemble import EnsembleEngine, chosen_setting, ensemble_heads, weight_grid
from triage.models.linear import HeadSpec, LinearEngine
from triage.models.transformer import TransformerEngine
from triage.pipeline import TriagePipeline
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, prepare_text, seed_corpus_path


@pytest.fixture(scope="module")
def untrained_transformer_dir(
    tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny transformer with random heads: a deliberately poor ensemble member, with a
    polarity head the linear member lacks."""
    taxonomy = load_taxonomy()
    heads = {
        "topic": HeadSpec(taxonomy.topic_ids, "softmax"),
        "sentiment": HeadSpec(taxonomy.sentiments, "softmax"),
        "urgency": HeadSpec(taxonomy.urgency_ids, "softmax"),
        "complaint": HeadSpec(["no", "yes"], "softmax"),
        "polarity": HeadSpec(["negative", "positive"], "softmax"),
    }
    engine = TransformerEngine.from_pretrained(str(tiny_encoder_dir), heads)
    return engine.save(tmp_path_factory.mktemp("members") / "transformer")


@pytest.fixture(scope="module")
def dev_texts_and_gold() -> tuple[list[str], dict[str, list[int]]]:
    taxonomy = load_taxonomy()
    dev = load_corpus(seed_corpus_path("dev"), taxonomy)[::4]
    gold = {
        "topic": [taxonomy.topic_ids.index(r.topic) for r in dev],
        "complaint": [int(r.is_complaint) for r in dev],
    }
    return [prepare_text(r.text) for r in dev], gold


def test_weight_grid_sums_to_one() -> None:
    grid = weight_grid(3, step=0.25)
    assert all(abs(sum(w) - 1) < 1e-9 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.25, 0.25, 0.5) in grid and len(grid) == 15


def test_accuracy_criterion_lets_log_loss_decide_within_one_standard_error() -> None:
    # One message more out of 100 (0.81 against 0.80) is inside the standard error (0.039):
    # the better-calibrated setting is kept. Out of 668, 0.85 against 0.70 is not.
    assert chosen_setting([0.80, 0.81, 0.75], [0.5, 0.9, 0.4], 100, "accuracy") == 0
    assert chosen_setting([0.70, 0.85], [0.5, 0.9], 668, "accuracy") == 1
    assert chosen_setting([0.70, 0.85], [0.5, 0.9], 668, "log_loss") == 0


def test_weights_favour_the_better_member(
    small_model_dir: Path,
    untrained_transformer_dir: Path,
    dev_texts_and_gold: tuple[list[str], dict[str, list[int]]],
) -> None:
    texts, gold = dev_texts_and_gold
    members = {
        "linear": load_engine(small_model_dir),
        "transformer": load_engine(untrained_transformer_dir),
    }
    ensemble = EnsembleEngine.fit(members, texts, gold)
    assert ensemble.weights["topic"]["linear"] > 0.5
    assert ensemble.weights["polarity"] == {"transformer": 1.0}  # the only member with it
    for head, weights in ensemble.weights.items():
        assert abs(sum(weights.values()) - 1) < 1e-6, head
    report = ensemble.meta["weight_fit"]["topic"]
    alone = report["linear_alone"]["dev_accuracy"]
    assert report["dev_accuracy"] >= alone - (alone * (1 - alone) / len(texts)) ** 0.5
    by_loss = EnsembleEngine.fit(members, texts, gold, criterion="log_loss")
    assert by_loss.weights["topic"]["linear"] > 0.5
    loss_report = by_loss.meta["weight_fit"]["topic"]
    assert loss_report["dev_log_loss"] <= loss_report["linear_alone"]["dev_log_loss"]
    probs = ensemble.predict_proba(texts[:5])
    parts = {name: m.predict_proba(texts[:5]) for name, m in members.items()}
    expected = sum(w * parts[name]["topic"] for name, w in ensemble.weights["topic"].items())
    np.testing.assert_allclose(probs["topic"], expected, atol=1e-6)


def test_save_load_round_trip_gives_identical_outputs(
    small_model_dir: Path, untrained_transformer_dir: Path, tmp_path: Path
) -> None:
    members = {
        "linear": load_engine(small_model_dir),
        "transformer": load_engine(untrained_transformer_dir),
    }
    # Equal weights among the members that have each head (the linear model alone has a
    # situation head, the transformer alone a polarity head).
    weights = {
        head: {name: 1.0 / len(owners) for name in owners}
        for head in ensemble_heads(members)
        for owners in [[name for name, m in members.items() if head in m.heads]]
    }
    ensemble = EnsembleEngine(members, weights, {"name": "blend"})
    saved = ensemble.save(tmp_path / "ensemble")
    loaded = load_engine(saved)
    assert isinstance(loaded, EnsembleEngine)
    assert isinstance(loaded.members["linear"], LinearEngine)
    assert (saved / "linear" / "config.json").is_file()
    assert (saved / "transformer" / "encoder" / "model.safetensors").is_file()
    texts = ["快递三天了还没到", "退款到账了，谢谢"]
    for head, probs in ensemble.predict_proba(texts).items():
        np.testing.assert_array_equal(loaded.predict_proba(texts)[head], probs)
    assert loaded.version == ensemble.version and loaded.name == "blend"


def test_weights_must_cover_every_member_of_a_head(
    small_model_dir: Path, untrained_transformer_dir: Path
) -> None:
    members = {
        "linear": load_engine(small_model_dir),
        "transformer": load_engine(untrained_transformer_dir),
    }
    with pytest.raises(ConfigError, match=r"weights\.topic: expected weights for members"):
        EnsembleEngine(members, {"topic": {"linear": 1.0}})


def test_cli_trains_an_ensemble_the_pipeline_runs(
    small_model_dir: Path, untrained_transformer_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ensemble"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--engine",
            "ensemble",
            "--member",
            f"linear={small_model_dir}",
            "--member",
            f"transformer={untrained_transformer_dir}",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "weights topic: linear" in result.output and "macro-F1" in result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["engine"] == "ensemble" and set(config["members"]) == {"linear", "transformer"}
    assert "thresholds" in config and "dev" in config["metrics"]
    triaged = TriagePipeline.from_directory(out).triage_one("快递三天了还没到")
    assert triaged.model.engine == "ensemble"


def test_cli_rejects_a_malformed_member(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["train", "--engine", "ensemble", "--member", "linear", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "NAME=MODEL_DIR" in result.output and "'linear'" in result.output
