"""Shared fixtures: a small model trained in about a second from part of the seed corpus."""

from __future__ import annotations

import json
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
