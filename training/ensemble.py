"""Building an ensemble from trained members: weights and thresholds fitted on dev."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from triage.engines import load_engine
from triage.errors import ConfigError
from triage.models.ensemble import CRITERIA, EnsembleEngine
from triage.models.linear import CONFIG_FILE
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, prepare_text, seed_corpus_path
from triage.training.train import Log, TrainReport, finish_training

DEFAULT_MODEL_NAME = "triage-ensemble"


@dataclass(frozen=True)
class EnsembleTrainArguments:
    """Members (saved model directories, by member name) and the dev set to fit weights on."""

    out_dir: Path
    members: dict[str, Path]
    dev_path: Path = field(default_factory=lambda: seed_corpus_path("dev"))
    # The label taxonomy the corpus is checked against and the heads learn (None: packaged).
    taxonomy_path: Path | None = None
    model_name: str = DEFAULT_MODEL_NAME
    criterion: str = "accuracy"  # or "log_loss"; see models/ensemble.py

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ConfigError(
                f"EnsembleTrainArguments.members: expected at least two models "
                f"(got {sorted(self.members)})"
            )
        for name, path in self.members.items():
            if not (Path(path) / CONFIG_FILE).is_file():
                raise ConfigError(
                    f"EnsembleTrainArguments.members.{name}: expected a saved model directory "
                    f"(got {str(path)!r}, no {CONFIG_FILE})"
                )
        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"EnsembleTrainArguments.criterion: expected one of {CRITERIA} "
                f"(got {self.criterion!r})"
            )
        if not Path(self.dev_path).is_file():
            raise ConfigError(
                f"EnsembleTrainArguments.dev_path: expected an existing file "
                f"(got {str(self.dev_path)!r})"
            )


def train_ensemble(args: EnsembleTrainArguments, log: Log = lambda _: None) -> TrainReport:
    """Fit per-head weights on dev, tune thresholds on dev, save members and ensemble."""
    started = time.perf_counter()
    taxonomy = load_taxonomy(args.taxonomy_path)
    dev = load_corpus(Path(args.dev_path), taxonomy)
    members = {name: load_engine(Path(path)) for name, path in args.members.items()}
    log(f"members: {', '.join(f'{n} ({m.engine}, {m.version})' for n, m in members.items())}")
    gold = {
        "topic": [taxonomy.topic_ids.index(r.topic) for r in dev],
        "sentiment": [taxonomy.sentiments.index(r.sentiment) for r in dev],
        "urgency": [taxonomy.urgency_ids.index(r.urgency) for r in dev],
        "complaint": [int(r.is_complaint) for r in dev],
    }
    engine = EnsembleEngine.fit(
        members, [prepare_text(r.text) for r in dev], gold, criterion=args.criterion
    )
    for head, weights in engine.weights.items():
        log(f"weights {head}: " + ", ".join(f"{n} {w:.2f}" for n, w in weights.items()))
    data = {
        "dev_file": Path(args.dev_path).name,
        "dev_messages": len(dev),
        "members": {name: str(path) for name, path in args.members.items()},
        # The members' training files, so that evaluating on one of them is warned of.
        "train_file_sha256": sorted(
            {
                digest
                for member in members.values()
                for digest in member.meta.get("data", {}).get("train_file_sha256", [])
            }
        ),
    }
    return finish_training(
        engine,
        out_dir=args.out_dir,
        model_name=args.model_name,
        dev=dev,
        taxonomy=taxonomy,
        data=data,
        started=started,
        log=log,
        tune_p1_threshold=True,  # a blend's P1 probabilities are none of its members'
    )
