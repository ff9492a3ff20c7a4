"""Throughput of ``triage batch`` and of the library call, with a per-stage time profile.

The input is N messages (JSONL, unique ids) made by cycling the seed train and dev texts.
``triage batch`` runs as a subprocess with ``--workers 1`` and ``--workers <cores>``; the fixed
cost of a run (interpreter start, imports, model load, worker start) is measured by the same
command on a one-row file and subtracted, so the msg/s column excludes it (both are reported).
The library call is ``TriagePipeline.__call__`` on lists of 512 ready ``Message`` objects. The
profile repeats the pipeline's steps one stage at a time on the same texts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from common import markdown_table, trained_default_model, verdict, write_result

from triage.pii import mask_pii
from triage.pipeline import HEADS, TriagePipeline
from triage.schemas import Message
from triage.text import normalize, segment
from triage.training.corpus import seed_corpus_path

TARGET = 3000.0
CHUNK = 512
PREPROCESS_REST = "preprocess remainder (checks, CueHit objects)"


def seed_texts() -> list[str]:
    """The seed train and dev texts, in file order."""
    return [json.loads(line)["text"] for split in ("train", "dev")
            for line in seed_corpus_path(split).read_text(encoding="utf-8").splitlines() if line]


def write_input(path: Path, texts: list[str], n: int) -> None:
    """``n`` JSONL rows ``{"id", "text"}`` cycling through ``texts``."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            record = {"id": f"bench-{i:07d}", "text": texts[i % len(texts)]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def triage_command() -> list[str]:
    """The ``triage`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("triage")
    found = str(script) if script.is_file() else shutil.which("triage")
    if found is None:
        sys.exit("error: the `triage` command is not installed (pip install -e .)")
    return [found]


def run_cli(input_path: Path, output_path: Path, model_dir: Path, workers: int,
            timeout: float) -> float:
    """Wall seconds of one ``triage batch`` run; fails loudly on a non-zero exit."""
    command = [*triage_command(), "batch", str(input_path), str(output_path), "--workers",
               str(workers), "--no-progress", "--model-dir", str(model_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


def batch_runs(model_dir: Path, texts: list[str], n: int, worker_counts: list[int],
               timeout: float) -> list[dict[str, Any]]:
    """``triage batch`` on one row and on ``n`` rows for each worker count."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        small, large = Path(tmp) / "one.jsonl", Path(tmp) / "input.jsonl"
        write_input(small, texts, 1)
        write_input(large, texts, n)
        output = Path(tmp) / "output.jsonl"
        for workers in worker_counts:
            fixed = run_cli(small, output, model_dir, workers, timeout)
            total = run_cli(large, output, model_dir, workers, timeout)
            with output.open(encoding="utf-8") as lines:
                written = sum(1 for _ in lines)
            if written != n:
                sys.exit(f"error: triage batch wrote {written} rows for {n} inputs")
            results.append({
                "workers": workers, "messages": n, "wall_seconds": round(total, 2),
                "fixed_seconds": round(fixed, 2),
                "end_to_end_msg_per_s": round(n / total, 1),
                "msg_per_s": round((n - 1) / max(total - fixed, 1e-9), 1),
            })
            print(f"  triage batch --workers {workers}: {results[-1]}", flush=True)
    return results


def library_call(pipeline: TriagePipeline, messages: list[Message]) -> dict[str, Any]:
    """Pipeline calls on lists of ``CHUNK`` messages, one process."""
    started = time.perf_counter()
    for start in range(0, len(messages), CHUNK):
        pipeline(messages[start : start + CHUNK])
    seconds = time.perf_counter() - started
    return {"messages": len(messages), "seconds": round(seconds, 2),
            "msg_per_s": round(len(messages) / seconds, 1)}


