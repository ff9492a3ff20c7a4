"""Does a new corpus round help predict the earlier corpus? (dev plays no part)

The seed training split gets its rounds appended with rising ids. This splits it at
``--first-id`` into the earlier rows and the round's rows, cross-validates over the earlier rows
(5 stratified folds by topic) and fits the default linear engine's topic, sentiment, urgency
and complaint heads on each training fold twice: without and with the round's rows. Each head's
macro-F1 on the held-out folds tells whether the round carries over to messages written
earlier, by other writers: a check of a round that does not spend the dev set.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
from common import add_linear_option, markdown_table, write_result
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord, load_corpus, seed_corpus_path
from triage.training.train import label_sets, prepare_text

LABELS: dict[str, Callable[[CorpusRecord], str]] = {
    "topic": lambda r: r.topic,
    "sentiment": lambda r: r.sentiment,
    "urgency": lambda r: r.urgency,
    "complaint": lambda r: "yes" if r.is_complaint else "no",
}


def id_number(record: CorpusRecord) -> int:
    return int(record.id.rsplit("-", 1)[1])


def measure(first_id: int, config: LinearConfig, folds: int) -> dict[str, Any]:
    taxonomy = load_taxonomy()
    rows = load_corpus(seed_corpus_path("train"), taxonomy)
    earlier = [r for r in rows if id_number(r) < first_id]
    round_rows = [r for r in rows if id_number(r) >= first_id]
    if not earlier or not round_rows:
        raise SystemExit(f"--first-id {first_id}: expected rows on both sides of it")
    texts = [prepare_text(r.text) for r in earlier]
    round_texts = [prepare_text(r.text) for r in round_rows]
    sets = label_sets(taxonomy)
    scores: dict[str, dict[str, list[float]]] = {h: {"without": [], "with": []} for h in LABELS}
    split = StratifiedKFold(folds, shuffle=True, random_state=0)
    for fold, (train, test) in enumerate(split.split(texts, [r.topic for r in earlier])):
        for variant in ("without", "with"):
            records = [earlier[i] for i in train] + (round_rows if variant == "with" else [])
            fold_texts = [texts[i] for i in train] + (round_texts if variant == "with" else [])
            engine = LinearEngine.fit(
                config,
                {h: HeadData(fold_texts, [get(r) for r in records]) for h, get in LABELS.items()},
                sets,
                idf_head="topic",
            )
            probs = engine.predict_proba([texts[i] for i in test])
            for head, get in LABELS.items():
                labels = engine.heads[head].labels
                predicted = [labels[j] for j in probs[head].argmax(axis=1)]
                gold = [get(earlier[i]) for i in test]
                scores[head][variant].append(float(f1_score(gold, predicted, average="macro")))
        print(f"fold {fold + 1}/{folds} done", flush=True)
    summary = {}
    for head, by_variant in scores.items():
        gain = np.array(by_variant["with"]) - np.array(by_variant["without"])
        summary[head] = {
            "without": round(float(np.mean(by_variant["without"])), 4),
            "with": round(float(np.mean(by_variant["with"])), 4),
            "gain": round(float(gain.mean()), 4),
            "gain_sd_over_folds": round(float(gain.std(ddof=1)), 4),
            "folds_gaining": int((gain > 0).sum()),
        }
    return {
        "first_id": first_id,
        "earlier_rows": len(earlier),
        "round_rows": len(round_rows),
        "folds": folds,
        "macro_f1": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--first-id", type=int, required=True, help="number of the round's first id"
    )
    parser.add_argument("--folds", type=int, default=5)
    add_linear_option(parser)
    args = parser.parse_args()
    measured = measure(args.first_id, LinearConfig(**args.linear), args.folds)
    print(
        f"\n{measured['earlier_rows']} earlier rows, {measured['round_rows']} rows of the round\n"
    )
    rows = [
        [
            head,
            s["without"],
            s["with"],
            f"{s['gain']:+.4f} ({s['gain_sd_over_folds']})",
            f"{s['folds_gaining']}/{args.folds}",
        ]
        for head, s in measured["macro_f1"].items()
    ]
    print(
        markdown_table(
            ["head", "macro-F1 without", "with the round", "gain (sd over folds)", "folds gaining"],
            rows,
        )
    )
    print(f"\nwrote {write_result('corpus_round', measured)}")


if __name__ == "__main__":
    main()
