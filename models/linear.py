"""The default engine: hashed character and word n-grams, TF-IDF, one linear head per task,
optionally blended with a hidden layer that several heads learn together (models/hidden.py).

Hashing keeps the saved model free of a vocabulary: the feature space is fixed by the config,
the inverse document frequencies and the head weights are the only learned arrays, and they are
stored in safetensors beside a JSON config. Only the columns a head actually uses are stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from triage.cues import CueLexicon, load_cue_lexicon_file
from triage.errors import ConfigError, ModelError
from triage.models.card import (
    MetaIdentity,
    library_versions,
    non_default_fields,
    readable_as_umask_allows,
    write_model_card,
)
from triage.models.hidden import MISSING, HiddenLayer, HiddenLayerFit
from triage.polarity import PolarityLexicon, load_polarity_lexicon
from triage.text import Segmenter, segment

FloatArray = NDArray[np.float32]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The lexicon a model's polarity features were counted with, saved beside its weights.
LEXICON_FILE = "polarity_lexicon.json"
# The urgency cue lexicon a model's cue features were counted with, saved beside its weights.
CUES_FILE = "cue_lexicon.json"
FORMAT_VERSION = 2
# Where the hidden layer's arrays are saved in the weights file.
HIDDEN_PREFIX = "hidden"
# Rows per step of the hidden layer's training.
HIDDEN_BATCH_SIZE = 64
# scikit-learn solvers that fit multinomial logistic regression on sparse rows with weights.
SOLVERS = ("newton-cg", "lbfgs", "sag", "saga")
# Solvers whose ``max_iter`` counts passes over the rows: stopping at the cap is the intended
# stopping rule, not a failure to warn about.
EPOCH_SOLVERS = ("sag", "saga")
# How a model saved before a LinearConfig field existed was trained: it loads with these.
SETTINGS_BEFORE_THEY_EXISTED: dict[str, Any] = {
    "polarity_lexicon": False,
    "cue_features": False,
    "solver": "lbfgs",
    "min_df": {},
    "naive_bayes_c": {},
    "hidden_share": {},
}


@dataclass(frozen=True)
class LinearConfig:
    """Hyperparameters of the linear engine; validated on creation."""

    char_ngram_min: int = 1
    char_ngram_max: int = 3
    word_ngram_max: int = 2
    char_features_log2: int = 19
    word_features_log2: int = 18
    segmenter: str = Segmenter.JIEBA_RS.value
    # Chosen out of fold on the training split: topic and complaint by bench/heldout_cv.py on
    # the round-21 corpus (C 32 and 16 beat 8 and 4 in each of five folds; docs/benchmarks.md
    # §1), situation by bench/situation_weights.py (§8). Urgency keeps 8 (4 and 16 lost);
    # sentiment keeps 4, which also sets the in-domain review benchmark of §2 (16 lost there).
    regularization_c: dict[str, float] = field(
        default_factory=lambda: {
            "topic": 32.0,
            "sentiment": 4.0,
            "urgency": 8.0,
            "complaint": 16.0,
            "situation": 16.0,
        }
    )
    class_weight: str | None = "balanced"
    # The solver's iteration cap: for "sag" and "saga", passes over a head's rows.
    max_iter: int = 30
    # Stochastic average gradient: the same objective as Newton-CG (session 6-10's solver),
    # approached one row at a time. 30 passes leave held-out accuracy and log-loss of every
    # head where Newton-CG's optimum has them, and fit the 73-class situation head about five
    # times faster (docs/benchmarks.md §11, session 11). With "newton-cg" or "lbfgs", raise
    # ``max_iter`` (3000 before session 11).
    solver: str = "sag"
    # Per head, the share of its training rows a column must occur in to get any weight
    # (scikit-learn's proportional ``min_df``). Set for the slow heads: on held-out training
    # rows, 0.0002 (at least 3 rows of each of the seed corpus's heads) scored as well as or
    # better than every column, and the fits run several times faster (docs/benchmarks.md,
    # "Training time"). Sets under 5,000 rows keep every column. The sentiment head (fast, and
    # the head the shared review sets measure) and the polarity head (worse on held-out rows,
    # mostly short review sentences) keep every column, as do unlisted heads. The situation
    # head, 69 classes and most of training's time, keeps only columns in 0.05 % of its rows
    # (13 of the round-26 corpus's 24,719): a third of the columns and 84 % of the non-zeros;
    # out of fold its drafts fit as often as at 0.0002 (0.752 against 0.749, within noise),
    # and training takes 2.4 times less (docs/benchmarks.md §11, session 9).
    min_df: dict[str, float] = field(
        default_factory=lambda: {
            **dict.fromkeys(("topic", "urgency", "complaint"), 2e-4),
            "situation": 5e-4,
        }
    )
    # Two extra word-block features: hits of positive and of negative words of the polarity
    # lexicon (triage/data/polarity_lexicon.yaml), negation-aware; see triage/polarity.py.
    # Models saved before this option existed load with it off.
    polarity_lexicon: bool = True
    # One extra word-block feature per urgency cue kind (triage/data/cues.yaml) that occurs,
    # not negated and not excluded, in the text, so that the heads can weigh each kind. Off:
    # out of fold on the training split it moved P1 probabilities up without improving P1
    # precision at equal recall (docs/benchmarks.md §6). Models saved before it load with it off.
    cue_features: bool = False
    # Per two-label head, the C of a second logistic regression fitted on naive-Bayes-scaled
    # features (each column times its log-count ratio between the two labels, as in NBSVM);
    # the head scores with a weighted mean of both fits (``naive_bayes_share`` for the scaled
    # one), still one linear model. Set for the polarity head, which decides reviews: the view
    # (share 0.5) ranked food-delivery and hotel reviews better than any plain setting tried; of
    # the shares tried (0.3, 0.5, 1), 0.3 is the largest that keeps seed dev's sentiment
    # macro-F1 (docs/benchmarks.md §2, session 7). The log-count ratios count every row once,
    # whatever its sample weight. A listed head that has not two labels is refused at fit time.
    # Models saved before it existed load without it.
    naive_bayes_c: dict[str, float] = field(default_factory=lambda: {"polarity": 32.0})
    naive_bayes_share: float = 0.3
    # Heads that also learn a shared hidden layer (models/hidden.py), and the share of its
    # probabilities in theirs: each listed head scores (1 - share) × its linear probabilities
    # + share × the layer's. Out of fold on the training split (5 folds, round-44 corpus) an
    # even blend raised macro-F1 in every fold: topic +0.005, sentiment +0.005, urgency +0.010,
    # complaint +0.004 (docs/benchmarks.md §1, session 14). The reply situation head is not
    # listed. Out of fold (round-45 corpus) its drafts fit 0.795 of the training complaints
    # blended against 0.789 linear, but on seed dev, paired, 0.789 against 0.807 (and 0.789
    # against 0.799 on the round-44 corpus): the evidence disagrees, so the shipped head stays
    # linear (§8, session 15). Empty: no hidden layer. Models saved before it existed load
    # without it.
    hidden_share: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("topic", "sentiment", "urgency", "complaint"), 0.5)
    )
    hidden_units: int = 128
    # Passes over the layer's rows: out of fold, two were as good as three and better than one.
    hidden_epochs: int = 2
    hidden_learning_rate: float = 2e-3
    hidden_dropout: float = 0.3
    # The share of the layer's rows a column must occur in to get an embedding row (at least
    # one row); rarer columns read zeros. Keeps the embedding, and the saved model, small.
    hidden_min_df: float = 1e-4

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ConfigError(
                f"LinearConfig.{name}: expected {expected} (got {getattr(self, name)!r})"
            )

        for name in (
            "char_ngram_min",
            "char_ngram_max",
            "word_ngram_max",
            "char_features_log2",
            "word_features_log2",
            "max_iter",
            "hidden_units",
            "hidden_epochs",
        ):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                fail(name, "an integer")
        if not 1 <= self.char_ngram_min <= 6:
            fail("char_ngram_min", "an integer from 1 to 6")
        if not self.char_ngram_min <= self.char_ngram_max <= 6:
            fail("char_ngram_max", f"an integer from char_ngram_min ({self.char_ngram_min}) to 6")
        if not 1 <= self.word_ngram_max <= 3:
            fail("word_ngram_max", "an integer from 1 to 3")
        for name in ("char_features_log2", "word_features_log2"):
            if not 10 <= getattr(self, name) <= 22:
                fail(name, "an integer from 10 to 22")
        for name in ("max_iter", "hidden_units", "hidden_epochs"):
            if getattr(self, name) < 1:
                fail(name, "a positive integer")
        if self.segmenter not in {s.value for s in Segmenter}:
            fail("segmenter", f"one of {[s.value for s in Segmenter]}")

        def numbers(mapping: object) -> list[float] | None:
            """The values of a {head: number} mapping, or None when it is not one."""
            if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
                return None
            values = list(mapping.values())
            plain = all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            )
            return values if plain else None

        c_values = numbers(self.regularization_c)
        if c_values is None or any(c <= 0 for c in c_values):
            fail("regularization_c", "a {head: positive number} mapping")
        if self.solver not in SOLVERS:
            fail("solver", f"one of {list(SOLVERS)}")
        nb_values = numbers(self.naive_bayes_c)
        if nb_values is None or any(c <= 0 for c in nb_values):
            fail("naive_bayes_c", "a {head: positive number} mapping")
        nb_share = self.naive_bayes_share
        if (
            not isinstance(nb_share, int | float)
            or isinstance(nb_share, bool)
            or not 0.0 < nb_share <= 1.0
        ):
            fail("naive_bayes_share", "a number in (0, 1]")
        hidden_values = numbers(self.hidden_share)
        if hidden_values is None or any(not 0.0 < share <= 1.0 for share in hidden_values):
            fail("hidden_share", "a {head: share in (0, 1]} mapping")
        for name, zero_allowed in (
            ("hidden_learning_rate", False),
            ("hidden_dropout", True),
            ("hidden_min_df", True),
        ):
            value = getattr(self, name)
            plain = isinstance(value, int | float) and not isinstance(value, bool)
            if not plain or not 0.0 <= value < 1.0 or (value == 0.0 and not zero_allowed):
                fail(name, "a number in [0, 1)" if zero_allowed else "a number in (0, 1)")
        row_shares = numbers(self.min_df)
        if row_shares is None or any(not 0.0 <= share < 1.0 for share in row_shares):
            fail("min_df", "a {head: share of rows in [0, 1)} mapping")
        if self.class_weight not in (None, "balanced"):
            fail("class_weight", "'balanced' or null")
        for name in ("polarity_lexicon", "cue_features"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")

    def non_defaults(self) -> dict[str, Any]:
        return non_default_fields(self)


@dataclass(frozen=True)
class HeadSpec:
    """One output head: its labels and how scores become probabilities."""

    labels: list[str]
    activation: str  # "softmax" over labels, or "sigmoid" for two labels (P(labels[1]))


@dataclass(frozen=True)
class HeadData:
    """Training rows for one head; rows without this head's label are simply absent."""

    texts: Sequence[str]
    labels: Sequence[str]
    weights: Sequence[float] | None = None


