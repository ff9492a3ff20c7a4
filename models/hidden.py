"""A hidden layer over the linear engine's n-gram features, learned for several heads at once.

fastText-like, with one non-linearity: a text's TF-IDF row times an embedding of its columns,
plus a bias, through a ReLU, then one softmax per head. The heads share the layer, so what one
task learns about a phrase helps the others. Its probabilities are blended with the linear
heads' (``LinearConfig.hidden_share``): out of fold on the training split the blend lifted
every corpus head (docs/benchmarks.md §1, session 14).

Trained in NumPy by minibatch Adam; the embedding moves lazily, only the rows of the columns a
batch contains (as PyTorch's SparseAdam does), so an epoch costs about what the batches' non-zeros
do, not the size of the embedding. Same seed, same data: the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

FloatArray = NDArray[np.float32]
# Adam's constants (Kingma and Ba's defaults, as in PyTorch).
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-8
# Standard deviation of the embedding's initial values.
_INIT_SCALE = 0.05
# Embedding rows per chunk of a lazy Adam step: a chunk's gathered state (its values and two
# moments, 256 × 3 × 128 float32 = 384 KiB at 128 units) fits in a core's cache.
_ROWS_PER_CHUNK = 256
# No label for this head in this row.
MISSING = -1
# The bias of a label no training row has: its probability is about e^-30 of the others'.
ABSENT_LABEL_BIAS = -30.0


@dataclass
class _Adam:
    """Adam's moment estimates for one small array, updated whole."""

    first: FloatArray
    second: FloatArray

    @classmethod
    def like(cls, array: FloatArray) -> _Adam:
        return cls(np.zeros_like(array), np.zeros_like(array))

    def step(self, target: FloatArray, gradient: FloatArray, rate: float) -> None:
        """Move ``target`` by one Adam step; ``rate`` carries this step's bias correction."""
        self.first *= _BETA1
        self.first += (1.0 - _BETA1) * gradient
        self.second *= _BETA2
        self.second += (1.0 - _BETA2) * gradient * gradient
        target -= rate * self.first / (np.sqrt(self.second) + _EPSILON)


class _EmbeddingAdam:
    """The embedding with Adam's two moments stored beside each of its rows, updated lazily:
    a step gathers the rows a batch touches, a chunk at a time, updates them in place and
    writes them back (the row updates are most of training's time)."""

    def __init__(self, values: FloatArray):
        self._state = np.zeros((values.shape[0], 3, values.shape[1]), np.float32)
        self._state[:, 0] = values

    def rows(self, rows: NDArray[np.int64]) -> FloatArray:
        values: FloatArray = self._state[rows, 0]
        return values

    def step(self, rows: NDArray[np.int64], gradient: FloatArray, rate: float) -> None:
        """One Adam step for ``rows`` (``gradient`` is overwritten), a few hundred rows at a
        time: each row's update is independent of the others, and a chunk's arrays stay in
        the CPU cache through the dozen passes of the update (twice as fast as one block)."""
        for start in range(0, len(rows), _ROWS_PER_CHUNK):
            chunk = slice(start, start + _ROWS_PER_CHUNK)
            self._step_rows(rows[chunk], gradient[chunk], rate)

    def _step_rows(self, rows: NDArray[np.int64], gradient: FloatArray, rate: float) -> None:
        block = self._state[rows]
        value, first, second = block[:, 0], block[:, 1], block[:, 2]
        first *= _BETA1
        first += (1.0 - _BETA1) * gradient
        second *= _BETA2
        gradient *= gradient
        gradient *= 1.0 - _BETA2
        second += gradient
        move = np.sqrt(second)
        move += _EPSILON
        np.divide(first, move, out=move)
        move *= rate
        value -= move
        self._state[rows] = block

    @property
    def values(self) -> FloatArray:
        return np.ascontiguousarray(self._state[:, 0])


@dataclass(frozen=True)
class HiddenLayerFit:
    """The hidden layer to train: plain arrays, so a worker process can take it."""

    features: sp.csr_matrix  # one row per training text, over the layer's columns
    columns: NDArray[np.int64]  # the featurizer column of each feature column
    n_features: int  # the featurizer's columns
    targets: dict[str, NDArray[np.int64]]  # per head, a label index per row (MISSING: none)
    widths: dict[str, int]  # per head, its number of labels
    units: int
    epochs: int
    learning_rate: float
    dropout: float
    batch_size: int
    seed: int

    @property
    def cost(self) -> int:
        """Proportional to training's work: non-zeros times units times passes."""
        return int(self.features.nnz) * self.units * self.epochs

    def run(self) -> HiddenLayer:
        # One BLAS thread: the products are small, and the heads fitting beside this layer in
        # other worker processes use the other cores.
        with threadpool_limits(limits=1):
            return train_hidden_layer(self)


