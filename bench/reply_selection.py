"""Reply selection on the seed dev complaints, judged against the labeled situations.

``triage/data/replies/dev_situations.jsonl`` gives, for each dev complaint, the template
situation of its topic that a person judged best (and others that are acceptable, or "none"
when the bank has no fitting situation). The default pipeline (model and cues) triages each
message with drafts; the top-ranked draft fits when its topic is the labeled topic and its
situation is the labeled one or an acceptable one. Also checks that every draft produced
passes the tone check. Target: the top draft fits for at least 90 % of complaints. When the
model has a situation head, its own accuracy is reported too: its best (topic, situation) fits,
and its best situation of the labeled topic fits.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import markdown_table, model_dir_or_default, write_result

from triage.config import Settings
from triage.drafts import SITUATION_HEAD
from triage.engines import Engine
from triage.models.linear import FloatArray
from triage.pipeline import TriagePipeline
from triage.replies import check_flags, check_reply, load_tone_rules, situation_label
from triage.schemas import Message
from triage.service import load_pipeline
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path
from triage.training.situations import load_situation_labels

LABELS = Path(__file__).resolve().parent.parent / "triage/data/replies/dev_situations.jsonl"


class WithoutSituationHead:
    """A model seen without its situation head: drafts rank as for models that have none."""

    def __init__(self, engine: Engine):
        self.inner = engine
        self.engine = engine.engine
        self.heads = {k: v for k, v in engine.heads.items() if k != SITUATION_HEAD}
        self.meta = engine.meta
        self.name, self.version = engine.name, engine.version

    def predict_proba(self, texts: Sequence[str]) -> dict[str, FloatArray]:
        probs = self.inner.predict_proba(texts)
        return {k: v for k, v in probs.items() if k != SITUATION_HEAD}


def measure(
    model_dir: Path,
    encoder: Path | None = None,
    situation_head: bool = True,
    labels_path: Path = LABELS,
) -> dict[str, Any]:
    settings = Settings(model_dir=model_dir, train_if_missing=False, reply_encoder=encoder)
    pipeline = load_pipeline(settings)
    if not situation_head:
        pipeline = TriagePipeline(
            WithoutSituationHead(pipeline.engine),
            pipeline.taxonomy,
            pipeline.lexicon,
            suggester=pipeline.suggester,
        )
    assert pipeline.suggester is not None
    rules, templates = load_tone_rules(), {t.id: t for t in pipeline.suggester.bank.templates}
    dev = {r.id: r for r in load_corpus(seed_corpus_path("dev"), load_taxonomy())}
    labels = [
        label.model_dump()
        for label in load_situation_labels(labels_path, pipeline.suggester.bank, list(dev.values()))
    ]
    results = pipeline(
        [Message(id=x["id"], text=dev[x["id"]].text, channel=dev[x["id"]].channel) for x in labels],
        replies=True,
    )
    fits, drafts, failing = Counter[str](), 0, []
    for label, result in zip(labels, results, strict=True):
        has_situation = label["situation"] != "none"
        top = templates[result.replies[0].template_id] if result.replies else None
        good = {label["situation"], *label.get("acceptable", [])}
        fit = top is not None and top.topic == label["topic"] and top.situation in good
        fits["all"] += fit
        fits["with_situation"] += fit and has_situation
        fits["topic"] += top is not None and top.topic == label["topic"]
        fits["topic_with_situation"] += (
            top is not None and top.topic == label["topic"] and has_situation
        )
        for reply in result.replies:
            drafts += 1
            template = templates[reply.template_id]
            if not check_reply(reply.text, rules, **check_flags(template, rules)).passed:
                failing.append(reply.template_id)
    n, n_situation = len(labels), sum(x["situation"] != "none" for x in labels)
    classifier = classifier_accuracy(pipeline, [dev[x["id"]].text for x in labels], labels)
    return {
        "complaints": n,
        "with_a_labeled_situation": n_situation,
        "top_fits_all": round(fits["all"] / n, 4),
        "top_fits_where_a_situation_exists": round(fits["with_situation"] / n_situation, 4),
        "top_topic_matches_label": round(fits["topic"] / n, 4),
        "situation_fits_when_topic_matches": round(
            fits["with_situation"] / max(1, fits["topic_with_situation"]), 4
        ),
        "drafts": drafts,
        "drafts_failing_tone_check": len(failing),
        **classifier,
    }


def classifier_accuracy(
    pipeline: TriagePipeline, texts: list[str], labels: list[dict[str, Any]]
) -> dict[str, Any]:
    """How often the situation head's own best (topic, situation) fits, over all complaints,
    and its best situation within the labeled topic, over those the bank has a situation for."""
    head = pipeline.engine.heads.get(SITUATION_HEAD)
    if head is None:
        return {"situation_head": "absent"}
    probs = pipeline.engine.predict_proba(
        [pipeline.preprocess(Message(text=t)).masked_text for t in texts]
    )
    best = fits = within = 0
    for row, label in zip(probs[SITUATION_HEAD], labels, strict=True):
        good = {
            situation_label(label["topic"], s)
            for s in {label["situation"], *label.get("acceptable", [])} - {"none"}
        }
        best += head.labels[int(row.argmax())] in good
        if good:
            fits += 1
            in_topic = [i for i, x in enumerate(head.labels) if x.startswith(label["topic"] + ".")]
            within += head.labels[max(in_topic, key=lambda i: row[i])] in good
    return {
        "classifier_best_fits_all": round(best / len(labels), 4),
        "classifier_situation_fits_given_labeled_topic": round(within / max(1, fits), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model to use (trained when omitted)")
    parser.add_argument(
        "--reply-encoder",
        type=Path,
        help="sentence-transformers model for the similarity (needs sentence-transformers)",
    )
    parser.add_argument(
        "--without-situation-head",
        action="store_true",
        help="rank as for models without a situation head (similarity and keywords only)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=LABELS,
        help="judging list: JSON lines of id, topic, situation, acceptable (default: shipped)",
    )
    args = parser.parse_args()
    with model_dir_or_default(args.model_dir) as model_dir:
        measured = measure(
            model_dir, args.reply_encoder, not args.without_situation_head, args.labels
        )
    measured["labels"] = str(args.labels)
    measured["reply_encoder"] = str(args.reply_encoder) if args.reply_encoder else None
    measured["situation_head_used"] = not args.without_situation_head
    print(markdown_table(["measure", "value"], list(measured.items())))
    name = "reply_selection" + ("_encoder" if args.reply_encoder else "")
    name += "_without_head" if args.without_situation_head else ""
    print(f"\nwrote {write_result(name, measured)}")


if __name__ == "__main__":
    main()
