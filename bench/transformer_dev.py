"""Seed dev metrics of the transformer engine against the linear engine (small-data triage).

Fine-tunes ``--base-model`` (default: the imported multilingual-e5-small checkpoint) on the
seed training split with ``train_transformer`` (dev used for early stopping and threshold
tuning, as ``triage train`` does), or evaluates ``--model-dir``; trains the default linear model
(or loads ``--linear-model-dir``); scores both through the full pipeline on the seed dev split.
Targets: transformer topic macro-F1 ≥ linear + 0.03 and P1 recall ≥ linear + 0.05.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import markdown_table, trained_default_model, verdict, write_result
from dev_metrics import measure

from triage.training.corpus import seed_corpus_path

DEFAULT_BASE_MODEL = os.environ.get("TRIAGE_E5_DIR", "/work/cache/e5-small-hf")
MARGINS = {"topic macro-F1": 0.03, "P1 recall": 0.05}


def train(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from triage.training.transformer import TransformerTrainArguments, train_transformer

    arguments = TransformerTrainArguments(
        out_dir=out_dir,
        base_model=args.base_model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        max_length=args.max_length,
        freeze_encoder=args.freeze_encoder,
        early_stopping_patience=args.patience,
        text_prefix=args.text_prefix,
        class_weighting=args.class_weighting,
        keep_checkpoints=args.keep_checkpoints,
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_epochs=args.checkpoint_every_epochs,
        resume_from=args.resume_from,
        progress=not args.no_progress,
    )
    report = train_transformer(arguments, log=lambda line: print(line, flush=True))
    return {"seconds": round(report.seconds, 1), "arguments": arguments.non_defaults()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--model-dir", type=Path, help="evaluate this transformer model")
    parser.add_argument("--out", type=Path, help="keep the trained model here")
    parser.add_argument("--linear-model-dir", type=Path, help="the linear model to compare")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--head-learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--text-prefix", default="")
    parser.add_argument("--class-weighting", default="balanced")
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--checkpoint-every-steps", type=int, default=0)
    parser.add_argument("--checkpoint-every-epochs", type=int, default=1)
    parser.add_argument("--resume-from", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--name", default="transformer_dev", help="result file name")
    args = parser.parse_args()
    dev = seed_corpus_path("dev")

    with tempfile.TemporaryDirectory(prefix="bench-transformer-") as tmp:
        training: dict[str, Any] = {}
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = args.out or Path(tmp) / "transformer"
            training = train(args, model_dir)
        import json

        saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        training.update(saved.get("training", {}))
        transformer = measure(model_dir, dev)
        linear_dir = args.linear_model_dir or Path(tmp) / "linear"
        linear_seconds = None
        if args.linear_model_dir is None:
            started = time.perf_counter()
            trained_default_model(linear_dir)
            linear_seconds = round(time.perf_counter() - started, 1)
        linear = measure(linear_dir, dev)

    rows = [
        [head, linear["heads"][head]["macro_f1"], transformer["heads"][head]["macro_f1"]]
        for head in transformer["heads"]
    ]
    print(markdown_table(["head macro-F1", "linear", "transformer"], rows))
    key_rows = []
    for name, margin in MARGINS.items():
        delta = transformer["key"][name] - linear["key"][name]
        key_rows.append(
            [
                name,
                linear["key"][name],
                transformer["key"][name],
                f"{delta:+.3f}",
                f"≥ +{margin}",
                verdict(delta, margin - 1e-9),
            ]
        )
    key_rows.append(
        [
            "complaint F1",
            linear["key"]["complaint F1"],
            transformer["key"]["complaint F1"],
            f"{transformer['key']['complaint F1'] - linear['key']['complaint F1']:+.3f}",
            "-",
            "-",
        ]
    )
    print()
    print(
        markdown_table(["metric", "linear", "transformer", "delta", "target", "status"], key_rows)
    )
    print(f"\ntransformer training: {training}")
    path = write_result(
        args.name,
        {
            "base_model": args.base_model,
            "model_dir": str(args.model_dir or args.out or ""),
            "training": training,
            "linear_train_seconds": linear_seconds,
            "transformer": transformer,
            "linear": linear,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
