"""Character-bigram similarity of short Chinese texts: no segmentation and no model, so it works
for any text the pipeline masks, and two wordings of one problem still share most bigrams."""

from __future__ import annotations

import math
import re
from collections import Counter

_SPACE = re.compile(r"\s+")


def char_bigrams(text: str) -> Counter[str]:
    """Counts of adjacent character pairs, ignoring whitespace and letter case."""
    text = _SPACE.sub("", text.lower())
    return Counter(map(str.__add__, text, text[1:]))


def cosine(left: Counter[str], right: Counter[str]) -> float:
    """Cosine of two count vectors; 0.0 when either is empty."""
    if len(left) > len(right):
        left, right = right, left
    dot = sum(count * right[gram] for gram, count in left.items() if gram in right)
    if not dot:
        return 0.0
    norm = math.sqrt(sum(c * c for c in left.values()) * sum(c * c for c in right.values()))
    return dot / norm
