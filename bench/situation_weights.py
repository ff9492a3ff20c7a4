"""Choosing how drafts pick a (topic, situation) for a message, out of fold.

The topic head and the situation head are fitted in 5 folds of the seed *training* split (the
dev split plays no part; the bank's example messages are in every fold's training rows). Each
labeled training complaint then gets out-of-fold probabilities, its similarity to every
situation's examples, its keyword hits, the share of its candidate topics among the other folds'
complaints and the votes of its nearest labeled complaints in the other folds. Every selection
rule picks one (topic, situation) of the bank per complaint; a pick fits when it is the labeled
topic and the labeled (or an acceptable) situation.

A rule with free weights is judged by a nested choice: for each fold the weights are chosen on
the other four folds' complaints and scored on this fold's, so the figure does not profit from
the choice itself ("nested"); "best" is the best weight setting scored on all complaints, the
setting the code ships when the rule is shipped.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import markdown_table, write_result
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from triage.drafts import ExampleIndex, SelectionWeights, complaint_topic_prior
from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.replies import load_situation_keywords, load_template_bank
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path
from triage.training.situations import (
    ACCEPTABLE_WEIGHT,
    NO_SITUATION,
    load_situation_labels,
    seed_situations_path,
    situation_head_data,
    situation_head_labels,
)
from triage.training.train import prepare_text

Array = NDArray[np.float64]
NEIGHBOURS = 20
CLASSIFIER = (0.25, 0.5, 1.0, 2.0)
SIMILARITY = (0.0, 0.0625, 0.125, 0.25)
KEYWORD = (0.0, 0.025, 0.05, 0.1)
PRIOR = (0.0, 0.05, 0.1, 0.2)
ACCEPTABLE = (0.0, ACCEPTABLE_WEIGHT)  # weight of the acceptable situations' rows
MARGIN = (0.0, 0.05, 0.1, 0.2, 0.3, 1.0)
BEFORE = SelectionWeights(1.0, 0.5, 0.125, 0.025, 0.0)  # the weights shipped before the prior


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
    # The (topic, situation) of each labeled complaint, -1 where the bank has none.
    key = {k: i for i, k in enumerate(situations)}
    labeled = np.full(len(records), -1)
    for label in labels:
        if label.situation != NO_SITUATION:
            labeled[position[label.id]] = key[(label.topic, label.situation)]
    head_labels = situation_head_labels(bank)
    situation_topic = np.array([topics.index(t) for t, _ in situations])
    topic_p = np.zeros((len(records), len(topics)))
    prior = np.zeros((len(records), len(situations)))
    votes = np.zeros((len(records), len(situations)))
    fold_of = np.zeros(len(records), np.int64)
    variants = list(itertools.product(c_values, ACCEPTABLE))
    classifier_p = {v: np.zeros((len(records), len(situations))) for v in variants}
    folds = StratifiedKFold(5, shuffle=True, random_state=0).split(texts, gold)
    for fold, (fit_rows, held_out) in enumerate(tqdm(list(folds), desc="folds", unit="fold")):
        fit_records = [records[i] for i in fit_rows]
        fit_texts = [texts[i] for i in fit_rows]
        # One head per variant over one shared featurizer: each regularisation value, with
        # and without rows for the acceptable situations.
        data = {"topic": HeadData(fit_texts, [r.topic for r in fit_records])}
        for weight in ACCEPTABLE:
            situation_rows = situation_head_data(
                fit_records, fit_texts, labels, bank, prepare_text, weight
            )
            data.update({f"situation@{c}/{weight}": situation_rows for c in c_values})
        default = LinearConfig()
        heads = [f"situation@{c}/{weight}" for c, weight in variants]
        regularization = {head: c for head, (c, _) in zip(heads, variants, strict=True)}
        config = LinearConfig(regularization_c={**default.regularization_c, **regularization})
        engine = LinearEngine.fit(
            config, data, {"topic": topics, **{h: head_labels for h in heads}}, idf_head="topic"
        )
        probs = engine.predict_proba([texts[i] for i in held_out])
        topic_p[held_out] = probs["topic"]
        for head, variant in zip(heads, variants, strict=True):
            classifier_p[variant][held_out] = probs[head]
        counts = {t: sum(r.is_complaint and r.topic == t for r in fit_records) for t in topics}
        log_share = complaint_topic_prior(counts, topics)
        prior[held_out] = [log_share[t] for t, _ in situations]
        votes[held_out] = neighbour_votes(
            engine,
            [texts[i] for i in held_out],
            [texts[i] for i in fit_rows],
            labeled[fit_rows],
            len(situations),
        )
        fold_of[held_out] = fold
    index = ExampleIndex(bank.templates)
    all_topics = sorted({topic for topic, _ in situations})
    similarity, hits = [], []
    for i in tqdm(rows, desc="similarity and keywords", unit="msg"):
        by_key = index.similarities(texts[i])
        found = keywords.hits(texts[i], all_topics)
        similarity.append([by_key[k] for k in situations])
        hits.append([len(found.get(k, [])) for k in situations])
    fits = np.array(
        [[t == label.topic and s in label.fitting for t, s in situations] for label in labels]
    )
    return {
        "topic_p": topic_p[rows],
        "topic": topic_p[rows][:, situation_topic],
        "classifier": {c: p[rows] for c, p in classifier_p.items()},
        "similarity": np.array(similarity),
        "keywords": np.array(hits, np.float64),
        "prior": prior[rows],
        "votes": votes[rows],
        "fits": fits,
        "gold": gold[rows],
        "situation_topic": situation_topic,
        "fold": fold_of[rows],
    }


def save_signals(path: Path, signals: dict[str, Any]) -> None:
    """Keep the out-of-fold signals, to compare rules again without refitting."""
    flat = {k: v for k, v in signals.items() if k != "classifier"}
    flat.update({f"classifier@{c}/{w}": p for (c, w), p in signals["classifier"].items()})
    np.savez_compressed(path, **flat)


def load_signals(path: Path) -> dict[str, Any]:
    with np.load(path) as saved:
        signals: dict[str, Any] = {k: saved[k] for k in saved.files if "@" not in k}
        signals["classifier"] = {
            tuple(float(x) for x in k.split("@")[1].split("/")): saved[k]
            for k in saved.files
            if k.startswith("classifier@")
        }
    return signals


def neighbour_votes(
    engine: LinearEngine,
    queries: list[str],
    memory: list[str],
    labeled: NDArray[np.int64],
    width: int,
) -> Array:
    """Each query's share of cosine-weighted votes per (topic, situation) among its NEIGHBOURS
    nearest labeled complaints (``labeled``: the situation's column, -1 for none), over the
    engine's own TF-IDF features (two unit-norm blocks, hence the halving)."""
    keep = labeled >= 0
    memory_rows = engine.featurizer.transform([t for t, k in zip(memory, keep, strict=True) if k])
    owners = labeled[keep]
    cosine = (engine.featurizer.transform(queries) @ memory_rows.T).toarray() / 2.0
    votes = np.zeros((len(queries), width))
    for row, columns in enumerate(np.argsort(-cosine, axis=1)[:, :NEIGHBOURS]):
        np.add.at(votes[row], owners[columns], cosine[row, columns])
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-9)