def profile(pipeline: TriagePipeline, texts: list[str]) -> dict[str, float]:
    """Seconds per stage over ``texts`` in chunks of ``CHUNK``, mirroring the pipeline's code.

    The stages repeat ``preprocess``, ``Featurizer.transform``, ``predict_proba`` and
    ``postprocess`` step by step (using the engine's internals); the probabilities are checked
    against ``predict_proba`` so that the profile cannot drift from the real code path.
    """
    totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        totals[name] += time.perf_counter() - started

    engine, featurizer = pipeline.engine, pipeline.engine.featurizer
    for start in range(0, len(texts), CHUNK):
        rows = [{"id": f"p{start + i}", "text": t}
                for i, t in enumerate(texts[start : start + CHUNK])]
        with stage("input validation (Message)"):
            messages = [Message.model_validate(r) for r in rows]
        with stage("normalize"):
            normal = [normalize(m.text) for m in messages]
        with stage("mask PII"):
            masked = [mask_pii(t).text for t in normal]
        with stage("cues (lexicon.find)"):
            for text in masked:
                pipeline.lexicon.find(text)
        with stage(PREPROCESS_REST):
            prepared = [pipeline.preprocess(m) for m in messages]
        with stage("segmentation (jieba)"):
            words = [" ".join(segment(t, featurizer.segmenter)) for t in masked]
        with stage("hashing: char n-grams"):
            char_counts = featurizer._char.transform(masked)
        with stage("hashing: word n-grams"):
            word_counts = featurizer._word.transform(words)
        with stage("tf-idf weighting + hstack"):
            features = sp.hstack([featurizer._tfidf(char_counts, featurizer.idf_char),
                                  featurizer._tfidf(word_counts, featurizer.idf_word)],
                                 format="csr")
        with stage("matmul (sparse × dense weights) + bias"):
            scores = np.asarray(features @ engine.weights) + engine.biases
        with stage("activations (sigmoid / softmax)"):
            probs = {}
            for name, spec in engine.heads.items():
                block = scores[:, engine._slices[name]]
                if spec.activation == "sigmoid":
                    positive = 1.0 / (1.0 + np.exp(-block[:, 0]))
                    probs[name] = np.stack([1.0 - positive, positive], axis=1)
                else:
                    shifted = np.exp(block - block.max(axis=1, keepdims=True))
                    probs[name] = shifted / shifted.sum(axis=1, keepdims=True)
        with stage("postprocess (incl. TriageResult validation)"):
            results = [pipeline.postprocess(p, {h: probs[h][i] for h in HEADS})
                       for i, p in enumerate(prepared)]
        with stage("serialize (model_dump mode=json, as triage batch does)"):
            for result in results:
                result.model_dump(mode="json")
        check = engine.predict_proba(masked)
        if not all(np.allclose(probs[h], check[h], atol=1e-5) for h in engine.heads):
            sys.exit("error: the profiled stages do not reproduce predict_proba")
    # preprocess was timed whole; keep only what its timed parts do not cover.
    totals[PREPROCESS_REST] -= sum(
        totals[p] for p in ("normalize", "mask PII", "cues (lexicon.find)"))
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=20_000)
    parser.add_argument("--model-dir", type=Path, help="default: train the default model")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="the 'all cores' worker count (default: usable cores)")
    parser.add_argument("--profile-messages", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per CLI run")
    args = parser.parse_args()

    texts = seed_texts()
    messages = [Message(id=f"bench-{i:07d}", text=texts[i % len(texts)])
                for i in range(args.messages)]
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = Path(tmp) / "default"
            print("training the default model ...", flush=True)
            trained_default_model(model_dir)
        started = time.perf_counter()
        pipeline = TriagePipeline.from_directory(model_dir)
        pipeline.triage_one("预热")  # loads jieba's dictionary and OpenCC
        load_seconds = time.perf_counter() - started
        library = library_call(pipeline, messages)
        print(f"  library call: {library}", flush=True)
        stages = profile(pipeline, [m.text for m in messages[: args.profile_messages]])
        runs = batch_runs(model_dir, texts, args.messages, sorted({1, args.workers}),
                          args.timeout)

    print(f"\n{args.messages} messages; model load + warm-up in-process {load_seconds:.2f} s\n")
    rows = [[f"triage batch --workers {r['workers']}", r["wall_seconds"], r["fixed_seconds"],
             r["end_to_end_msg_per_s"], r["msg_per_s"], TARGET, verdict(r["msg_per_s"], TARGET)]
            for r in runs]
    rows.append([f"library: pipeline(list of {CHUNK}), 1 process", library["seconds"],
                 round(load_seconds, 2), "-", library["msg_per_s"], "-", "-"])
    print(markdown_table(["run", "wall s", "fixed s (1-row run / load)", "msg/s end to end",
                          "msg/s excl. fixed", "target", "status"], rows))
    n_profiled = min(args.profile_messages, args.messages)
    total = sum(stages.values())
    print(f"\nPer-stage profile ({n_profiled} messages, chunks of {CHUNK}, one process)\n")
    print(markdown_table(
        ["stage", "µs / message", "share"],
        [[stage, f"{1e6 * s / n_profiled:.1f}", f"{100 * s / total:.1f} %"]
         for stage, s in sorted(stages.items(), key=lambda kv: -kv[1])]
        + [["total", f"{1e6 * total / n_profiled:.1f}",
            f"→ {n_profiled / total:.0f} msg/s per core"]],
    ))
    path = write_result("batch_throughput", {
        "messages": args.messages, "target_msg_per_s": TARGET, "chunk": CHUNK,
        "load_seconds": round(load_seconds, 3), "library": library, "batch": runs,
        "profile": {"messages": n_profiled,
                    "us_per_message": {k: round(1e6 * v / n_profiled, 1)
                                       for k, v in stages.items()}},
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
