"""Transformer encoders: naming a base model, mean-pooled embeddings, sentence-transformers export.

A base model can be named three ways, all offline once the files are on disk: a local Hugging Face
checkpoint directory, the name of an encoder imported into the encoders directory (``triage models
import-e5`` writes ``multilingual-e5-small`` there), or a hub id (``bert-base-chinese``,
``hfl/chinese-roberta-wwm-ext``) already in the local Hugging Face cache, or reachable online.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from triage.errors import InputError, ModelError
from triage.models.card import library_versions
from triage.models.e5_import import read_encoder_metadata

if TYPE_CHECKING:
    import torch

FloatArray = NDArray[np.float32]

HF_CONFIG_FILE = "config.json"
ENCODER_SUBDIR = "encoder"
# Files that carry a tokenizer in a Hugging Face checkpoint (any one of the first group).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model")
_TOKENIZER_EXTRAS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5")
_ST_LIBRARIES = ("sentence-transformers", "transformers", "tokenizers", "torch")


def _is_hf_checkpoint(directory: Path) -> bool:
    """A directory with a ``config.json`` that names a transformers ``model_type``."""
    path = directory / HF_CONFIG_FILE
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    return isinstance(config, dict) and "model_type" in config


def resolve_base_model(
    name_or_path: str | Path,
    *,
    encoders_dir: Path | None = None,
    local_files_only: bool | None = None,
    cache_dir: Path | None = None,
) -> str:
    """Where to load the base model ``name_or_path`` from: a local directory or a hub id.

    Tried in order: an existing directory; ``encoders_dir / name`` (imported encoders); the
    local Hugging Face cache (its snapshot directory is returned, so loading needs no network);
    the hub itself, unless ``local_files_only`` or ``HF_HUB_OFFLINE=1``.
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    name = str(name_or_path)
    tried: list[str] = []
    for candidate in (Path(name).expanduser(), *([encoders_dir / name] if encoders_dir else [])):
        if candidate.is_dir():
            if not _is_hf_checkpoint(candidate):
                raise ModelError(
                    f"{candidate}: not a Hugging Face checkpoint (expected a {HF_CONFIG_FILE} "
                    "with a model_type)"
                )
            return str(candidate)
        tried.append(f"no directory {candidate}")
    hint = (
        "run `triage models import-e5` to import multilingual-e5-small offline, or name a "
        "local checkpoint directory"
    )
    try:
        cached = try_to_load_from_cache(name, HF_CONFIG_FILE, cache_dir=cache_dir)
    except HFValidationError as exc:
        raise ModelError(
            f"base model {name!r}: {'; '.join(tried)}, and not a valid hub id ({exc}); {hint}"
        ) from exc
    if isinstance(cached, str):
        return str(Path(cached).parent)
    tried.append("not in the local Hugging Face cache")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if local_files_only:
        raise ModelError(f"base model {name!r}: {'; '.join(tried)}; offline mode; {hint}")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name, timeout=10)
    except Exception as exc:  # transport, HTTP and not-found errors of the hub client
        raise ModelError(
            f"base model {name!r}: {'; '.join(tried)}; the hub cannot be asked "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    return name


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings of a Hugging Face encoder.

    Shaped like a transformers pipeline: :meth:`preprocess` adds the prompt and tokenizes,
    :meth:`_forward` is the only step that runs the model, :meth:`postprocess` averages the
    token vectors under the attention mask (special and prompt tokens included, as e5 and
    sentence-transformers do) and normalises.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        prompt: str = "",
        max_length: int | None = None,
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1:
            raise InputError(f"batch_size: expected a positive integer (got {batch_size})")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
            self.model = _load_without_pooler(AutoModel, str(model)).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"{model}: cannot be loaded as an encoder ({exc})") from exc
        self.prompt = prompt
        self.max_length = max_length or min(self.tokenizer.model_max_length, 512)
        self.batch_size = batch_size

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids the model sees for each text, prompt and special tokens included."""
        encoded = self.tokenizer(
            [self.prompt + text for text in texts], truncation=True, max_length=self.max_length
        )
        return [list(row) for row in encoded["input_ids"]]

    def preprocess(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                [self.prompt + text for text in texts],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    def _forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        return {"hidden": hidden, "attention_mask": inputs["attention_mask"]}

    def postprocess(self, outputs: dict[str, torch.Tensor]) -> FloatArray:
        mask = outputs["attention_mask"].unsqueeze(-1).to(outputs["hidden"].dtype)
        pooled = (outputs["hidden"] * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        vectors: FloatArray = pooled.float().numpy()
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def __call__(self, texts: Sequence[str]) -> FloatArray:
        batches = [
            self.postprocess(self._forward(self.preprocess(texts[start : start + self.batch_size])))
            for start in range(0, len(texts), self.batch_size)
        ]
        width = self.model.config.hidden_size
        return np.concatenate(batches) if batches else np.zeros((0, width), np.float32)


def _load_without_pooler(auto_model: Any, path: str) -> Any:
    """Mean pooling needs no pooler: skip it where the architecture has one (BERT, XLM-R...),
    rather than initialise it at random with a warning when the checkpoint has none."""
    try:
        return auto_model.from_pretrained(path, add_pooling_layer=False)
    except TypeError:  # an architecture without a pooler option
        return auto_model.from_pretrained(path)


def find_encoder_dir(path: Path) -> Path:
    """The Hugging Face encoder inside ``path``: ``path`` itself, or its ``encoder/`` folder
    (where a saved triage transformer model keeps its fine-tuned encoder)."""
    for candidate in (path, path / ENCODER_SUBDIR):
        if candidate.is_dir() and _is_hf_checkpoint(candidate):
            return candidate
    raise ModelError(
        f"{path}: no Hugging Face encoder in it (expected {HF_CONFIG_FILE} with a model_type "
        f"in the directory or in its {ENCODER_SUBDIR}/ folder)"
    )


def _encoder_files(encoder: Path) -> list[Path]:
    """Config, safetensors weights and tokenizer files to copy; refuses pickled weights."""
    weights = sorted(encoder.glob("*.safetensors"))
    index = encoder / "model.safetensors.index.json"
    if not weights:
        pickled = [name for name in _PICKLE_WEIGHTS if (encoder / name).exists()]
        found = f" (found {', '.join(pickled)}: pickle is not exported)" if pickled else ""
        raise ModelError(
            f"{encoder}: no safetensors weights{found}; re-save the model with "
            "save_pretrained(safe_serialization=True)"
        )
    tokenizer_dirs = [encoder, encoder.parent] if encoder.name == ENCODER_SUBDIR else [encoder]
    for directory in tokenizer_dirs:
        tokenizer = [directory / n for n in _TOKENIZER_FILES if (directory / n).is_file()]
        if tokenizer:
            extras = [directory / n for n in _TOKENIZER_EXTRAS if (directory / n).is_file()]
            meta = [index] if index.is_file() else []
            return [encoder / HF_CONFIG_FILE, *weights, *meta, *tokenizer, *extras]
    expected = ", ".join(_TOKENIZER_FILES)
    raise ModelError(f"{encoder}: no tokenizer beside the encoder (expected one of {expected})")


def _max_seq_length(encoder: Path, config: Mapping[str, Any]) -> int:
    """The longest input the encoder takes: the tokenizer's limit, else the position table's."""
    positions = int(config.get("max_position_embeddings", 512))
    if "roberta" in str(config.get("model_type", "")):
        positions -= int(config.get("pad_token_id", 1)) + 1  # XLM-R/RoBERTa position offset
    tokenizer_config = encoder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        limit = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(limit, int) and 0 < limit < positions:
            return limit
    return positions


def export_sentence_transformers(
    model: str | Path,
    out_dir: Path,
    *,
    encoders_dir: Path | None = None,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """Write ``model``'s encoder as a sentence-transformers model: transformer files at the
    root, mean pooling (``1_Pooling``) and L2 normalisation (``2_Normalize``).

    ``model`` is any Hugging Face encoder directory, a saved triage transformer model (its
    ``encoder/`` folder is used) or a base model name (see :func:`resolve_base_model`). Prompts
    default to those recorded by ``triage models import-e5`` (e5's ``query: ``/``passage: ``).
    """
    path = Path(model).expanduser()
    if not path.is_dir():
        path = Path(resolve_base_model(model, encoders_dir=encoders_dir, local_files_only=True))
    encoder = find_encoder_dir(path)
    config = json.loads((encoder / HF_CONFIG_FILE).read_text(encoding="utf-8"))
    recorded = read_encoder_metadata(encoder)
    prompts = dict(recorded.get("prompts", {}) if prompts is None else prompts)
    if default_prompt_name is None:
        default_prompt_name = recorded.get("default_prompt_name") if prompts else None
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise InputError(
            f"default prompt {default_prompt_name!r}: expected one of {sorted(prompts)}"
        )
    if out_dir.resolve() == encoder.resolve():
        raise InputError(f"{out_dir}: the export must go to a directory other than the encoder")
    files = _encoder_files(encoder)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copyfile(path, out_dir / path.name)
        _write_json(
            out_dir / "modules.json",
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ],
        )
        max_length = _max_seq_length(encoder, config)
        _write_json(
            out_dir / "sentence_bert_config.json",
            {"max_seq_length": max_length, "do_lower_case": False},
        )
        versions = library_versions(_ST_LIBRARIES)
        _write_json(
            out_dir / "config_sentence_transformers.json",
            {
                "__version__": {
                    "sentence_transformers": versions.get("sentence-transformers", "unknown"),
                    "transformers": versions.get("transformers", "unknown"),
                    "pytorch": versions.get("torch", "unknown"),
                },
                "prompts": prompts,
                "default_prompt_name": default_prompt_name,
                "similarity_fn_name": "cosine",
            },
        )
        pooling: dict[str, Any] = {
            "word_embedding_dimension": int(config["hidden_size"]),
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        }
        (out_dir / "1_Pooling").mkdir(exist_ok=True)
        _write_json(out_dir / "1_Pooling" / "config.json", pooling)
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
        _write_st_card(out_dir, encoder, config, prompts, default_prompt_name, max_length)
    except OSError as exc:
        raise ModelError(f"{out_dir}: cannot be written ({exc.strerror or exc})") from exc
    return out_dir


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_st_card(
    out_dir: Path,
    encoder: Path,
    config: Mapping[str, Any],
    prompts: Mapping[str, str],
    default_prompt_name: str | None,
    max_length: int,
) -> None:
    prompt_lines = [f"- `{name}`: {text!r}" for name, text in prompts.items()] or ["none"]
    default = f"`{default_prompt_name}`" if default_prompt_name else "none"
    usage = [
        "```python",
        "from sentence_transformers import SentenceTransformer",
        f'model = SentenceTransformer("{out_dir}")',
        'vectors = model.encode(["快递三天没更新了", "物流一直不动"])',
        "similarity = model.similarity(vectors, vectors)",
        "```",
    ]
    sections = [
        "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n"
        "tags: [sentence-transformers, feature-extraction, triage]\n---",
        f"# Sentence embeddings from `{encoder}`",
        "Exported by `triage models export-st` for similarity search (reply ranking, "
        "repeated-contact detection): the encoder's files at the root, mean pooling over all "
        "tokens under the attention mask (`1_Pooling`), L2 normalisation (`2_Normalize`); "
        "compare vectors by cosine (= dot product).",
        "## Model",
        f"- architecture: {config.get('model_type')}, hidden size {config.get('hidden_size')}, "
        f"{config.get('num_hidden_layers')} layers",
        f"- inputs longer than {max_length} tokens are truncated",
        "## Prompts",
        *prompt_lines,
        f"Default prompt: {default} (added by `encode` unless another `prompt_name` is given).",
        "## Usage",
        "\n".join(usage),
    ]
    source_card = encoder / "README.md"
    if source_card.is_file():
        sections += ["## Source model card", _without_front_matter(source_card.read_text("utf-8"))]
    (out_dir / "README.md").write_text("\n\n".join(sections) + "\n", encoding="utf-8")


def _without_front_matter(card: str) -> str:
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end >= 0:
            return card[end + 5 :].strip()
    return card.strip()
