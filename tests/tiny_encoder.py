"""A tiny randomly initialised XLM-R encoder with a character tokenizer, built locally.

Tests that need a transformer use this instead of a pretrained checkpoint: no network, a few
thousand parameters, and the same on-disk format (config, safetensors, tokenizer.json) as a
real Hugging Face checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def build_tiny_encoder(
    directory: Path, texts: Iterable[str], *, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Write an encoder checkpoint whose vocabulary is the characters of ``texts``."""
    characters = sorted({c for text in texts for c in text.lower() if not c.isspace()})
    vocab = {token: i for i, token in enumerate(SPECIALS + characters)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Split("", "isolated")]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=128,
    )
    config = XLMRobertaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