@dataclass
class HiddenLayer:
    """Embedding (one row per used featurizer column), bias, and one softmax per head."""

    n_features: int
    columns: NDArray[np.int64]
    embedding: FloatArray  # (len(columns), units)
    bias: FloatArray  # (units,)
    head_weights: dict[str, FloatArray]  # per head (units, labels)
    head_biases: dict[str, FloatArray]  # per head (labels,)
    _row_of_column: NDArray[np.int32] = field(init=False, repr=False)
    _has_row: NDArray[np.bool_] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row_of_column = np.zeros(self.n_features, np.int32)
        self._row_of_column[self.columns] = np.arange(len(self.columns), dtype=np.int32)
        self._has_row = np.zeros(self.n_features, np.bool_)
        self._has_row[self.columns] = True

    def predict_proba(
        self, indptr: NDArray[np.int64], columns: NDArray[np.int64], values: FloatArray
    ) -> dict[str, FloatArray]:
        """Per head, probabilities of feature rows given as CSR parts (featurizer columns)."""
        # Columns without an embedding row count as zeros (on row 0, so nothing is copied).
        rows = sp.csr_matrix(
            (
                np.where(self._has_row[columns], values, np.float32(0.0)),
                self._row_of_column[columns],
                indptr,
            ),
            shape=(len(indptr) - 1, len(self.embedding)),
        )
        # Sparse products throughout: each row is summed on its own, in the same order in a
        # batch as alone, so a text gets the same probabilities either way (a dense BLAS
        # product rounds a batch differently from one row).
        hidden = sp.csr_matrix(np.maximum(rows @ self.embedding + self.bias, 0.0))
        return {
            name: _softmax(hidden @ weight + self.head_biases[name])
            for name, weight in self.head_weights.items()
        }

    def tensors(self, prefix: str) -> dict[str, NDArray[np.generic]]:
        """The arrays to save, named under ``prefix``."""
        saved: dict[str, NDArray[np.generic]] = {
            f"{prefix}.columns": self.columns,
            f"{prefix}.embedding": self.embedding,
            f"{prefix}.bias": self.bias,
        }
        for name, weight in self.head_weights.items():
            saved[f"{prefix}.heads.{name}.weight"] = weight
            saved[f"{prefix}.heads.{name}.bias"] = self.head_biases[name]
        return saved

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, NDArray[np.generic]],
        prefix: str,
        heads: list[str],
        n_features: int,
    ) -> HiddenLayer:
        """The layer :meth:`tensors` saved (a missing array raises ``KeyError``)."""
        return cls(
            n_features,
            np.asarray(tensors[f"{prefix}.columns"], np.int64),
            np.asarray(tensors[f"{prefix}.embedding"], np.float32),
            np.asarray(tensors[f"{prefix}.bias"], np.float32),
            {h: np.asarray(tensors[f"{prefix}.heads.{h}.weight"], np.float32) for h in heads},
            {h: np.asarray(tensors[f"{prefix}.heads.{h}.bias"], np.float32) for h in heads},
        )


def _softmax(scores: FloatArray) -> FloatArray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities: FloatArray = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


def train_hidden_layer(job: HiddenLayerFit) -> HiddenLayer:
    """Minibatch Adam on the sum over heads of each head's mean cross-entropy in the batch
    (rows without the head's label left out), with dropout on the hidden units."""
    rng = np.random.default_rng(job.seed)
    features = job.features.astype(np.float32).tocsr()
    n_rows, n_columns = features.shape
    embedding = rng.normal(0.0, _INIT_SCALE, (n_columns, job.units)).astype(np.float32)
    bias = np.zeros(job.units, np.float32)
    bound = 1.0 / np.sqrt(job.units)  # PyTorch's default for a linear layer
    weights = {
        h: rng.uniform(-bound, bound, (job.units, w)).astype(np.float32)
        for h, w in job.widths.items()
    }
    biases = {h: rng.uniform(-bound, bound, w).astype(np.float32) for h, w in job.widths.items()}
    embedding_state = _EmbeddingAdam(embedding)
    states = {
        "bias": _Adam.like(bias),
        **{f"w.{h}": _Adam.like(w) for h, w in weights.items()},
        **{f"b.{h}": _Adam.like(b) for h, b in biases.items()},
    }
    keep_share = 1.0 - job.dropout
    step = 0
    for _ in range(job.epochs):
        order = rng.permutation(n_rows)
        for start in range(0, n_rows, job.batch_size):
            rows = order[start : start + job.batch_size]
            batch = features[rows]
            used, local = np.unique(batch.indices, return_inverse=True)
            local_rows = sp.csr_matrix(
                (batch.data, local.astype(np.int64), batch.indptr), shape=(len(rows), len(used))
            )
            before = local_rows @ embedding_state.rows(used) + bias
            mask = (rng.random(before.shape, dtype=np.float32) < keep_share) / np.float32(
                keep_share
            )
            hidden = np.maximum(before, 0.0) * mask
            step += 1
            # A Python float: a NumPy float64 scalar would make every product float64.
            rate = float(job.learning_rate * np.sqrt(1.0 - _BETA2**step) / (1.0 - _BETA1**step))
            grad_hidden = np.zeros_like(hidden)
            for name, weight in weights.items():
                labels = job.targets[name][rows]
                labeled = labels != MISSING
                if not labeled.any():
                    continue
                inputs = hidden[labeled]
                grad_scores = _softmax(inputs @ weight + biases[name])
                grad_scores[np.arange(len(grad_scores)), labels[labeled]] -= 1.0
                grad_scores /= np.float32(len(grad_scores))
                grad_hidden[labeled] += grad_scores @ weight.T
                states[f"w.{name}"].step(weight, inputs.T @ grad_scores, rate)
                states[f"b.{name}"].step(biases[name], grad_scores.sum(axis=0), rate)
            grad_before = grad_hidden * mask * (before > 0.0)
            states["bias"].step(bias, grad_before.sum(axis=0), rate)
            embedding_state.step(used, np.asarray(local_rows.T @ grad_before, np.float32), rate)
    embedding = embedding_state.values
    for name, labels in job.targets.items():
        # Labels absent from the rows get no probability, as in the linear heads.
        absent = np.setdiff1d(np.arange(job.widths[name]), labels[labels != MISSING])
        weights[name][:, absent] = 0.0
        biases[name][absent] = ABSENT_LABEL_BIAS
    return HiddenLayer(job.n_features, job.columns, embedding, bias, weights, biases)
