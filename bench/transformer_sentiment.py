"""Binary sentiment accuracy of the transformer engine and of the linear + transformer ensemble
on the two shared review sets (the 80/20 split of ``bench/sentiment_shared.py``).

For each CSV in ``../shared/datasets`` (or ``$TRIAGE_SHARED_DATASETS``): the train split is cut
again 80/20 (seed 1, as the linear sweep does) into fit and validation rows. On the fit rows the
script trains a transformer with one sentiment head (``--base-model``, heads only by default;
``--fine-tune`` trains the whole encoder, early-stopped on validation) and the linear engine
(default ``LinearConfig``). The ensemble weights are fitted on the validation rows. Reported on
the test split: transformer alone, linear (fit rows; and the full train split, as in
``sentiment_shared.py``) and ensemble. Targets: transformer ≥ the n-gram baseline (0.910 waimai,
0.891 ChnSentiCorp), ensemble ≥ 0.915 on both.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import markdown_table, shared_datasets_dir, verdict, write_result
from sentiment_shared import LABELS, Rows, accuracy, fit_sentiment, load_split
from sklearn.model_selection import train_test_split

from triage.models.ensemble import CRITERIA, EnsembleEngine
from triage.models.linear import HeadSpec, LinearConfig
from triage.training.corpus import prepare_text
from triage.training.transformer import (
    MultiTaskRows,
    Trainer,
    TransformerTrainArguments,
    new_engine,
)

DEFAULT_BASE_MODEL = os.environ.get("TRIAGE_E5_DIR", "/work/cache/e5-small-hf")
BASELINE = {"waimai_10k.csv": 0.910, "ChnSentiCorp_htl_all.csv": 0.891}
ENSEMBLE_TARGET = 0.915
HEADS = {"sentiment": HeadSpec(LABELS, "softmax")}


def transformer_rows(rows: Rows) -> MultiTaskRows:
    return MultiTaskRows.from_labels(
        [prepare_text(text) for text, _ in rows],
        {"sentiment": [LABELS[label] for _, label in rows]},
        {"sentiment": LABELS},
    )


def train_transformer(args: argparse.Namespace, fit: Rows, validation: Rows, out: Path) -> Any:
    arguments = TransformerTrainArguments(
        out_dir=out,
        base_model=args.base_model,
        dev_path=None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        max_length=args.max_length,
        freeze_encoder=not args.fine_tune,
        # Heads-only epochs take seconds: checkpoints would cost more than they save.
        checkpoint_every_epochs=1 if args.fine_tune else 0,
        early_stopping_patience=args.patience,
        text_prefix=args.text_prefix,
        progress=not args.no_progress,
    )
    engine = new_engine(arguments, HEADS)
    texts = [prepare_text(text) for text, _ in validation]
    gold = np.array([label for _, label in validation])

    def evaluate(model: Any) -> tuple[float, dict[str, float]]:
        predicted = model.predict_proba(texts)["sentiment"].argmax(axis=1)
        score = float(np.mean(predicted == gold))
        return score, {"validation_accuracy": score}

    trainer = Trainer(engine, transformer_rows(fit), arguments, evaluate=evaluate, log=print)
    result = trainer.fit()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--fine-tune", action="store_true", help="train the encoder too")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--head-learning-rate", type=float, default=3e-3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--text-prefix", default="query: ")
    parser.add_argument("--ensemble-criterion", default="accuracy", choices=CRITERIA)
    parser.add_argument("--datasets", nargs="+", default=list(BASELINE), choices=list(BASELINE))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=Path("bench/results/sentiment-models"))
    args = parser.parse_args()

    root = shared_datasets_dir()
    results: dict[str, Any] = {}
    for name in args.datasets:
        path = root / name
        if not path.is_file():
            print(f"skipped: {path} not found")
            continue
        print(f"{name}:", flush=True)
        train, test = load_split(path)
        fit, validation = train_test_split(
            train, test_size=0.2, random_state=1, stratify=[y for _, y in train]
        )
        started = time.perf_counter()
        outcome = train_transformer(args, fit, validation, args.work_dir / name)
        transformer = outcome.evaluated
        transformer_seconds = time.perf_counter() - started
        linear = fit_sentiment(LinearConfig(), fit)
        linear_full = fit_sentiment(LinearConfig(), train)
        ensemble = EnsembleEngine.fit(
            {"linear": linear, "transformer": transformer},
            [prepare_text(text) for text, _ in validation],
            {"sentiment": [label for _, label in validation]},
            criterion=args.ensemble_criterion,
        )
        row = {
            "train": len(train),
            "fit": len(fit),
            "validation": len(validation),
            "test": len(test),
            "transformer_test_accuracy": round(accuracy(transformer, test), 4),
            "linear_fit_rows_test_accuracy": round(accuracy(linear, test), 4),
            "linear_full_train_test_accuracy": round(accuracy(linear_full, test), 4),
            "ensemble_test_accuracy": round(accuracy(ensemble, test), 4),
            "ensemble_weights": ensemble.weights["sentiment"],
            "transformer_history": outcome.state.history,
            "transformer_seconds": round(transformer_seconds, 1),
            "peak_memory_mib": round(outcome.peak_memory_mib),
        }
        results[name] = row
        print({k: v for k, v in row.items() if k != "transformer_history"}, flush=True)

    if not results:
        return
    table = []
    for name, r in results.items():
        table.append(
            [
                name,
                r["linear_full_train_test_accuracy"],
                r["transformer_test_accuracy"],
                verdict(r["transformer_test_accuracy"], BASELINE[name]),
                r["ensemble_test_accuracy"],
                verdict(r["ensemble_test_accuracy"], ENSEMBLE_TARGET),
                r["ensemble_weights"]["transformer"],
            ]
        )
    print(
        markdown_table(
            ["dataset", "linear", "transformer", "≥ baseline", "ensemble", "≥ 0.915", "w(tr)"],
            table,
        )
    )
    out = write_result(
        "transformer_sentiment_finetuned" if args.fine_tune else "transformer_sentiment",
        {
            "base_model": args.base_model,
            "fine_tune": args.fine_tune,
            "ensemble_criterion": args.ensemble_criterion,
            "results": results,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
