"""Training messages whose label the model contradicts out of fold: candidates for a label audit.

Fits the linear engine's topic, sentiment, urgency and complaint heads in k folds of the seed
training split (stratified by topic, as ``bench/heldout_cv.py``) and flags a message's label
when the held-out probability of that label is below ``--below`` while another label is above
``--above``. The candidates go to people who judge them blind (text and channel only, never the
label or the model's answer); a label changes only where two of them agree against it
(docs/benchmarks.md section 1, session 23). Writes one JSON object per flagged message:
``{"id", "channel", "text", "flags": {head: {"label", "predicted", "p_label", "p_predicted"}}}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import at_least_two, topic_folds
from tqdm import tqdm

from triage.models.linear import FloatArray, HeadData, LinearConfig, LinearEngine
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord, load_corpus, prepare_text, seed_corpus_path
from triage.training.train import CORPUS_LABELS, label_sets


def out_of_fold(
    folds: int,
) -> tuple[list[CorpusRecord], dict[str, FloatArray], dict[str, list[str]]]:
    """The training messages, and each one's held-out probabilities per corpus head (columns in
    the order of the head's labels)."""
    taxonomy = load_taxonomy()
    rows = load_corpus(seed_corpus_path("train"), taxonomy)
    texts = [prepare_text(r.text) for r in rows]
    sets = label_sets(taxonomy)
    probs: dict[str, FloatArray] = {}
    labels: dict[str, list[str]] = {}
    for train, test in tqdm(topic_folds([r.topic for r in rows], folds), desc="folds", unit="fold"):
        data = {
            head: HeadData([texts[i] for i in train], [get(rows[i]) for i in train])
            for head, get in CORPUS_LABELS.items()
        }
        engine = LinearEngine.fit(LinearConfig(), data, sets, idf_head="topic")
        held_out = engine.predict_proba([texts[i] for i in test])
        for head in CORPUS_LABELS:
            labels[head] = list(engine.heads[head].labels)
            probs.setdefault(head, np.zeros((len(rows), len(labels[head])), np.float32))[test] = (
                held_out[head]
            )
    return rows, probs, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=at_least_two, default=5)
    parser.add_argument("--below", type=float, default=0.02, help="held-out p(label) under this")
    parser.add_argument("--above", type=float, default=0.95, help="another label's p over this")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of flagged messages")
    args = parser.parse_args()
    rows, probs, labels = out_of_fold(args.folds)
    flagged: dict[int, dict[str, dict[str, object]]] = {}
    for head, p in probs.items():
        column = {label: j for j, label in enumerate(labels[head])}
        for i, label in enumerate(CORPUS_LABELS[head](r) for r in rows):
            best = int(p[i].argmax())
            p_label = float(p[i, column[label]])
            if p_label < args.below and p[i, best] > args.above:
                flagged.setdefault(i, {})[head] = {
                    "label": label,
                    "predicted": labels[head][best],
                    "p_label": round(p_label, 4),
                    "p_predicted": round(float(p[i, best]), 4),
                }
    with args.out.open("w", encoding="utf-8") as out:
        for i in sorted(flagged):
            record = rows[i]
            row = {"id": record.id, "channel": record.channel, "text": record.text}
            out.write(json.dumps({**row, "flags": flagged[i]}, ensure_ascii=False) + "\n")
    by_head = {h: sum(h in f for f in flagged.values()) for h in probs}
    print(f"{len(flagged)} of {len(rows)} messages flagged ({by_head}); wrote {args.out}")


if __name__ == "__main__":
    main()
