"""Dev-set metrics of the default model, per head, against the release targets.

Trains the default model (``train_linear`` with default arguments) into a temporary directory,
or loads ``--model-dir``, and scores the full pipeline (model and cues) on the seed dev split.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    add_linear_option,
    markdown_table,
    seed_corpus,
    trained_default_model,
    verdict,
    write_result,
)

from triage.engines import Engine, load_engine
from triage.evaluate import evaluate_pipeline
from triage.pipeline import TriagePipeline
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord, load_corpus, seed_corpus_path

TARGETS = {"topic macro-F1": 0.85, "P1 recall": 0.95, "complaint F1": 0.92}


def measure(model_dir: Path, dev_path: Path) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` on ``dev_path``."""
    taxonomy = load_taxonomy()
    return measure_engine(load_engine(model_dir), load_corpus(dev_path, taxonomy))


def measure_engine(engine: Engine, records: Sequence[CorpusRecord]) -> dict[str, Any]:
    """Evaluate an engine through the full pipeline (model and cues) on labeled records."""
    metrics = evaluate_pipeline(TriagePipeline(engine), records)
    return {
        "heads": {
            head: {key: metrics[head][key] for key in ("accuracy", "macro_f1", "ece")}
            for head in ("topic", "sentiment", "urgency", "complaint")
        },
        "key": {
            "topic macro-F1": metrics["topic"]["macro_f1"],
            "P1 recall": metrics["urgency"]["per_class"]["P1"]["recall"],
            "P1 support": metrics["urgency"]["per_class"]["P1"]["support"],
            "P1 precision": metrics["urgency"]["per_class"]["P1"]["precision"],
            "complaint F1": metrics["complaint"]["per_class"]["yes"]["f1"],
        },
        "needs_review_rate": metrics["needs_review_rate"],
        "n": metrics["topic"]["n"],
        "full": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="evaluate this model instead of training")
    parser.add_argument("--dev", type=Path, default=seed_corpus_path("dev"), help="dev JSONL")
    add_linear_option(parser)
    args = parser.parse_args()

    train_seconds = None
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = Path(tmp) / "default"
            train_seconds = round(trained_default_model(model_dir, args.linear), 1)
        result = measure(model_dir, args.dev)

    print(f"dev set: {args.dev} ({result['n']} messages)")
    print(f"seed corpus: {seed_corpus()}")
    if train_seconds is not None:
        overrides = f", LinearConfig overrides {args.linear}" if args.linear else ""
        print(
            f"training (train_linear defaults{overrides}, incl. threshold tuning): "
            f"{train_seconds} s\n"
        )
    print(
        markdown_table(
            ["head", "accuracy", "macro-F1", "ECE"],
            [[h, m["accuracy"], m["macro_f1"], m["ece"]] for h, m in result["heads"].items()],
        )
    )
    print()
    key = result["key"]
    rows = [
        [
            name if name != "P1 recall" else f"P1 recall (support {key['P1 support']})",
            key[name],
            target,
            verdict(key[name], target),
        ]
        for name, target in TARGETS.items()
    ]
    rows.append(["P1 precision", key["P1 precision"], "-", "-"])
    rows.append(["needs_review rate", result["needs_review_rate"], "-", "-"])
    print(markdown_table(["metric", "value", "target", "status"], rows))
    path = write_result(
        "dev_metrics_overrides" if args.linear else "dev_metrics",
        {
            "dev_path": str(args.dev),
            "model_dir": str(args.model_dir) if args.model_dir else None,
            "train_seconds": train_seconds,
            "linear_config_overrides": args.linear or {},
            "targets": TARGETS,
            **result,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
