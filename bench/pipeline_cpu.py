"""CPU time per message of ``pipeline(batch, replies=True)`` in process, by batch size.

The API's single-message requests are triaged in micro-batches (``api/batching.py``): at 32
concurrent clients one server process sees batches of about 8 to 32 messages, two workers
about half as many each. This is the pipeline's share of a request's CPU (preparation, model,
decisions and reply drafts), without HTTP. Seed messages (train and dev, with their channels);
each batch size runs ``--rounds`` times over the same messages and the fastest round counts
(the others include first-use caches and other processes' interference).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from api_latency import load_average, seed_bodies
from common import markdown_table, model_dir_or_default, write_result

from triage.config import Settings
from triage.schemas import Message
from triage.service import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="default: train the default model")
    parser.add_argument("--messages", type=int, default=3200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with model_dir_or_default(args.model_dir) as model_dir:
        pipeline = load_pipeline(Settings(model_dir=model_dir, train_if_missing=False))
    messages = [Message(**body) for body in seed_bodies()[: args.messages]]
    pipeline(messages[:64], replies=True)  # first-use builds (segmenter, reply index)
    rows, results = [], {}
    for size in args.batch_sizes:
        rounds = []
        for _ in range(args.rounds):
            started = time.process_time()
            for start in range(0, len(messages), size):
                pipeline(messages[start : start + size], replies=True)
            rounds.append(1e6 * (time.process_time() - started) / len(messages))
        results[str(size)] = {"us_per_message": [round(r, 1) for r in rounds]}
        rows.append([size, f"{min(rounds):.0f}", " / ".join(f"{r:.0f}" for r in rounds)])
    print(f"\n{len(messages)} messages; load average {load_average()}\n")
    print(markdown_table(["batch size", "CPU µs/message (best)", "every round"], rows))
    path = write_result(
        "pipeline_cpu",
        {
            "model_dir": str(args.model_dir or "default model, trained"),
            "messages": len(messages),
            "load_average": load_average(),
            "batch_sizes": results,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
