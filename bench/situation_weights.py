"""Choosing how drafts pick a (topic, situation) for a message, out of fold.

The topic head and the situation head are fitted in 5 folds of the seed *training* split (the
dev split plays no part; the bank's example messages are in every fold's training rows). Each
labeled training complaint then gets out-of-fold probabilities, its similarity to every
situation's examples, its keyword hits and the share of each topic among the other folds'
complaints. Every selection rule picks one (topic, situation) of the bank per complaint; a pick
fits when it is the labeled topic and the labeled (or an acceptable) situation.

A rule with free weights is judged by a nested choice: for each fold the weights are chosen on
the other four folds' complaints and scored on this fold's, so the figure does not profit from
the choice itself ("nested"); "best" is the best weight setting scored on all complaints, the
setting the code ships when the rule is shipped.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from common import add_linear_option, markdown_table, write_result
from heldout_cv import id_number
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from triage.drafts import (
    MAX_KEYWORD_HITS,
    ExampleIndex,
    SelectionWeights,
    complaint_topic_prior,
)
from triage.errors import ConfigError
from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.replies import load_situation_keywords, load_template_bank
from triage.taxonomy import load_taxonomy
from triage.training.corpus import CorpusRecord, load_corpus, prepare_text, seed_corpus_path
from triage.training.situations import (
    ACCEPTABLE_WEIGHT,
    SituationLabel,
    load_situation_labels,
    seed_situations_path,
    situation_head_data,
    situation_head_labels,
)

Array = NDArray[np.float64]
Rule = tuple[Callable[..., Array], list[tuple[float, ...]]]
# Grids of the additive blend (topic weight 1) ...
CLASSIFIER = (0.5, 1.0, 2.0, 4.0)
SIMILARITY = (0.0625, 0.125, 0.25, 0.5)
KEYWORD = (0.025, 0.05, 0.1, 0.2)
PRIOR = (0.0, 0.05, 0.1, 0.2)
# ... and of the joint (log-space) ranking (log P(topic) weight 1).
HEAD_TOPIC = (0.0, 0.25, 0.5, 1.0)
CONDITIONAL = (0.25, 0.5, 1.0, 2.0)
LOG_SIMILARITY = (0.0, 0.5, 1.0, 2.0)
LOG_KEYWORD = (0.0, 0.1, 0.2, 0.4)
LOG_PRIOR = (0.0, 0.25, 0.5, 1.0)
MARGIN = (0.0, 0.1, 0.2, 0.3, 1.0)
# ... and of the blend's variants that give the topic more situation evidence (session 5).
HEAD_SHARE = (0.0, 0.25, 0.5, 1.0)
OUTSIDE_PENALTY = (0.0, 0.1, 0.25, 0.5, 1.0)
TOPIC_POWER = (0.5, 1.0, 2.0)
BEFORE = SelectionWeights(1.0, 0.5, 0.125, 0.025, 0.0)  # the weights shipped before
EPSILON = 1e-4  # added to probabilities before their log
FOLDS = 5


@dataclass(frozen=True)
class HeadOptions:
    """What the out-of-fold heads are fitted with (the shipped defaults unless changed)."""

    c: float = 16.0  # the situation head's regularisation
    acceptable_weight: float = ACCEPTABLE_WEIGHT
    # LinearConfig fields to change, e.g. {"cue_features": true, "regularization_c": {"topic": 16}}
    # (regularisation is merged with the defaults; the situation head's comes from ``c``).
    linear: dict[str, Any] = field(default_factory=dict)

    def linear_config(self) -> LinearConfig:
        default = LinearConfig()
        changed = dict(self.linear)
        c = {**default.regularization_c, **changed.pop("regularization_c", {})}
        return replace(default, regularization_c={**c, "situation": self.c}, **changed)


def fold_probabilities(
    records: Sequence[CorpusRecord],
    texts: Sequence[str],
    labels: Sequence[SituationLabel],
    fit_rows: NDArray[np.int64],
    held_out: NDArray[np.int64],
    options: HeadOptions,
) -> tuple[Array, Array, dict[str, float]]:
    """One fold: the topic and situation heads fitted on ``fit_rows``, their probabilities for
    ``held_out`` and the log share of each topic among the fitted complaints."""
    taxonomy = load_taxonomy()
    bank = load_template_bank(taxonomy)
    topics = taxonomy.topic_ids
    fit_records = [records[i] for i in fit_rows]
    fit_texts = [texts[i] for i in fit_rows]
    data = {
        "topic": HeadData(fit_texts, [r.topic for r in fit_records]),
        "situation": situation_head_data(
            fit_records, fit_texts, labels, bank, prepare_text, options.acceptable_weight
        ),
    }
    engine = LinearEngine.fit(
        options.linear_config(),
        data,
        {"topic": topics, "situation": situation_head_labels(bank)},
        idf_head="topic",
    )
    probs = {
        head: p.astype(np.float64)
        for head, p in engine.predict_proba([texts[i] for i in held_out]).items()
    }
    counts = {t: sum(r.is_complaint and r.topic == t for r in fit_records) for t in topics}
    return probs["topic"], probs["situation"], complaint_topic_prior(counts, topics)


def out_of_fold(
    options: HeadOptions,
    jobs: int = 1,
    n_folds: int = FOLDS,
    round_from: int | None = None,
    with_round: bool = True,
) -> dict[str, Any]:
    """Out-of-fold signals for every labeled training complaint, per situation of the bank;
    ``jobs`` folds are fitted at once (each in its own process). With ``n_folds`` below five
    only the complaints of the first ``n_folds`` folds get signals: a quicker, paired comparison
    of head options (the folds are the same whatever the labels). With ``round_from`` the folds
    run over the rows before that id only, and the round's rows (that id on) join every fold's
    fitted rows when ``with_round``: does a corpus round help drafts for earlier messages?"""
    taxonomy = load_taxonomy()
    bank = load_template_bank(taxonomy)
    keywords = load_situation_keywords(bank)
    records = load_corpus(seed_corpus_path("train"), taxonomy)
    labels = load_situation_labels(seed_situations_path(), bank, records)
    texts = [prepare_text(r.text) for r in records]
    topics, situations = taxonomy.topic_ids, bank.situations()
    position = {r.id: i for i, r in enumerate(records)}
    gold = np.array([topics.index(r.topic) for r in records])
    situation_topic = np.array([topics.index(t) for t, _ in situations])
    topic_p = np.zeros((len(records), len(topics)))
    classifier_p = np.zeros((len(records), len(situations)))
    prior = np.zeros((len(records), len(situations)))
    fold_of = np.zeros(len(records), np.int64)
    earlier = np.array(
        [i for i, r in enumerate(records) if round_from is None or id_number(r) < round_from]
    )
    added = np.setdiff1d(np.arange(len(records)), earlier) if with_round else earlier[:0]
    if round_from is not None and len(earlier) in (0, len(records)):
        raise SystemExit(f"--round-from {round_from}: expected rows on both sides of that id")
    split = StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(earlier, gold[earlier])
    folds = [(np.concatenate([earlier[fit], added]), earlier[out]) for fit, out in split]
    folds = folds[:n_folds]
    with ProcessPoolExecutor(jobs) as pool:
        fitted = [
            pool.submit(fold_probabilities, records, texts, labels, fit, out, options)
            for fit, out in folds
        ]
        for fold, ((_, held_out), future) in enumerate(
            zip(folds, tqdm(fitted, desc="folds", unit="fold"), strict=True)
        ):
            topic_p[held_out], classifier_p[held_out], log_share = future.result()
            prior[held_out] = [log_share[t] for t, _ in situations]
            fold_of[held_out] = fold
    fitted_rows = set(np.concatenate([held_out for _, held_out in folds]).tolist())
    labels = [label for label in labels if position[label.id] in fitted_rows]
    rows = np.array([position[label.id] for label in labels])
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
        "classifier": classifier_p[rows],
        "similarity": np.array(similarity),
        "keywords": np.array(hits, np.float64),
        "prior": prior[rows],
        "fits": fits,
        "gold": gold[rows],
        "situation_topic": situation_topic,
        "fold": fold_of[rows],
    }


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


def rules(s: dict[str, Any]) -> dict[str, Rule]:
    """Every selection rule compared, with its grid of weights."""
    topic, classifier, similarity, keywords, prior = (
        s["topic"],
        s["classifier"],
        s["similarity"],
        s["keywords"],
        s["prior"],
    )

    kw = np.minimum(keywords, MAX_KEYWORD_HITS)
    head_topic = np.zeros_like(classifier)
    for t in np.unique(s["situation_topic"]):
        mine = s["situation_topic"] == t
        head_topic[:, mine] = classifier[:, mine].sum(axis=1, keepdims=True)
    log_topic, log_head_topic = np.log(topic + EPSILON), np.log(head_topic + EPSILON)
    log_conditional = np.log(classifier + EPSILON) - log_head_topic

    def blend(c: float, sim: float, k: float, p: float = 0.0) -> Array:
        return SelectionWeights(1.0, c, sim, k, p).combine(
            topic, classifier, similarity, keywords, prior
        )

    def joint(b: float, c: float, sim: float, k: float, p: float) -> Array:
        return (
            log_topic
            + b * log_head_topic
            + c * log_conditional
            + sim * similarity
            + k * kw
            + p * prior
        )

    order = np.argsort(-s["topic_p"], axis=1)
    rows = np.arange(len(order))
    margin = s["topic_p"][rows, order[:, 0]] - s["topic_p"][rows, order[:, 1]]
    first = s["situation_topic"][None, :] == order[:, :1]
    second = s["situation_topic"][None, :] == order[:, 1:2]

    def top_two(delta: float, b: float, c: float, sim: float, k: float, p: float) -> Array:
        allowed = first | (second & (margin[:, None] < delta))
        return np.where(allowed, joint(b, c, sim, k, p), -1e9)

    outside_top_two = np.zeros_like(classifier)
    for rank in range(2, order.shape[1]):
        outside_top_two += s["situation_topic"][None, :] == order[:, rank : rank + 1]

    def with_topic_evidence(h: float, pen: float, a: float, *weights: float) -> Array:
        """The blend with the prior, plus h x the situation head's share of the topic, minus
        ``pen`` outside the topic head's top two topics, with P(topic) raised to ``a``."""
        sharpened = topic**a - topic
        return blend(*weights) + sharpened + h * head_topic - pen * outside_top_two

    additive = list(itertools.product(CLASSIFIER, SIMILARITY, KEYWORD))
    with_prior = list(itertools.product(CLASSIFIER, SIMILARITY, KEYWORD, PRIOR))
    joint_grid = list(
        itertools.product(HEAD_TOPIC, CONDITIONAL, LOG_SIMILARITY, LOG_KEYWORD, LOG_PRIOR)
    )
    return {
        "additive blend, weights before (1, 0.5, 0.125, 0.025)": (
            lambda: BEFORE.combine(topic, classifier, similarity, keywords),
            [()],
        ),
        "additive blend": (blend, additive),
        "additive blend + complaint topic prior": (blend, with_prior),
        "joint: P(topic) x P(situation | topic) (+ head topic, similarity, keywords, prior)": (
            joint,
            joint_grid,
        ),
        "joint, only the top topic or the top two when the topic margin < d": (
            top_two,
            [(d, *w) for d in MARGIN for w in joint_grid if w[0] in (0.0, 0.5) and w[4] <= 0.5],
        ),
        "blend + prior + h x the head's share of the topic": (
            with_topic_evidence,
            [(h, 0.0, 1.0, *w) for h in HEAD_SHARE for w in with_prior],
        ),
        "blend + prior, minus a penalty outside the topic head's top two": (
            with_topic_evidence,
            [(0.0, pen, 1.0, *w) for pen in OUTSIDE_PENALTY for w in with_prior],
        ),
        "blend + prior with P(topic) ** a": (
            with_topic_evidence,
            [(0.0, 0.0, a, *w) for a in TOPIC_POWER for w in with_prior],
        ),
    }


