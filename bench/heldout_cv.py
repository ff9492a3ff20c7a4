"""Held-out macro-F1 and fit time of the corpus heads on the seed training split (no dev).

Cross-validates over the seed training split (stratified by topic) and fits the linear
engine's topic, sentiment, urgency and complaint heads on each training fold, once per
``--linear`` setting (the default ``LinearConfig`` when none is given). Reports each head's
macro-F1 on the held-out folds, the fit time per fold, and each setting's gain over the first
one, with its spread over the folds.

With ``--round-from ID`` the split is cut at that id (rounds are appended with rising ids):
the folds run over the earlier rows only, and every setting is fitted without and with the
round's rows. Does a new corpus round carry over to messages written earlier, by other writers?

With ``--situation-head`` each fold also fits the reply situation head, as training does, so
that a hidden layer listing it (``hidden_share``) learns it beside the corpus heads: does
sharing the layer with it change them?
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from common import add_linear_option, at_least_two, markdown_table, topic_folds, write_result
from sklearn.metrics import f1_score
from tqdm import tqdm

from triage.drafts import SITUATION_HEAD
from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.replies import load_template_bank
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord, load_corpus, prepare_text, seed_corpus_path
from triage.training.situations import (
    load_situation_labels,
    seed_situations_path,
    situation_head_data,
    situation_head_labels,
)
from triage.training.train import CORPUS_LABELS, label_sets

Variant = tuple[str, LinearConfig, bool]  # name, setting, with the round's rows


def id_number(record: CorpusRecord) -> int:
    return int(record.id.rsplit("-", 1)[1])


def measure(
    variants: list[Variant], folds: int, round_from: int | None, situation_head: bool = False
) -> dict[str, Any]:
    taxonomy = load_taxonomy()
    rows = load_corpus(seed_corpus_path("train"), taxonomy)
    bank = load_template_bank(taxonomy)
    situations = load_situation_labels(seed_situations_path(), bank, rows) if situation_head else []
    earlier = [r for r in rows if round_from is None or id_number(r) < round_from]
    round_rows = [r for r in rows if round_from is not None and id_number(r) >= round_from]
    if round_from is not None and not (earlier and round_rows):
        raise SystemExit(f"--round-from {round_from}: expected rows on both sides of that id")
    texts = [prepare_text(r.text) for r in earlier]
    round_texts = [prepare_text(r.text) for r in round_rows]
    sets = label_sets(taxonomy)
    if situation_head:
        sets[SITUATION_HEAD] = situation_head_labels(bank)
    scores: dict[str, dict[str, list[float]]] = {
        name: {head: [] for head in CORPUS_LABELS} for name, _, _ in variants
    }
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for train, test in tqdm(
        topic_folds([r.topic for r in earlier], folds), desc="folds", unit="fold"
    ):
        for name, config, with_round in variants:
            records = [earlier[i] for i in train] + (round_rows if with_round else [])
            fold_texts = [texts[i] for i in train] + (round_texts if with_round else [])
            data = {
                h: HeadData(fold_texts, [get(r) for r in records])
                for h, get in CORPUS_LABELS.items()
            }
            if situation_head:
                data[SITUATION_HEAD] = situation_head_data(
                    records, fold_texts, situations, bank, prepare_text
                )
            started = time.perf_counter()
            engine = LinearEngine.fit(config, data, sets, idf_head="topic")
            seconds[name].append(time.perf_counter() - started)
            probs = engine.predict_proba([texts[i] for i in test])
            for head, get in CORPUS_LABELS.items():
                labels = engine.heads[head].labels
                predicted = [labels[j] for j in probs[head].argmax(axis=1)]
                gold = [get(earlier[i]) for i in test]
                scores[name][head].append(float(f1_score(gold, predicted, average="macro")))
    first = variants[0][0]
    summary: dict[str, Any] = {}
    for name, by_head in scores.items():
        summary[name] = {"fit_seconds_per_fold": round(float(np.mean(seconds[name])), 1)}
        for head, values in by_head.items():
            gain = np.array(values) - np.array(scores[first][head])
            summary[name][head] = {
                "macro_f1": round(float(np.mean(values)), 4),
                "gain": round(float(gain.mean()), 4),
                "gain_sd_over_folds": round(float(gain.std(ddof=1)), 4),
                "folds_gaining": int((gain > 0).sum()),
            }
    return {
        "folds": folds,
        "round_from": round_from,
        "rows": len(earlier),
        "round_rows": len(round_rows),
        "situation_head": situation_head,
        "settings": {name: config.non_defaults() for name, config, _ in variants},
        "results": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=at_least_two, default=5)
    parser.add_argument("--round-from", type=int, help="first id number of a corpus round to judge")
    add_linear_option(parser, repeatable=True)
    parser.add_argument(
        "--situation-head",
        action="store_true",
        help="also fit the reply situation head in each fold (not scored), as training does",
    )
    args = parser.parse_args()
    settings = [(f"setting {i + 1}", LinearConfig(**s)) for i, s in enumerate(args.linear or [{}])]
    variants: list[Variant] = [
        (f"{name}{suffix}", config, with_round)
        for name, config in settings
        for suffix, with_round in (
            (("", False),) if args.round_from is None else ((", without", False), (", with", True))
        )
    ]
    measured = measure(variants, args.folds, args.round_from, args.situation_head)
    print(f"\n{measured['rows']} rows in the folds, {measured['round_rows']} rows of the round")
    for name, changed in measured["settings"].items():
        print(f"{name}: {changed or 'LinearConfig defaults'}")
    rows = [
        [
            name,
            result["fit_seconds_per_fold"],
            *(
                f"{result[h]['macro_f1']:.4f} ({result[h]['gain']:+.4f} ± "
                f"{result[h]['gain_sd_over_folds']:.4f}, {result[h]['folds_gaining']}/{args.folds})"
                for h in CORPUS_LABELS
            ),
        ]
        for name, result in measured["results"].items()
    ]
    print()
    print(
        markdown_table(
            [
                "variant",
                "fit s/fold",
                *(f"{h} macro-F1 (gain, sd, folds gaining)" for h in CORPUS_LABELS),
            ],
            rows,
        )
    )
    print(f"\nwrote {write_result('heldout_cv', measured)}")


if __name__ == "__main__":
    main()
