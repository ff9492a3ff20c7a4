"""Choosing the situation head's regularisation and ``SelectionWeights``, out of fold.

The topic head and the situation head are fitted in 5 folds of the seed *training* split (the
dev split plays no part; the bank's example messages are in every fold's training rows). Each
labeled training complaint then gets out-of-fold probabilities, its similarity to every
situation's examples and its keyword hits, and every candidate blend picks the best (topic,
situation) of the bank for it: a pick fits when it is the labeled topic and the labeled (or an
acceptable) situation. The blend with the highest fit rate is the one the code ships.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import numpy as np
from common import markdown_table, write_result
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from triage.drafts import ExampleIndex, SelectionWeights
from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.replies import load_situation_keywords, load_template_bank
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path
from triage.training.situations import (
    load_situation_labels,
    seed_situations_path,
    situation_head_data,
    situation_head_labels,
)
from triage.training.train import prepare_text

CLASSIFIER = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
SIMILARITY = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)
KEYWORD = (0.0, 0.025, 0.05, 0.1, 0.2)


def out_of_fold(c_values: list[float]) -> dict[str, Any]:
    """Out-of-fold signals for every labeled training complaint, per situation of the bank."""
    taxonomy = load_taxonomy()
    bank = load_template_bank(taxonomy)
    keywords = load_situation_keywords(bank)
    records = load_corpus(seed_corpus_path("train"), taxonomy)
    labels = load_situation_labels(seed_situations_path(), bank, records)
    texts = [prepare_text(r.text) for r in records]
    topics, situations = taxonomy.topic_ids, bank.situations()
    position = {r.id: i for i, r in enumerate(records)}
    rows = np.array([position[label.id] for label in labels])
    gold = np.array([topics.index(r.topic) for r in records])
    head_labels = situation_head_labels(bank)
    topic_p = np.zeros((len(records), len(topics)))
    classifier_p = {c: np.zeros((len(records), len(situations))) for c in c_values}
    folds = StratifiedKFold(5, shuffle=True, random_state=0).split(texts, gold)
    for fit_rows, held_out in tqdm(list(folds), desc="folds", unit="fold"):
        fit_records = [records[i] for i in fit_rows]
        fit_texts = [texts[i] for i in fit_rows]
        situation_rows = situation_head_data(fit_records, fit_texts, labels, bank, prepare_text)
        # One head per regularisation value over one shared featurizer.
        data = {"topic": HeadData(fit_texts, [r.topic for r in fit_records])}
        data.update({f"situation@{c}": situation_rows for c in c_values})
        default = LinearConfig()
        config = LinearConfig(
            regularization_c={**default.regularization_c, **{f"situation@{c}": c for c in c_values}}
        )
        engine = LinearEngine.fit(
            config,
            data,
            {"topic": topics, **{f"situation@{c}": head_labels for c in c_values}},
            idf_head="topic",
        )
        probs = engine.predict_proba([texts[i] for i in held_out])
        topic_p[held_out] = probs["topic"]
        for c in c_values:
            classifier_p[c][held_out] = probs[f"situation@{c}"]
    index = ExampleIndex(bank.templates)
    all_topics = sorted({topic for topic, _ in situations})
    similarity, hits = [], []
    for i in tqdm(rows, desc="similarity and keywords", unit="msg"):
        by_key = index.similarities(texts[i])
        found = keywords.hits(texts[i], all_topics)
        similarity.append([by_key[key] for key in situations])
        hits.append([len(found.get(key, [])) for key in situations])
    fits = np.array(
        [[t == label.topic and s in label.fitting for t, s in situations] for label in labels]
    )
    situation_topic = np.array([topics.index(t) for t, _ in situations])
    return {
        "topic": topic_p[rows][:, situation_topic],
        "topic_right": topic_p[rows].argmax(axis=1) == gold[rows],
        "classifier": {c: p[rows] for c, p in classifier_p.items()},
        "similarity": np.array(similarity),
        "keywords": np.array(hits, np.float64),
        "fits": fits,
        "gold_topic_mask": situation_topic[None, :] == gold[rows][:, None],
    }


def fit_rate(scores: NDArray[np.float64], fits: NDArray[np.bool_]) -> float:
    return float(fits[np.arange(len(fits)), scores.argmax(axis=1)].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--c", default="2,4,8,16", help="situation head regularisation values to compare"
    )
    args = parser.parse_args()
    c_values = [float(c) for c in args.c.split(",")]
    signals = out_of_fold(c_values)
    fits, has = signals["fits"], signals["fits"].any(axis=1)
    print(f"{len(fits)} labeled complaints, {int(has.sum())} with a situation in the bank")
    heads = []
    for c, classifier in signals["classifier"].items():
        within = np.where(signals["gold_topic_mask"], classifier, -1.0)
        heads.append(
            {
                "C": c,
                "classifier alone": round(fit_rate(classifier, fits), 3),
                "situation right given the labeled topic": round(
                    fit_rate(within[has], fits[has]), 3
                ),
            }
        )
    print(markdown_table(list(heads[0]), [list(h.values()) for h in heads]))
    best_c = max(heads, key=lambda h: h["situation right given the labeled topic"])["C"]
    classifier = signals["classifier"][best_c]
    blends = []
    for w_classifier, w_similarity, w_keyword in itertools.product(CLASSIFIER, SIMILARITY, KEYWORD):
        weights = SelectionWeights(1.0, w_classifier, w_similarity, w_keyword)
        scores = weights.combine(
            signals["topic"], classifier, signals["similarity"], signals["keywords"]
        )
        blends.append(
            {
                "classifier": w_classifier,
                "similarity": w_similarity,
                "keyword": w_keyword,
                "fit": round(fit_rate(scores, fits), 4),
            }
        )
    blends.sort(key=lambda b: -b["fit"])
    # The same signals without the situation head, as drafts rank them for other models:
    # situations of the topic head's choice, by similarity and keywords.
    top_topic = signals["topic"] >= signals["topic"].max(axis=1, keepdims=True)
    without = np.where(
        top_topic, signals["similarity"] + 0.15 * np.minimum(signals["keywords"], 3), -1.0
    )
    print(f"\nwithout the situation head: fit {fit_rate(without, fits):.3f}")
    print(f"topic head right: {signals['topic_right'].mean():.3f}")
    print(f"\nbest blends for C={best_c} (topic weight 1):")
    print(markdown_table(list(blends[0]), [list(b.values()) for b in blends[:10]]))
    shipped = SelectionWeights()
    shipped_fit = fit_rate(
        shipped.combine(signals["topic"], classifier, signals["similarity"], signals["keywords"]),
        fits,
    )
    print(f"\nshipped {shipped}: fit {shipped_fit:.4f}")
    result = {
        "labeled_complaints": len(fits),
        "with_a_situation": int(has.sum()),
        "topic_head_right": round(float(signals["topic_right"].mean()), 4),
        "situation_heads": heads,
        "chosen_c": best_c,
        "without_situation_head_fit": round(fit_rate(without, fits), 4),
        "best_blends": blends[:10],
        "shipped_weights": vars(shipped),
        "shipped_fit": round(shipped_fit, 4),
    }
    print(f"\nwrote {write_result('situation_weights', result)}")


if __name__ == "__main__":
    main()
