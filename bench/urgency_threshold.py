"""Choosing ``top_urgency_probability``: P1 recall against precision, out of fold.

The urgency head is fitted in 5 folds of the seed *training* split (the dev split plays no
part); each message gets out-of-fold probabilities, then the pipeline's rule is applied for each
candidate threshold: P1 when P(P1) reaches it, then raised to the strongest cue's floor.
"""

from __future__ import annotations

import numpy as np
from common import markdown_table, write_result
from sklearn.model_selection import StratifiedKFold

from triage.cues import load_cue_lexicon
from triage.models.linear import HeadData, LinearConfig, LinearEngine
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, seed_corpus_path
from triage.training.train import prepare_text

CANDIDATES = (1.01, 0.4, 0.3, 0.25, 0.2, 0.15)


def main() -> None:
    taxonomy = load_taxonomy()
    levels = taxonomy.urgency_ids
    lexicon = load_cue_lexicon(taxonomy)
    records = load_corpus(seed_corpus_path("train"), taxonomy)
    texts = [prepare_text(r.text) for r in records]
    gold = np.array([levels.index(r.urgency) for r in records])
    floors = np.array(
        [min([levels.index(c.floor) for c in lexicon.find(t)] or [len(levels) - 1]) for t in texts]
    )
    probs = np.zeros((len(records), len(levels)), np.float32)
    for fit_rows, held_out in StratifiedKFold(5, shuffle=True, random_state=0).split(texts, gold):
        data = HeadData([texts[i] for i in fit_rows], [levels[gold[i]] for i in fit_rows])
        engine = LinearEngine.fit(LinearConfig(), {"urgency": data}, {"urgency": levels})
        probs[held_out] = engine.predict_proba([texts[i] for i in held_out])["urgency"]
    rows = []
    for threshold in CANDIDATES:
        predicted = np.where(probs[:, 0] >= threshold, 0, probs.argmax(axis=1))
        predicted = np.minimum(predicted, floors)
        hit = (predicted == 0) & (gold == 0)
        rows.append(
            {
                "threshold": "argmax only" if threshold > 1 else threshold,
                "P1 recall": round(hit.sum() / (gold == 0).sum(), 3),
                "P1 precision": round(hit.sum() / max(1, (predicted == 0).sum()), 3),
                "urgency accuracy": round(float((predicted == gold).mean()), 3),
            }
        )
    header = list(rows[0])
    print(markdown_table(header, [[row[key] for key in header] for row in rows]))
    print(f"\nwrote {write_result('urgency_threshold', {'rows': rows})}")


if __name__ == "__main__":
    main()
