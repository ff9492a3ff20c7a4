"""CPU inference speed of the transformer engine per runtime, and what each runtime costs in
agreement with fp32.

For a saved transformer model (``--model-dir``; without one, the imported e5-small encoder with
untrained heads, which times the same network), over the seed dev messages (masked as the
pipeline masks them):

* throughput of ``predict_proba`` over all messages in batches of ``--batch-size``, with and
  without length bucketing, for fp32 PyTorch, dynamic int8 PyTorch, ONNX Runtime fp32 and ONNX
  Runtime int8, each with ``--threads`` threads (best of ``--repeats`` passes after a warm-up);
* one message at a time: p50/p99 latency of ``predict_proba`` for ``--single`` messages;
* agreement with fp32: share of messages with the same top label, per head, and the largest
  probability difference; with a trained model also the dev metrics through the full pipeline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import markdown_table, write_result

from triage.models.linear import HeadSpec
from triage.models.transformer import RUNTIMES, TransformerEngine
from triage.taxonomy import load_taxonomy
from triage.training.corpus import load_corpus, prepare_text, seed_corpus_path

DEFAULT_BASE_MODEL = os.environ.get("TRIAGE_E5_DIR", "/work/cache/e5-small-hf")
TARGET = 150.0


def untrained_model(base_model: str, directory: Path) -> Path:
    taxonomy = load_taxonomy()
    heads = {
        "topic": HeadSpec(taxonomy.topic_ids, "softmax"),
        "sentiment": HeadSpec(taxonomy.sentiments, "softmax"),
        "urgency": HeadSpec(taxonomy.urgency_ids, "softmax"),
        "complaint": HeadSpec(["no", "yes"], "softmax"),
    }
    return TransformerEngine.from_pretrained(base_model, heads).save(directory)


def throughput(engine: TransformerEngine, texts: list[str], repeats: int) -> dict[str, float]:
    """Messages per wall-clock second (best pass) and per CPU second of this process (all
    threads); on a shared machine the second is the steadier figure."""
    engine.predict_proba(texts[:64])  # warm-up (ONNX export and session, int8 copy)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        engine.predict_proba(texts)
        best = min(best, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return {"msg_s": len(texts) / best, "msg_per_cpu_s": len(texts) / cpu}


def single_latency(engine: TransformerEngine, texts: list[str]) -> dict[str, float]:
    times, cpu = [], []
    for text in texts:
        started, started_cpu = time.perf_counter(), time.process_time()
        engine.predict_proba([text])
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    ms = np.array(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_ms_mean": float(np.mean(cpu) * 1000),
    }


def agreement(probs: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    out = {
        f"{head}_same_top": float(np.mean(p.argmax(1) == reference[head].argmax(1)))
        for head, p in probs.items()
    }
    out["max_abs_diff"] = float(max(np.abs(p - reference[h]).max() for h, p in probs.items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a saved transformer model")
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--single", type=int, default=200, help="messages timed one at a time")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    args = parser.parse_args()

    taxonomy = load_taxonomy()
    dev = load_corpus(seed_corpus_path("dev"), taxonomy)
    texts = [prepare_text(r.text) for r in dev]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        model_dir = args.model_dir
        trained = model_dir is not None
        if model_dir is None:
            model_dir = untrained_model(args.base_model, Path(tmp) / "model")
        else:  # ONNX files are written beside the model: work on a copy
            import shutil

            model_dir = Path(shutil.copytree(model_dir, Path(tmp) / "model"))
        reference = None
        for runtime in args.runtimes:
            settings = {"runtime": runtime, "threads": args.threads, "batch_size": args.batch_size}
            engine = TransformerEngine.load(model_dir, settings)
            bucketed = throughput(engine, texts, args.repeats)
            row: dict[str, Any] = {
                "bucketed_msg_s": bucketed["msg_s"],
                "bucketed_msg_per_cpu_s": bucketed["msg_per_cpu_s"],
            }
            engine.inference = engine.inference.__class__(**{**settings, "length_bucketing": False})
            unbucketed = throughput(engine, texts, 1)
            row["unbucketed_msg_s"] = unbucketed["msg_s"]
            row["unbucketed_msg_per_cpu_s"] = unbucketed["msg_per_cpu_s"]
            engine.inference = engine.inference.__class__(**settings)
            row.update(single_latency(engine, texts[: args.single]))
            probs = engine.predict_proba(texts)
            reference = reference or probs
            row.update(agreement(probs, reference))
            if trained:
                from dev_metrics import measure_engine

                row["dev"] = measure_engine(engine, dev)["key"]
            results[runtime] = row
            print(f"{runtime}: {row}", flush=True)

    header = ["runtime", "msg/s (bucketed)", "msg/CPU-s", "msg/s (unbucketed)", "msg/CPU-s"]
    header += ["1 msg p50 ms", "p99 ms"]
    header += ["same top topic", "max |Δp|"]
    print(
        markdown_table(
            header,
            [
                [
                    runtime,
                    r["bucketed_msg_s"],
                    r["bucketed_msg_per_cpu_s"],
                    r["unbucketed_msg_s"],
                    r["unbucketed_msg_per_cpu_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["topic_same_top"],
                    r["max_abs_diff"],
                ]
                for runtime, r in results.items()
            ],
        )
    )
    if trained:
        print(
            markdown_table(
                ["runtime", "topic macro-F1", "P1 recall", "complaint F1"],
                [
                    [
                        rt,
                        r["dev"]["topic macro-F1"],
                        r["dev"]["P1 recall"],
                        r["dev"]["complaint F1"],
                    ]
                    for rt, r in results.items()
                ],
            )
        )
    fastest = max(results, key=lambda rt: results[rt]["bucketed_msg_s"])
    print(f"fastest: {fastest} ({results[fastest]['bucketed_msg_s']:.0f} msg/s, target {TARGET})")
    path = write_result(
        "transformer_speed",
        {
            "model_dir": str(args.model_dir or args.base_model),
            "trained_heads": trained,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "messages": len(texts),
            "results": results,
            "fastest": fastest,
            "target_msg_s": TARGET,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