def _mix(values: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser: spreads structured n-gram codes evenly over the hash space."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


_PRIME = np.uint64(0x100000001B3)


def _hashed_ngrams(
    codes: NDArray[np.uint64], owners: NDArray[np.int64], sizes: range, width: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row, column) of every hashed n-gram of each size; n-grams never span two rows."""
    rows, columns = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for size in sizes:
        span = len(codes) - size + 1
        if span <= 0:
            continue
        combined = np.full(span, np.uint64(size), dtype=np.uint64)
        for offset in range(size):
            combined = combined * _PRIME + codes[offset : offset + span]
        inside = owners[:span] == owners[size - 1 : size - 1 + span]
        rows.append(owners[:span][inside])
        columns.append((_mix(combined[inside]) % np.uint64(width)).astype(np.int64))
    return np.concatenate(rows), np.concatenate(columns)


@dataclass(frozen=True)
class SparseRows:
    """CSR parts of a feature matrix, without the cost of building a scipy matrix."""

    indptr: NDArray[np.int64]
    columns: NDArray[np.int64]
    values: FloatArray
    n_columns: int

    def to_csr(self) -> sp.csr_matrix:
        return sp.csr_matrix(
            (self.values, self.columns, self.indptr), shape=(len(self.indptr) - 1, self.n_columns)
        )


class Featurizer:
    """Text → L2-normalised TF-IDF rows over hashed char and word n-grams.

    Hashing is vectorised over a whole batch with NumPy and is the same on every platform and
    process (no use of Python's randomised ``hash``): a saved model needs no vocabulary. With
    ``config.polarity_lexicon`` the word block also counts the lexicon's positive and negative
    hits, as two pseudo-words (the shipped lexicon unless ``lexicon`` is given); with
    ``config.cue_features`` it counts one pseudo-word per urgency cue kind found (the shipped
    cue lexicon unless ``cues`` is given).
    """

    def __init__(
        self,
        config: LinearConfig,
        idf_char: FloatArray,
        idf_word: FloatArray,
        lexicon: PolarityLexicon | None = None,
        cues: CueLexicon | None = None,
    ):
        self.config = config
        self.lexicon = (lexicon or load_polarity_lexicon()) if config.polarity_lexicon else None
        self.cues = (cues or load_cue_lexicon_file()) if config.cue_features else None
        self.segmenter = Segmenter(config.segmenter)
        self.idf_char = idf_char
        self.idf_word = idf_word
        self._idf = np.concatenate([idf_char, idf_word])
        self.char_width: int = 2**config.char_features_log2
        self.word_width: int = 2**config.word_features_log2
        self._token_codes: dict[str, int] = {}

    @property
    def n_features(self) -> int:
        return self.char_width + self.word_width

    def _token_code(self, token: str) -> int:
        code = self._token_codes.get(token)
        if code is None:
            code = zlib.crc32(token.encode("utf-8")) + 1
            if len(self._token_codes) < 500_000:
                self._token_codes[token] = code
        return code

    def counts(self, texts: Sequence[str]) -> SparseRows:
        """N-gram counts; word columns follow the char columns."""
        lowered = [t.lower() for t in texts]
        char_codes = np.frombuffer("".join(lowered).encode("utf-32-le"), dtype=np.uint32)
        char_owners = np.repeat(np.arange(len(texts)), [len(t) for t in lowered])
        word_lists = [segment(t, self.segmenter) for t in lowered]
        known = self._token_codes  # a code is never 0: a miss falls through to _token_code
        word_codes = np.array(
            [known.get(w) or self._token_code(w) for words in word_lists for w in words],
            dtype=np.uint64,
        )
        word_owners = np.repeat(np.arange(len(texts)), [len(words) for words in word_lists])
        char_rows, char_columns = _hashed_ngrams(
            char_codes.astype(np.uint64),
            char_owners,
            range(self.config.char_ngram_min, self.config.char_ngram_max + 1),
            self.char_width,
        )
        word_rows, word_columns = _hashed_ngrams(
            word_codes, word_owners, range(1, self.config.word_ngram_max + 1), self.word_width
        )
        for pseudo_rows, pseudo_columns in (self._lexicon_hits(lowered), self._cue_hits(lowered)):
            word_rows = np.concatenate([word_rows, pseudo_rows])
            word_columns = np.concatenate([word_columns, pseudo_columns])
        keys = np.concatenate([char_rows, word_rows]) * self.n_features + np.concatenate(
            [char_columns, word_columns + self.char_width]
        )
        unique_keys, counts = np.unique(keys, return_counts=True)
        rows = unique_keys // self.n_features
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(texts)))])
        return SparseRows(
            indptr, unique_keys % self.n_features, counts.astype(np.float32), self.n_features
        )

    def _pseudo_words(
        self, words: Sequence[Sequence[str]]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(row, word column) of extra pseudo-words per text (never a real token: they start
        with a NUL character)."""
        codes = [[self._token_code("\x00" + word) for word in row] for row in words]
        return _hashed_ngrams(
            np.fromiter((c for row in codes for c in row), dtype=np.uint64),
            np.repeat(np.arange(len(words)), [len(row) for row in codes]),
            range(1, 2),
            self.word_width,
        )

    def _lexicon_hits(self, lowered: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """One pseudo-word per polarity-lexicon hit: ``polarity:positive`` or ``:negative``."""
        if self.lexicon is None:
            return self._pseudo_words([])
        polarity = {True: "polarity:positive", False: "polarity:negative"}
        return self._pseudo_words(
            [[polarity[hit.positive] for hit in self.lexicon.find(t)] for t in lowered]
        )

    def _cue_hits(self, lowered: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """One pseudo-word ``cue:<kind>`` per kind of urgency cue found in a text."""
        if self.cues is None:
            return self._pseudo_words([])
        return self._pseudo_words(
            [sorted({f"cue:{hit.kind}" for hit in self.cues.find(t)}) for t in lowered]
        )

    def weighted(self, texts: Sequence[str]) -> SparseRows:
        """Sublinear TF-IDF, L2-normalised separately over the char and the word columns."""
        return self.weigh(self.counts(texts))

    def weigh(self, counts: SparseRows) -> SparseRows:
        """``weighted`` of texts already counted (``counts``)."""
        values = (1.0 + np.log(counts.values)) * self._idf[counts.columns]
        n_texts = len(counts.indptr) - 1
        rows = np.repeat(np.arange(n_texts), np.diff(counts.indptr))
        block = rows * 2 + (counts.columns >= self.char_width)
        norms = np.sqrt(np.bincount(block, weights=values * values, minlength=2 * n_texts))
        values = (values / norms[block]).astype(np.float32)
        return SparseRows(counts.indptr, counts.columns, values, self.n_features)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self.weighted(texts).to_csr()

    @classmethod
    def fit(
        cls,
        config: LinearConfig,
        texts: Sequence[str],
        lexicon: PolarityLexicon | None = None,
        cues: CueLexicon | None = None,
    ) -> Featurizer:
        """A featurizer with the document frequencies of ``texts``."""
        unfitted = cls.unfitted(config, lexicon, cues)
        return unfitted.with_document_frequencies(unfitted.counts(texts).to_csr())

    @classmethod
    def unfitted(
        cls,
        config: LinearConfig,
        lexicon: PolarityLexicon | None = None,
        cues: CueLexicon | None = None,
    ) -> Featurizer:
        """A featurizer that can count n-grams but has no document frequencies yet."""
        return cls(config, np.ones(1, np.float32), np.ones(1, np.float32), lexicon, cues)

    def with_document_frequencies(self, documents: sp.csr_matrix) -> Featurizer:
        """This featurizer's counting with the smoothed IDF of ``documents`` (n-gram counts,
        one row per document)."""
        document_frequency = np.bincount(documents.indices, minlength=self.n_features)
        n_documents = documents.shape[0]
        smoothed: FloatArray = np.log((1 + n_documents) / (1 + document_frequency)) + 1
        idf = smoothed.astype(np.float32)
        return Featurizer(
            self.config, idf[: self.char_width], idf[self.char_width :], self.lexicon, self.cues
        )


def _frequent_columns(features: sp.csr_matrix, min_df: float) -> NDArray[np.int64]:
    """The columns a head is fitted on: those in at least a ``min_df`` share of its rows (at
    least one row). Columns that never occur would get zero weight anyway; rarer ones than the
    share are left out on purpose, since n-grams seen in one or two messages rarely carry over
    to new ones, and the solver's work shrinks with the columns."""
    document_frequency = np.bincount(features.indices, minlength=features.shape[1])
    return np.flatnonzero(document_frequency >= max(1.0, min_df * features.shape[0]))


def _log_count_ratios(features: sp.csr_matrix, y: NDArray[np.int64]) -> FloatArray:
    """Per column, log of how much likelier it occurs in a label-1 row than in a label-0 row
    (document counts with add-one smoothing)."""
    present = features.copy()
    present.data[:] = 1.0
    ones = 1.0 + np.asarray(present[y == 1].sum(axis=0)).ravel()
    zeros = 1.0 + np.asarray(present[y == 0].sum(axis=0)).ravel()
    ratios: FloatArray = np.log((ones / ones.sum()) / (zeros / zeros.sum())).astype(np.float32)
    return ratios


def with_naive_bayes_view(
    classifier: LogisticRegression,
    features: sp.csr_matrix,
    y: NDArray[np.int64],
    weights: NDArray[np.float64] | None,
    c: float | None,
    share: float,
) -> tuple[FloatArray, FloatArray]:
    """(coef, intercept) of a fitted two-label head; with ``c``, a mean of its scores and those
    of a second fit on naive-Bayes-scaled columns, the second weighing ``share`` (scaling a
    column's value scales its weight alike, so the mean is still one weight per column)."""
    if c is None:
        return classifier.coef_, classifier.intercept_
    ratios = _log_count_ratios(features, y)
    scaled = LogisticRegression(**{**classifier.get_params(), "C": c})
    scaled.fit(features @ sp.diags(ratios), y, sample_weight=weights)
    return (
        (1.0 - share) * classifier.coef_ + share * scaled.coef_ * ratios,
        (1.0 - share) * classifier.intercept_ + share * scaled.intercept_,
    )


@dataclass(frozen=True)
class HeadFit:
    """One head's logistic regression to fit: plain arrays, so a worker process can take it."""

    features: sp.csr_matrix  # the head's rows over the columns it uses
    y: NDArray[np.int64]  # label indices
    weights: NDArray[np.float64] | None
    classifier: dict[str, Any]  # LogisticRegression parameters
    two_labels: bool
    naive_bayes_c: float | None
    naive_bayes_share: float

    @property
    def cost(self) -> int:
        """Proportional to a solver step's work: non-zeros times fitted score columns."""
        classes = len(np.unique(self.y))
        return int(self.features.nnz) * (1 if classes <= 2 else classes)

    def run(self) -> FittedHead:
        return fit_head(self)


# (classes present in the rows, coef, intercept) of one fitted head.
FittedHead = tuple[NDArray[np.int64], FloatArray, FloatArray]


def fit_head(job: HeadFit) -> FittedHead:
    """Fit one head (in this process or a worker's)."""
    with warnings.catch_warnings():
        if job.classifier["solver"] in EPOCH_SOLVERS:
            warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = LogisticRegression(**job.classifier)
        classifier.fit(job.features, job.y, sample_weight=job.weights)
        if not job.two_labels:
            return classifier.classes_, classifier.coef_, classifier.intercept_
        coef, intercept = with_naive_bayes_view(
            classifier, job.features, job.y, job.weights, job.naive_bayes_c, job.naive_bayes_share
        )
    return classifier.classes_, coef, intercept


# Solver work (``HeadFit.cost`` summed over the heads) below which starting worker interpreters
# (a few seconds each) is not worth it. The seed corpus's heads cost about 750 million and took
# 109 s to fit one after another (docs/benchmarks.md §11, session 12), so this is roughly 7 s.
PARALLEL_FIT_MIN_COST = 50_000_000


def available_cores() -> int:
    """Cores this process may run on (its affinity where the platform reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class FitJob(Protocol):
    """Work of one fit, runnable in this process or a worker's."""

    @property
    def cost(self) -> int: ...

    def run(self) -> FittedHead | HiddenLayer: ...


def automatic_processes(jobs: Mapping[str, FitJob]) -> int:
    """One worker per available core, at most one per fit, when the fits are worth it."""
    if sum(job.cost for job in jobs.values()) < PARALLEL_FIT_MIN_COST:
        return 1
    return max(1, min(available_cores(), len(jobs)))


def fit_heads(
    jobs: dict[str, HeadFit], processes: int | None, hidden: HiddenLayerFit | None = None
) -> tuple[dict[str, FittedHead], HiddenLayer | None]:
    """Fit every head and the hidden layer, ``processes`` at a time (None:
    ``automatic_processes``). The costliest start first (the 80-class situation head and the
    hidden layer take most of training), so the others fit beside them. Each fit is the same
    computation wherever it runs: the result does not depend on ``processes``."""
    work: dict[str, FitJob] = {f"head {name}": job for name, job in jobs.items()}
    if hidden is not None:
        work["hidden layer"] = hidden
    if processes is None:
        processes = automatic_processes(work)
    if processes < 1:
        raise ConfigError(f"processes: expected a positive integer (got {processes!r})")
    if processes == 1 or len(work) == 1:
        done = {key: job.run() for key, job in work.items()}
    else:
        costliest_first = sorted(work, key=lambda key: work[key].cost, reverse=True)
        # "spawn": a fresh interpreter per worker, never a fork of a process holding threads.
        context = get_context("spawn")
        with ProcessPoolExecutor(min(processes, len(work)), mp_context=context) as pool:
            futures = {key: pool.submit(work[key].run) for key in costliest_first}
            done = {key: futures[key].result() for key in work}
    fitted: dict[str, FittedHead] = {}
    for name in jobs:
        result = done[f"head {name}"]
        if isinstance(result, HiddenLayer):
            raise TypeError(f"head {name!r}: expected a fitted head")
        fitted[name] = result
    layer = done.get("hidden layer")
    return fitted, layer if isinstance(layer, HiddenLayer) else None


def _hidden_layer_job(
    config: LinearConfig,
    data: dict[str, HeadData],
    label_sets: dict[str, list[str]],
    every_row: sp.csr_matrix,
    row_of: dict[str, int],
    seed: int,
) -> HiddenLayerFit | None:
    """The hidden layer to train for the heads of ``config.hidden_share`` (None when no head
    of ``data`` is listed): one row per distinct text of those heads, labeled per head with the
    text's first row there (its main label; acceptable alternatives follow it)."""
    heads = [name for name in config.hidden_share if name in data]
    if not heads:
        return None
    texts = list(dict.fromkeys(t for name in heads for t in data[name].texts))
    index = {text: row for row, text in enumerate(texts)}
    targets: dict[str, NDArray[np.int64]] = {}
    for name in heads:
        code = {label: i for i, label in enumerate(label_sets[name])}
        target = np.full(len(texts), MISSING, np.int64)
        rows = list(zip(data[name].texts, data[name].labels, strict=True))
        for text, label in reversed(rows):  # backwards: a text's first row is written last
            target[index[text]] = code[label]
        targets[name] = target
    features = every_row[[row_of[text] for text in texts]]
    used = _frequent_columns(features, config.hidden_min_df)
    if not len(used):
        raise ConfigError(
            f"LinearConfig.hidden_min_df: expected a share that some column reaches in the "
            f"hidden layer's {features.shape[0]} rows (got {config.hidden_min_df!r})"
        )
    return HiddenLayerFit(
        features=features[:, used],
        columns=used,
        n_features=every_row.shape[1],
        targets=targets,
        widths={name: len(label_sets[name]) for name in heads},
        units=config.hidden_units,
        epochs=config.hidden_epochs,
        learning_rate=config.hidden_learning_rate,
        dropout=config.hidden_dropout,
        batch_size=HIDDEN_BATCH_SIZE,
        seed=seed,
    )


class LinearEngine(MetaIdentity):
    """Linear heads over a shared featurizer, optionally blended with a hidden layer's
    probabilities (``LinearConfig.hidden_share``). ``predict_proba`` is the only model call."""

    engine = "linear"
    default_name = "triage-linear"

    def __init__(
        self,
        config: LinearConfig,
        featurizer: Featurizer,
        heads: dict[str, HeadSpec],
        weights: FloatArray,
        biases: FloatArray,
        meta: dict[str, Any] | None = None,
        hidden: HiddenLayer | None = None,
    ):
        # The config describes the model: without a hidden layer no head blends one.
        self.config = config if hidden is not None else replace(config, hidden_share={})
        self.featurizer = featurizer
        self.heads = heads
        self.weights = weights  # (n_features, total outputs), all heads side by side
        self.biases = biases
        self.hidden = hidden
        self.meta = dict(meta or {})
        offsets = np.cumsum([0] + [self._width(spec) for spec in heads.values()])
        self._slices = {
            name: slice(int(offsets[i]), int(offsets[i + 1])) for i, name in enumerate(heads)
        }

    @staticmethod
    def _width(spec: HeadSpec) -> int:
        return 1 if spec.activation == "sigmoid" else len(spec.labels)

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        """Probabilities per head, rows aligned with ``texts``; columns follow the head's labels."""
        if not texts:
            return {
                name: np.zeros((0, len(s.labels)), np.float32) for name, s in self.heads.items()
            }
        features = self.featurizer.weighted(texts)
        # A sparse product: for batches about 1.7 times faster than gathering each non-zero's
        # weight row, and about as fast for one text (docs/benchmarks.md §3, session 14).
        scores = features.to_csr() @ self.weights + self.biases
        out: dict[str, FloatArray] = {}
        for name, spec in self.heads.items():
            block = scores[:, self._slices[name]]
            if spec.activation == "sigmoid":
                positive = 1.0 / (1.0 + np.exp(-block[:, 0]))
                out[name] = np.stack([1.0 - positive, positive], axis=1).astype(np.float32)
            else:
                shifted = np.exp(block - block.max(axis=1, keepdims=True))
                out[name] = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        if self.hidden is not None:
            layer = self.hidden.predict_proba(features.indptr, features.columns, features.values)
            for name, probabilities in layer.items():
                share = self.config.hidden_share[name]
                out[name] = (1.0 - share) * out[name] + share * probabilities
        return out

    @classmethod
    def fit(
        cls,
        config: LinearConfig,
        data: dict[str, HeadData],
        label_sets: dict[str, list[str]],
        *,
        seed: int = 0,
        idf_head: str | None = None,
        processes: int | None = 1,
    ) -> LinearEngine:
        """Fit the featurizer, then one logistic regression per head.

        Document frequencies come from ``idf_head``'s texts when given (the in-domain corpus,
        so that auxiliary rows of another domain do not reweight its features), else from all.
        With ``processes`` above 1 the heads are fitted that many at a time in worker
        processes (None: as many as ``automatic_processes`` finds worth it); the model is the
        same as fitted one after another.
        """
        # Heads share most texts (four corpus heads read the same messages): each distinct
        # text is counted once, for the document frequencies and for every head's rows.
        distinct = list(dict.fromkeys(t for head in data.values() for t in head.texts))
        row_of = {text: row for row, text in enumerate(distinct)}
        unfitted = Featurizer.unfitted(config)
        counts = unfitted.counts(distinct)
        idf_texts = data[idf_head].texts if idf_head else distinct
        featurizer = unfitted.with_document_frequencies(
            counts.to_csr()[[row_of[text] for text in dict.fromkeys(idf_texts)]]
        )
        every_row = featurizer.weigh(counts).to_csr()
        jobs: dict[str, HeadFit] = {}
        columns: dict[str, NDArray[np.int64]] = {}
        for name, head in data.items():
            labels = label_sets[name]
            unknown = sorted(set(head.labels) - set(labels))
            if unknown:
                raise ConfigError(f"head {name!r}: labels {unknown} are not in {labels}")
            if name in config.naive_bayes_c and len(labels) != 2:
                raise ConfigError(
                    f"LinearConfig.naive_bayes_c: expected heads with two labels (got {name!r},"
                    f" whose labels are {labels})"
                )
            features = every_row[[row_of[text] for text in head.texts]]
            columns[name] = _frequent_columns(features, config.min_df.get(name, 0.0))
            jobs[name] = HeadFit(
                features=features[:, columns[name]],
                y=np.array([labels.index(label) for label in head.labels]),
                weights=None if head.weights is None else np.asarray(head.weights, np.float64),
                classifier=dict(
                    C=config.regularization_c.get(name, 4.0),
                    class_weight=config.class_weight,
                    max_iter=config.max_iter,
                    random_state=seed,
                    solver=config.solver,
                ),
                two_labels=len(labels) == 2,
                naive_bayes_c=config.naive_bayes_c.get(name),
                naive_bayes_share=config.naive_bayes_share,
            )
        hidden_job = _hidden_layer_job(config, data, label_sets, every_row, row_of, seed)
        fits, hidden = fit_heads(jobs, processes, hidden_job)
        heads: dict[str, HeadSpec] = {}
        blocks: list[FloatArray] = []
        biases: list[FloatArray] = []
        for name, (present, head_coef, head_intercept) in fits.items():
            labels, used = label_sets[name], columns[name]
            spec = HeadSpec(labels, "sigmoid" if len(labels) == 2 else "softmax")
            width = head_coef.shape[0] if len(labels) == 2 else len(labels)
            coef = np.zeros((width, featurizer.n_features), np.float32)
            intercept = np.zeros(coef.shape[0], np.float32)
            # Classes absent from the training rows keep zero weights and a very low bias.
            if len(labels) == 2:
                coef[:, used], intercept[:] = head_coef, head_intercept
            elif len(present) == 2:  # binary fit: softmax over (0, w·x) equals the sigmoid
                intercept[:] = -30.0
                intercept[present[0]] = 0.0
                coef[present[1], used] = head_coef[0]
                intercept[present[1]] = head_intercept[0]
            else:
                intercept[:] = -30.0
                coef[np.ix_(present, used)] = head_coef
                intercept[present] = head_intercept
            heads[name] = spec
            blocks.append(coef.T)
            biases.append(intercept)
        return cls(
            config, featurizer, heads, np.hstack(blocks), np.concatenate(biases), hidden=hidden
        )

    def save(self, directory: Path, meta: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and a model card ``README.md``."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, NDArray[np.generic]] = {
            "features.char.idf": self.featurizer.idf_char,
            "features.word.idf": self.featurizer.idf_word,
        }
        for name, part in self._slices.items():
            block = self.weights[:, part]
            columns = np.flatnonzero(np.any(block != 0, axis=1))
            tensors[f"heads.{name}.columns"] = columns.astype(np.int64)
            tensors[f"heads.{name}.weight"] = np.ascontiguousarray(block[columns].T)
            tensors[f"heads.{name}.bias"] = np.ascontiguousarray(self.biases[part])
        if self.hidden is not None:
            tensors.update(self.hidden.tensors(HIDDEN_PREFIX))
        weights_path = directory / WEIGHTS_FILE
        save_file(tensors, str(weights_path))
        readable_as_umask_allows(weights_path)
        self.meta.update(meta or {})
        # The version identifies behaviour: the weights, the lexicons features were counted
        # with and the decision thresholds.
        digest = hashlib.sha256(weights_path.read_bytes())
        for file_name, lexicon in (
            (LEXICON_FILE, self.featurizer.lexicon),
            (CUES_FILE, self.featurizer.cues),
        ):
            if lexicon is not None:
                text = lexicon.model_dump_json(indent=2) + "\n"
                (directory / file_name).write_text(text, encoding="utf-8")
                digest.update(text.encode("utf-8"))
        digest.update(json.dumps(self.meta.get("thresholds", {}), sort_keys=True).encode())
        self.meta["version"] = digest.hexdigest()[:12]
        config = {
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "name": self.name,
            **{k: v for k, v in self.meta.items() if k != "name"},
            "features": asdict(self.config),
            "non_default_hyperparameters": self.config.non_defaults(),
            "heads": {name: asdict(spec) for name, spec in self.heads.items()},
            "library_versions": library_versions(),
        }
        (directory / CONFIG_FILE).write_text(
            json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        write_model_card(directory, config)
        return directory

    @classmethod
    def load(cls, directory: Path) -> LinearEngine:
        """Load a model saved by :meth:`save`; errors name the directory and what is missing."""
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ModelError(f"{directory}: not a triage model directory ({path.name} missing)")
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            tensors = load_file(str(weights_path))
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelError(f"{directory}: unreadable model files ({exc})") from exc
        if (
            not isinstance(saved, dict)
            or saved.get("engine") != cls.engine
            or (saved.get("format_version") != FORMAT_VERSION)
        ):
            got = (
                saved
                if not isinstance(saved, dict)
                else {k: saved.get(k) for k in ("engine", "format_version")}
            )
            raise ModelError(
                f"{config_path}: expected engine 'linear' format {FORMAT_VERSION} (got {got!r})"
            )
        try:
            config = LinearConfig(**{**SETTINGS_BEFORE_THEY_EXISTED, **saved["features"]})
            lexicon = (
                load_polarity_lexicon(cls._saved_file(directory, LEXICON_FILE))
                if config.polarity_lexicon
                else None
            )
            cues = (
                load_cue_lexicon_file(cls._saved_file(directory, CUES_FILE))
                if config.cue_features
                else None
            )
            return cls._from_saved(config, saved, tensors, lexicon, cues)
        except (KeyError, TypeError, ValueError, IndexError, ConfigError) as exc:
            raise ModelError(f"{directory}: incomplete or inconsistent model ({exc!r})") from exc

    @staticmethod
    def _saved_file(directory: Path, name: str) -> Path:
        """A lexicon the model was trained with (not the shipped one, which may have changed)."""
        path = directory / name
        if not path.is_file():
            raise ModelError(f"{directory}: {name} missing (the config uses that lexicon)")
        return path

    @classmethod
    def _from_saved(
        cls,
        config: LinearConfig,
        saved: dict[str, Any],
        tensors: dict[str, FloatArray],
        lexicon: PolarityLexicon | None,
        cues: CueLexicon | None,
    ) -> LinearEngine:
        featurizer = Featurizer(
            config, tensors["features.char.idf"], tensors["features.word.idf"], lexicon, cues
        )
        heads = {name: HeadSpec(**spec) for name, spec in saved["heads"].items()}
        blocks, biases = [], []
        for name in heads:
            block = np.zeros(
                (featurizer.n_features, tensors[f"heads.{name}.bias"].shape[0]), np.float32
            )
            block[tensors[f"heads.{name}.columns"]] = tensors[f"heads.{name}.weight"].T
            blocks.append(block)
            biases.append(tensors[f"heads.{name}.bias"])
        meta = {
            k: v
            for k, v in saved.items()
            if k
            not in {
                "features",
                "heads",
                "engine",
                "format_version",
                "library_versions",
                "non_default_hyperparameters",
            }
        }
        # The listed heads the model has (a model fits only the heads it had rows for).
        layer_heads = [name for name in config.hidden_share if name in heads]
        hidden = (
            HiddenLayer.from_tensors(tensors, HIDDEN_PREFIX, layer_heads, featurizer.n_features)
            if layer_heads
            else None
        )
        return cls(
            config, featurizer, heads, np.hstack(blocks), np.concatenate(biases), meta, hidden
        )
