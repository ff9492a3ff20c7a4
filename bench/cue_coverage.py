"""How often the cue lexicon alone flags P1 messages, and how often it fires on the others.

For the seed train and dev splits: the share of P1 messages with at least one P1-floor cue
(recall of the lexicon on its own) and the share of other messages with one (false floors).
"""

from __future__ import annotations

from common import markdown_table, write_result

from triage.cues import load_cue_lexicon
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, prepare_text, seed_corpus_path


def main() -> None:
    taxonomy = load_taxonomy()
    lexicon = load_cue_lexicon(taxonomy)
    top = taxonomy.urgency_ids[0]
    rows = []
    for split in ("train", "dev"):
        records = load_corpus(seed_corpus_path(split), taxonomy)
        flagged = [
            any(cue.floor == top for cue in lexicon.find(prepare_text(r.text))) for r in records
        ]
        urgent = [f for f, r in zip(flagged, records, strict=True) if r.urgency == top]
        others = [f for f, r in zip(flagged, records, strict=True) if r.urgency != top]
        rows.append(
            {
                "split": split,
                f"{top} messages": len(urgent),
                f"{top} with a {top} cue": round(sum(urgent) / len(urgent), 3),
                f"others with a {top} cue": round(sum(others) / len(others), 3),
            }
        )
    header = list(rows[0])
    print(markdown_table(header, [[row[key] for key in header] for row in rows]))
    print(f"\nwrote {write_result('cue_coverage', {'rows': rows})}")


if __name__ == "__main__":
    main()
