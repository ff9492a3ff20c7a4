"""The transformer engine: a pretrained encoder, pooling, and one classification head per task.

A saved model is a directory with ``config.json`` (engine, heads, hyperparameters, metadata),
``heads.safetensors`` (the task heads), ``encoder/`` (a plain Hugging Face checkpoint: config,
safetensors weights and fast tokenizer, readable by any tool that reads such checkpoints) and a
model card. ONNX exports, when made, live in ``onnx/``. Nothing is pickled.

Inference runs in one of four runtimes (``InferenceConfig.runtime``): ``torch`` (fp32),
``torch-int8`` (dynamic int8 quantisation of the linear layers), ``onnx`` and ``onnx-int8``
(ONNX Runtime, fp32 or dynamically quantised). Texts are tokenised once, sorted by length and run
in batches padded only to their longest member, so short messages never pay for long ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from triage.errors import ConfigError, ModelError
from triage.models.card import (
    MetaIdentity,
    library_versions,
    non_default_fields,
    readable_as_umask_allows,
    write_model_card,
)
from triage.models.linear import CONFIG_FILE, FloatArray, HeadSpec

FORMAT_VERSION = 1
ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"
ONNX_DIR = "onnx"
POOLINGS = ("mean", "cls")
RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
DEVICES = ("auto", "cpu", "cuda")
MAX_DEFAULT_THREADS = 4
IMPORT_HINT = (
    "Hugging Face hub downloads need network access; offline, pass a local checkpoint "
    "directory, e.g. the one `triage models import-e5` writes (multilingual-e5-small)"
)


def _check(condition: bool, owner: str, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{owner}.{name}: expected {expected} (got {value!r})")


@dataclass(frozen=True)
class TransformerConfig:
    """How the encoder's token vectors become head inputs; fixed at training time."""

    pooling: str = "mean"
    max_length: int = 128
    head_dropout: float = 0.1
    # Prepended to every text; e5 models were trained with "query: " before short texts.
    text_prefix: str = ""

    def __post_init__(self) -> None:
        owner = "TransformerConfig"
        _check(self.pooling in POOLINGS, owner, "pooling", self.pooling, f"one of {POOLINGS}")
        _check(
            isinstance(self.max_length, int) and 8 <= self.max_length <= 4096,
            owner,
            "max_length",
            self.max_length,
            "an integer from 8 to 4096",
        )
        _check(
            0.0 <= self.head_dropout < 1.0,
            owner,
            "head_dropout",
            self.head_dropout,
            "a number in [0, 1)",
        )

    def non_defaults(self) -> dict[str, Any]:
        return non_default_fields(self)


@dataclass(frozen=True)
class InferenceConfig:
    """How a saved model runs; may be changed at load time without retraining."""

    runtime: str = "torch"
    batch_size: int = 32
    # Sort texts by token count before batching, so each batch pads to similar lengths.
    length_bucketing: bool = True
    # Threads for the CPU runtimes; 0 means the usable cores, at most MAX_DEFAULT_THREADS
    # (more threads than that mostly wait on each other for one small batch).
    threads: int = 0
    device: str = "auto"

    @property
    def thread_count(self) -> int:
        return self.threads or min(MAX_DEFAULT_THREADS, len(os.sched_getaffinity(0)))

    def __post_init__(self) -> None:
        owner = "InferenceConfig"
        _check(self.runtime in RUNTIMES, owner, "runtime", self.runtime, f"one of {RUNTIMES}")
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            owner,
            "batch_size",
            self.batch_size,
            "a positive integer",
        )
        _check(
            isinstance(self.threads, int) and self.threads >= 0,
            owner,
            "threads",
            self.threads,
            "0 (automatic) or a positive integer",
        )
        _check(self.device in DEVICES, owner, "device", self.device, f"one of {DEVICES}")


def resolve_device(device: str) -> torch.device:
    """``auto`` is the GPU when one is present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: expected 'auto' or 'cpu' on this machine (got 'cuda'; no GPU)")
    return torch.device(device)


def load_pretrained(base_model: str) -> tuple[nn.Module, Any]:
    """Encoder and fast tokenizer from a hub id or a local checkpoint directory."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(base_model)
            encoder = AutoModel.from_pretrained(base_model)
    except (OSError, ValueError, ImportError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"base model {base_model!r} could not be loaded ({first_line}). {IMPORT_HINT}."
        ) from exc
    if not getattr(tokenizer, "backend_tokenizer", None):
        raise ModelError(f"base model {base_model!r}: a fast (tokenizers) tokenizer is required")
    return encoder, tokenizer