def fit_rate(scores: Array, fits: NDArray[np.bool_]) -> float:
    return float(fits[np.arange(len(fits)), scores.argmax(axis=1)].mean())


def nested(
    rule: Callable[..., Array],
    grid: Sequence[tuple[float, ...]],
    fits: NDArray[np.bool_],
    fold: NDArray[np.int64],
) -> dict[str, Any]:
    """The rule's fit with its weights chosen on the other folds (nested) and the best setting
    over all complaints (best, with its weights)."""
    hit = np.array([fits[np.arange(len(fits)), rule(*g).argmax(axis=1)] for g in grid])
    chosen = np.zeros(len(fits), bool)
    for held_out in np.unique(fold):
        mine = fold == held_out
        chosen[mine] = hit[int(hit[:, ~mine].mean(axis=1).argmax()), mine]
    overall = hit.mean(axis=1)
    return {
        "nested": round(float(chosen.mean()), 4),
        "best": round(float(overall.max()), 4),
        "weights": grid[int(overall.argmax())],
    }


Rule = tuple[Callable[..., Array], list[Any]]


def rules(s: dict[str, Any], classifier: Array) -> dict[str, Rule]:
    """Every selection rule compared, with its grid of weights."""
    topic, similarity, keywords, prior = s["topic"], s["similarity"], s["keywords"], s["prior"]
    kw = np.minimum(keywords, 3)

    def blend(c: float, sim: float, k: float, p: float = 0.0) -> Array:
        return SelectionWeights(1.0, c, sim, k, p).combine(
            topic, classifier, similarity, keywords, prior
        )

    def log_linear(c: float, sim: float, k: float) -> Array:
        return np.log(topic + 1e-4) + c * np.log(classifier + 1e-4) + sim * similarity + k * kw

    def with_votes(c: float, sim: float, k: float, p: float, v: float) -> Array:
        return blend(c, sim, k, p) + v * s["votes"]

    order = np.argsort(-s["topic_p"], axis=1)
    rows = np.arange(len(order))
    margin = s["topic_p"][rows, order[:, 0]] - s["topic_p"][rows, order[:, 1]]
    first = s["situation_topic"][None, :] == order[:, :1]
    second = s["situation_topic"][None, :] == order[:, 1:2]

    def top_two(delta: float, c: float, sim: float, k: float, p: float) -> Array:
        allowed = first | (second & (margin[:, None] < delta))
        return np.where(allowed, blend(c, sim, k, p), -1e9)

    weights = list(itertools.product(CLASSIFIER, SIMILARITY, KEYWORD))
    with_prior = list(itertools.product(CLASSIFIER, SIMILARITY, KEYWORD, PRIOR))
    return {
        "additive blend, weights before this change (1, 0.5, 0.125, 0.025)": (
            lambda: BEFORE.combine(topic, classifier, similarity, keywords),
            [()],
        ),
        "additive blend": (blend, weights),
        "additive blend + complaint topic prior": (blend, with_prior),
        "log-linear blend": (
            log_linear,
            list(itertools.product(CLASSIFIER, (0.0, 0.5, 1.0, 2.0), (0.0, 0.1, 0.2, 0.4))),
        ),
        f"blend + prior + votes of the {NEIGHBOURS} nearest labeled complaints": (
            with_votes,
            [(*w, v) for w in with_prior for v in (0.0, 0.25, 0.5, 1.0) if w[3] in (0.0, 0.1)],
        ),
        "top topic, or the top two when the topic head's margin < d (blend + prior)": (
            top_two,
            [(d, *w) for d in MARGIN for w in with_prior if w[1] <= 0.125 and w[2] <= 0.05],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", default="16", help="situation head regularisation values to compare")
    parser.add_argument(
        "--signals",
        type=Path,
        help="an .npz of out-of-fold signals: read when it exists (no refitting), else written",
    )
    args = parser.parse_args()
    if args.signals and args.signals.exists():
        signals = load_signals(args.signals)
        c_values = sorted({c for c, _ in signals["classifier"]})
        print(f"read the out-of-fold signals from {args.signals}")
    else:
        c_values = [float(c) for c in args.c.split(",")]
        signals = out_of_fold(c_values)
        if args.signals:
            save_signals(args.signals, signals)
    fits, has, fold = signals["fits"], signals["fits"].any(axis=1), signals["fold"]
    gold_topic = signals["situation_topic"][None, :] == signals["gold"][:, None]
    print(f"{len(fits)} labeled complaints, {int(has.sum())} with a situation in the bank")
    heads = []
    for (c, weight), classifier in signals["classifier"].items():
        within = np.where(gold_topic, classifier, -1.0)
        heads.append(
            {
                "C": c,
                "acceptable rows' weight": weight,
                "classifier alone": round(fit_rate(classifier, fits), 3),
                "situation right given the labeled topic": round(
                    fit_rate(within[has], fits[has]), 3
                ),
            }
        )
    print(markdown_table(list(heads[0]), [list(h.values()) for h in heads]))
    # The head as training builds it: the largest C compared, acceptable rows weighted.
    best_c = max(c_values)
    classifier = signals["classifier"][(best_c, ACCEPTABLE_WEIGHT)]
    compared = []
    for name, (rule, grid) in tqdm(rules(signals, classifier).items(), desc="rules", unit="rule"):
        compared.append({"rule": name, **nested(rule, grid, fits, fold)})
    print(f"\nselection rules, situation head C={best_c}, acceptable rows {ACCEPTABLE_WEIGHT}:")
    print(markdown_table(list(compared[0]), [list(r.values()) for r in compared]))
    # The same signals without the situation head, as drafts rank them for other models:
    # situations of the topic head's choice, by similarity and keywords.
    top_topic = signals["topic"] >= signals["topic"].max(axis=1, keepdims=True)
    without = np.where(
        top_topic, signals["similarity"] + 0.15 * np.minimum(signals["keywords"], 3), -1.0
    )
    shipped = SelectionWeights()
    scores = shipped.combine(
        signals["topic"], classifier, signals["similarity"], signals["keywords"], signals["prior"]
    )
    pick = scores.argmax(axis=1)
    topic_right = signals["situation_topic"][pick] == signals["gold"]
    within = np.where(gold_topic, scores, -1e9)
    breakdown = {
        "shipped weights": str(shipped),
        "fit": round(fit_rate(scores, fits), 4),
        "topic of the pick right": round(float(topic_right.mean()), 4),
        "topic head right": round(
            float((signals["topic_p"].argmax(axis=1) == signals["gold"]).mean()), 4
        ),
        "situation right given the labeled topic": round(fit_rate(within[has], fits[has]), 4),
        "without the situation head": round(fit_rate(without, fits), 4),
    }
    print()
    print(markdown_table(["measure", "value"], list(breakdown.items())))
    result = {
        "labeled_complaints": len(fits),
        "with_a_situation": int(has.sum()),
        "situation_heads": heads,
        "chosen_c": best_c,
        "rules": compared,
        **breakdown,
    }
    print(f"\nwrote {write_result('situation_weights', result)}")


if __name__ == "__main__":
    main()
