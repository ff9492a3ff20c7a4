"""The polarity-blend trade-off: our own dev messages against public reviews, out of domain.

For each value of ``Thresholds.polarity_blend`` the shipped pipeline (default model, trained
into a temporary directory unless ``--model-dir`` is given) is scored on the seed dev split
(sentiment macro-F1, 3 classes) and on the test splits of the shared review sets (binary
accuracy, positive when P(positive) > P(negative)). The shared sets are skipped, with a
message, when absent. The shipped value is 0.5 (docs/model.md explains the choice).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from common import (
    markdown_table,
    model_dir_or_default,
    shared_datasets_dir,
    write_result,
)
from sentiment_shared import DATASETS, load_split, shipped_accuracy

from triage.evaluate import evaluate_pipeline
from triage.pipeline import TriagePipeline
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path

BLENDS = (0.0, 0.3, 0.5, 0.7, 1.0)


def sweep(model_dir: Path) -> list[dict[str, Any]]:
    taxonomy = load_taxonomy()
    pipeline = TriagePipeline.from_directory(model_dir, taxonomy=taxonomy)
    dev = load_corpus(seed_corpus_path("dev"), taxonomy)
    root = shared_datasets_dir()
    splits = {name: load_split(root / name)[1] for name in DATASETS if (root / name).is_file()}
    for name in DATASETS:
        if name not in splits:
            print(f"skipped: {root / name} not found")
    shipped = pipeline.thresholds
    rows = []
    for blend in BLENDS:
        pipeline.thresholds = dataclasses.replace(shipped, polarity_blend=blend)
        row: dict[str, Any] = {
            "polarity_blend": blend,
            "dev_sentiment_macro_f1": evaluate_pipeline(pipeline, dev)["sentiment"]["macro_f1"],
        }
        for name, test in splits.items():
            row[name] = round(shipped_accuracy(pipeline, test), 4)
        rows.append(row)
        print(row, flush=True)
    pipeline.thresholds = shipped
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model to sweep (trained when omitted)")
    args = parser.parse_args()
    with model_dir_or_default(args.model_dir) as model_dir:
        rows = sweep(model_dir)
    header = list(rows[0])
    print()
    print(markdown_table(header, [[row[key] for key in header] for row in rows]))
    print(f"\nwrote {write_result('sentiment_blend', {'rows': rows})}")


if __name__ == "__main__":
    main()
