"""Character-bigram similarity of short Chinese texts: no segmentation and no model, so it works
for any text the pipeline masks, and two wordings of one problem still share most bigrams."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
from numpy.typing import NDArray

_SPACE = re.compile(r"\s+")


def _bigram_text(text: str) -> str:
    return _SPACE.sub("", text.lower())


def char_bigrams(text: str) -> Counter[str]:
    """Counts of adjacent character pairs, ignoring whitespace and letter case."""
    text = _bigram_text(text)
    return Counter(map(str.__add__, text, text[1:]))


# A code point fits in 21 bits: a pair fits in 42, and a text's index in the rest.
_CODE_BITS = np.uint64(21)
PAIR_BITS = np.uint64(42)


def bigram_code(bigram: str) -> int:
    """A character pair as one integer: the first code point in the high bits."""
    return ord(bigram[0]) << int(_CODE_BITS) | ord(bigram[1])


def bigram_codes(text: str) -> NDArray[np.uint64]:
    """The :func:`bigram_code` of every pair :func:`char_bigrams` counts, in text order:
    the same pairs in a few array operations instead of a dictionary per text."""
    points = np.frombuffer(_bigram_text(text).encode("utf-32-le"), np.uint32).astype(np.uint64)
    codes: NDArray[np.uint64] = points[:-1] << _CODE_BITS | points[1:]
    return codes


def cosine(left: Counter[str], right: Counter[str]) -> float:
    """Cosine of two count vectors; 0.0 when either is empty."""
    if len(left) > len(right):
        left, right = right, left
    dot = sum(count * right[gram] for gram, count in left.items() if gram in right)
    if not dot:
        return 0.0
    norm = math.sqrt(sum(c * c for c in left.values()) * sum(c * c for c in right.values()))
    return dot / norm