def save_signals(path: Path, signals: dict[str, Any]) -> None:
    """Keep the out-of-fold signals, to compare rules again without refitting."""
    np.savez_compressed(path, **signals)


def load_signals(path: Path) -> dict[str, Any]:
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", type=float, default=16.0, help="situation head regularisation")
    parser.add_argument(
        "--acceptable-weight",
        type=float,
        default=ACCEPTABLE_WEIGHT,
        help="weight of a labeled message's row for each acceptable situation",
    )
    add_linear_option(parser)
    parser.add_argument("--jobs", type=int, default=1, help="folds fitted at once (processes)")
    parser.add_argument(
        "--folds",
        type=int,
        default=FOLDS,
        choices=range(1, FOLDS + 1),
        help="fit only the first N of the five folds (the rules' nested choice needs two)",
    )
    parser.add_argument(
        "--round-from",
        type=int,
        help="first id number of a corpus round: folds over the earlier rows only, the round's"
        " rows in every fold's fitted rows",
    )
    parser.add_argument(
        "--without-round",
        action="store_true",
        help="with --round-from: leave the round's rows out (the baseline)",
    )
    parser.add_argument(
        "--signals",
        type=Path,
        help="an .npz of out-of-fold signals: read when it exists (no refitting), else written",
    )
    args = parser.parse_args()
    if args.without_round and args.round_from is None:
        parser.error("--without-round: expected --round-from as well")
    options = HeadOptions(args.c, args.acceptable_weight, args.linear)
    try:  # a bad field fails now, not after the first fold
        options.linear_config()
    except (TypeError, ConfigError) as error:
        parser.error(f"--linear: expected fields of LinearConfig (got {args.linear!r}): {error}")
    if args.signals and args.signals.exists():
        signals = load_signals(args.signals)
        print(f"read the out-of-fold signals from {args.signals}")
    else:
        signals = out_of_fold(
            options, args.jobs, args.folds, args.round_from, not args.without_round
        )
        if args.signals:
            save_signals(args.signals, signals)
    fits, has, fold = signals["fits"], signals["fits"].any(axis=1), signals["fold"]
    gold_topic = signals["situation_topic"][None, :] == signals["gold"][:, None]
    ranked_topics = np.argsort(-signals["topic_p"], axis=1)
    print(f"{len(fits)} labeled complaints, {int(has.sum())} with a situation in the bank")
    compared = []
    if len(np.unique(fold)) > 1:
        for name, (rule, grid) in tqdm(rules(signals).items(), desc="rules", unit="rule"):
            compared.append({"rule": name, **nested(rule, grid, fits, fold)})
        print(markdown_table(list(compared[0]), [list(r.values()) for r in compared]))
    # The same signals without the situation head, as drafts rank them for other models:
    # situations of the topic head's choice, by similarity and keywords.
    top_topic = signals["topic"] >= signals["topic"].max(axis=1, keepdims=True)
    without = np.where(
        top_topic, signals["similarity"] + 0.15 * np.minimum(signals["keywords"], 3), -1.0
    )
    shipped = SelectionWeights()
    scores = shipped.combine(
        signals["topic"],
        signals["classifier"],
        signals["similarity"],
        signals["keywords"],
        signals["prior"],
    )
    pick = scores.argmax(axis=1)
    within = np.where(gold_topic, scores, -1e9)
    head_within = np.where(gold_topic, signals["classifier"], -1.0)
    breakdown = {
        "shipped weights": str(shipped),
        "fit": round(fit_rate(scores, fits), 4),
        "topic of the pick right": round(
            float((signals["situation_topic"][pick] == signals["gold"]).mean()), 4
        ),
        "topic head right": round(float((ranked_topics[:, 0] == signals["gold"]).mean()), 4),
        "labeled topic among the topic head's top two": round(
            float((ranked_topics[:, :2] == signals["gold"][:, None]).any(axis=1).mean()), 4
        ),
        "situation right given the labeled topic": round(fit_rate(within[has], fits[has]), 4),
        "situation head alone: best pick fits": round(fit_rate(signals["classifier"], fits), 4),
        "situation head alone: situation right given the labeled topic": round(
            fit_rate(head_within[has], fits[has]), 4
        ),
        "without the situation head": round(fit_rate(without, fits), 4),
    }
    print()
    print(markdown_table(["measure", "value"], list(breakdown.items())))
    result = {
        "labeled_complaints": len(fits),
        "with_a_situation": int(has.sum()),
        "head_options": asdict(options),
        "round_from": args.round_from,
        "with_round": args.round_from is not None and not args.without_round,
        "rules": compared,
        **breakdown,
    }
    print(f"\nwrote {write_result('situation_weights', result)}")


if __name__ == "__main__":
    main()