class MultiTaskModel(nn.Module):
    """Encoder → pooled vector → dropout → one linear layer per head (logits)."""

    def __init__(self, encoder: Any, heads: dict[str, HeadSpec], config: TransformerConfig):
        super().__init__()
        # A Hugging Face ``PreTrainedModel``; typed loosely because its API is untyped.
        self.encoder: Any = encoder
        self.config = config
        self.dropout = nn.Dropout(config.head_dropout)
        hidden = int(encoder.config.hidden_size)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, len(spec.labels)) for name, spec in heads.items()}
        )

    def pool(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden: Tensor = output.last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled: Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        pooled = self.dropout(self.pool(input_ids, attention_mask))
        return {name: head(pooled) for name, head in self.heads.items()}


class _ProbabilityGraph(nn.Module):
    """The model as a graph of probabilities, one output per head: what ONNX export traces."""

    def __init__(self, model: MultiTaskModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        logits = self.model(input_ids, attention_mask)
        return tuple(torch.softmax(logits[name], dim=-1) for name in self.model.heads)


NDArrayInt = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class Batch:
    """Token ids of some texts, padded to the longest of them, and where each text came from."""

    rows: NDArrayInt
    input_ids: NDArrayInt
    attention_mask: NDArrayInt


class TransformerEngine(MetaIdentity):
    """A multi-task transformer. ``predict_proba`` is the only call that runs the network."""

    engine = "transformer"
    default_name = "triage-transformer"

    def __init__(
        self,
        model: MultiTaskModel,
        tokenizer: Any,
        heads: dict[str, HeadSpec],
        *,
        base_model: str,
        inference: InferenceConfig | None = None,
        meta: dict[str, Any] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.heads = heads
        self.base_model = base_model
        self.inference = inference or InferenceConfig()
        self.meta = dict(meta or {})
        self.device = resolve_device(self.inference.device)
        self.model.to(self.device)
        self._fast: Tokenizer = tokenizer.backend_tokenizer.__class__.from_str(
            tokenizer.backend_tokenizer.to_str()
        )
        self._fast.no_padding()
        self._fast.enable_truncation(model.config.max_length)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._runner: Any = None  # the int8 copy or the ONNX Runtime session, built on first use
        self._directory: Path | None = None

    @property
    def config(self) -> TransformerConfig:
        return self.model.config

    @classmethod
    def from_pretrained(
        cls,
        base_model: str,
        heads: dict[str, HeadSpec],
        config: TransformerConfig | None = None,
        inference: InferenceConfig | None = None,
    ) -> TransformerEngine:
        """A new engine: pretrained encoder, freshly initialised heads."""
        encoder, tokenizer = load_pretrained(base_model)
        model = MultiTaskModel(encoder, heads, config or TransformerConfig())
        return cls(model, tokenizer, heads, base_model=base_model, inference=inference)

    # -- inference: preprocess -> _forward -> postprocess ---------------------------------

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (truncated to ``max_length``)."""
        prefix = self.config.text_prefix
        encodings = self._fast.encode_batch([prefix + text for text in texts])
        return [encoding.ids for encoding in encodings]

    def batches(self, texts: Sequence[str], batch_size: int | None = None) -> list[Batch]:
        """Length-bucketed batches: texts sorted by token count, each batch padded to its own
        longest member."""
        ids = self.encode(texts)
        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        order = (
            np.argsort(lengths, kind="stable")
            if self.inference.length_bucketing
            else np.arange(len(ids))
        )
        size = batch_size or self.inference.batch_size
        out = []
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            width = int(lengths[rows].max())
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            attention_mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                input_ids[i, : lengths[row]] = ids[row]
                attention_mask[i, : lengths[row]] = 1
            out.append(Batch(rows, input_ids, attention_mask))
        return out

    def _forward(self, batch: Batch) -> list[FloatArray]:
        """Probabilities per head (in ``self.heads`` order) for one padded batch."""
        if self.inference.runtime.startswith("onnx"):
            session = self._onnx_session()
            outputs = session.run(
                None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            )
            return [np.asarray(o, dtype=np.float32) for o in outputs]
        model = self._torch_model()
        with torch.inference_mode():
            logits = model(
                torch.from_numpy(batch.input_ids).to(self.device),
                torch.from_numpy(batch.attention_mask).to(self.device),
            )
            return [
                torch.softmax(logits[name].float(), dim=-1).cpu().numpy() for name in self.heads
            ]

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        """Probabilities per head, rows aligned with ``texts``; columns follow the head's labels."""
        out = {
            name: np.zeros((len(texts), len(spec.labels)), np.float32)
            for name, spec in self.heads.items()
        }
        for batch in self.batches(texts):
            for name, probs in zip(self.heads, self._forward(batch), strict=True):
                out[name][batch.rows] = probs
        return out

    def pooled(self, texts: Sequence[str]) -> Tensor:
        """Pooled encoder vectors of ``texts`` (eval mode, fp32 torch), rows aligned with them:
        what the heads see. Training with a frozen encoder computes these only once."""
        self.model.eval()
        out = torch.zeros((len(texts), int(self.model.encoder.config.hidden_size)))
        with torch.inference_mode():
            for batch in self.batches(texts):
                vectors = self.model.pool(
                    torch.from_numpy(batch.input_ids).to(self.device),
                    torch.from_numpy(batch.attention_mask).to(self.device),
                )
                out[torch.from_numpy(batch.rows)] = vectors.float().cpu()
        return out

    def head_probabilities(self, pooled: Tensor) -> dict[str, FloatArray]:
        """Probabilities per head from pooled vectors (eval mode)."""
        self.model.eval()
        with torch.inference_mode():
            features = pooled.to(self.device)
            return {
                name: torch.softmax(head(features).float(), dim=-1).cpu().numpy()
                for name, head in self.model.heads.items()
            }

    def _torch_model(self) -> nn.Module:
        self.model.eval()
        if self.inference.runtime == "torch":
            return self.model
        if self._runner is None:
            with warnings.catch_warnings():  # deprecated in favour of torchao, still supported
                warnings.simplefilter("ignore")
                self._runner = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                    self.model.cpu(), {nn.Linear}, dtype=torch.qint8
                )
        runner: nn.Module = self._runner
        return runner

    def _onnx_session(self) -> Any:
        if self._runner is None:
            if self._directory is None:
                raise ModelError(
                    f"runtime {self.inference.runtime!r} needs a saved model (save, then load it)"
                )
            import onnxruntime

            path = export_onnx(self, self._directory, int8=self.inference.runtime == "onnx-int8")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.inference.thread_count
            options.inter_op_num_threads = 1
            self._runner = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        return self._runner

    # -- persistence -----------------------------------------------------------------------

    def head_tensors(self) -> dict[str, Tensor]:
        return {
            f"heads.{name}.{key}": value.detach().cpu().contiguous()
            for name, head in self.model.heads.items()
            for key, value in head.state_dict().items()
        }

    def save(self, directory: Path, meta: dict[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``heads.safetensors``, ``encoder/`` and a model card."""
        directory.mkdir(parents=True, exist_ok=True)
        encoder_dir = directory / ENCODER_DIR
        self.model.encoder.save_pretrained(encoder_dir)
        self.tokenizer.save_pretrained(encoder_dir)
        save_file(self.head_tensors(), str(directory / HEADS_FILE))
        readable_as_umask_allows(directory / HEADS_FILE)
        stale = directory / ONNX_DIR
        if stale.is_dir():  # an export of earlier weights
            for path in stale.iterdir():
                path.unlink()
            stale.rmdir()
        self.meta.update(meta or {})
        digest = hashlib.sha256((directory / HEADS_FILE).read_bytes())
        for path in sorted(encoder_dir.glob("*.safetensors")):
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        digest.update(json.dumps(self.meta.get("thresholds", {}), sort_keys=True).encode())
        self.meta["version"] = digest.hexdigest()[:12]
        config = {
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "name": self.name,
            **{k: v for k, v in self.meta.items() if k != "name"},
            "base_model": self.base_model,
            "transformer": asdict(self.config),
            "inference": asdict(self.inference),
            "non_default_hyperparameters": {
                **self.config.non_defaults(),
                **self.meta.get("training_arguments", {}),
            },
            "heads": {name: asdict(spec) for name, spec in self.heads.items()},
            "library_versions": library_versions(),
        }
        (directory / CONFIG_FILE).write_text(
            json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        write_model_card(
            directory,
            config,
            files=(
                f"`{CONFIG_FILE}` (this card's source), `{HEADS_FILE}` (task heads), "
                f"`{ENCODER_DIR}/` (Hugging Face encoder checkpoint: config, safetensors, "
                "tokenizer). No pickle is used."
            ),
        )
        self._directory = directory
        return directory

    @classmethod
    def load(
        cls, directory: Path, inference: InferenceConfig | dict[str, Any] | None = None
    ) -> TransformerEngine:
        """Load a model saved by :meth:`save`; ``inference`` overrides the saved inference
        settings (a config, or a mapping of the fields to change)."""
        config_path, heads_path = directory / CONFIG_FILE, directory / HEADS_FILE
        for path in (config_path, heads_path, directory / ENCODER_DIR / CONFIG_FILE):
            if not path.is_file():
                raise ModelError(
                    f"{directory}: not a transformer model directory "
                    f"({path.relative_to(directory)} missing)"
                )
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            tensors = load_file(str(heads_path))
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelError(f"{directory}: unreadable model files ({exc})") from exc
        if not isinstance(saved, dict) or (saved.get("engine"), saved.get("format_version")) != (
            cls.engine,
            FORMAT_VERSION,
        ):
            got = (
                saved
                if not isinstance(saved, dict)
                else {k: saved.get(k) for k in ("engine", "format_version")}
            )
            raise ModelError(
                f"{config_path}: expected engine 'transformer' format {FORMAT_VERSION} "
                f"(got {got!r})"
            )
        try:
            heads = {name: HeadSpec(**spec) for name, spec in saved["heads"].items()}
            config = TransformerConfig(**saved["transformer"])
            settings = InferenceConfig(**saved.get("inference", {}))
            if isinstance(inference, InferenceConfig):
                settings = inference
            elif inference:
                settings = replace(settings, **inference)
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelError(f"{config_path}: incomplete or inconsistent config ({exc})") from exc
        encoder, tokenizer = load_pretrained(str(directory / ENCODER_DIR))
        model = MultiTaskModel(encoder, heads, config)
        try:
            model.heads.load_state_dict(
                {key.removeprefix("heads."): value for key, value in tensors.items()}
            )
        except RuntimeError as exc:
            raise ModelError(f"{heads_path}: heads do not match the config ({exc})") from exc
        torch.set_num_threads(settings.thread_count)
        meta = {
            k: v
            for k, v in saved.items()
            if k
            not in {
                "format_version",
                "engine",
                "base_model",
                "transformer",
                "inference",
                "non_default_hyperparameters",
                "heads",
                "library_versions",
            }
        }
        engine = cls(
            model,
            tokenizer,
            heads,
            base_model=str(saved.get("base_model", "")),
            inference=settings,
            meta=meta,
        )
        engine._directory = directory
        return engine


def export_onnx(engine: TransformerEngine, directory: Path, *, int8: bool) -> Path:
    """``onnx/model.onnx`` (and ``onnx/model.int8.onnx`` when ``int8``) beside a saved model;
    existing files are reused (``save`` removes them when the weights change)."""
    target = directory / ONNX_DIR / ("model.int8.onnx" if int8 else "model.onnx")
    if target.is_file():
        return target
    fp32 = directory / ONNX_DIR / "model.onnx"
    fp32.parent.mkdir(exist_ok=True)
    if not fp32.is_file():
        graph = _ProbabilityGraph(engine.model).cpu().eval()
        example = engine.batches(["示例文本", "另一个更长一些的示例文本"])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (torch.from_numpy(example.input_ids), torch.from_numpy(example.attention_mask)),
                str(fp32),
                input_names=["input_ids", "attention_mask"],
                output_names=list(engine.heads),
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    **{name: {0: "batch"} for name in engine.heads},
                },
                opset_version=17,
                dynamo=False,
            )
        engine.model.to(engine.device)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
    return target
