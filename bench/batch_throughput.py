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
import functools
import importlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import (
    markdown_table,
    model_dir_or_default,
    verdict,
    write_result,
)

from triage.pipeline import TriagePipeline
from triage.schemas import Message
from triage.training.corpus import seed_corpus_path

TARGET = 3000.0
CHUNK = 512


def seed_texts() -> list[str]:
    """The seed train and dev texts, in file order."""
    return [
        json.loads(line)["text"]
        for split in ("train", "dev")
        for line in seed_corpus_path(split).read_text(encoding="utf-8").splitlines()
        if line
    ]


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


def run_cli(
    input_path: Path, output_path: Path, model_dir: Path, workers: int, timeout: float
) -> float:
    """Wall seconds of one ``triage batch`` run; fails loudly on a non-zero exit."""
    command = [
        *triage_command(),
        "batch",
        str(input_path),
        str(output_path),
        "--workers",
        str(workers),
        "--no-progress",
        "--overwrite",  # each run writes the same output file
        "--model-dir",
        str(model_dir),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


def batch_runs(
    model_dir: Path,
    texts: list[str],
    n: int,
    worker_counts: list[int],
    timeout: float,
    repeat: int,
) -> list[dict[str, Any]]:
    """``triage batch`` on one row and on ``n`` rows for each worker count (medians of runs)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        small, large = Path(tmp) / "one.jsonl", Path(tmp) / "input.jsonl"
        write_input(small, texts, 1)
        write_input(large, texts, n)
        output = Path(tmp) / "output.jsonl"
        for workers in worker_counts:
            fixed, total = [], []
            for _ in range(repeat):
                fixed.append(run_cli(small, output, model_dir, workers, timeout))
                total.append(run_cli(large, output, model_dir, workers, timeout))
                with output.open(encoding="utf-8") as lines:
                    written = sum(1 for _ in lines)
                if written != n:
                    sys.exit(f"error: triage batch wrote {written} rows for {n} inputs")
            fixed_s, total_s = statistics.median(fixed), statistics.median(total)
            results.append(
                {
                    "workers": workers,
                    "messages": n,
                    "runs": repeat,
                    "wall_seconds": round(total_s, 2),
                    "fixed_seconds": round(fixed_s, 2),
                    "wall_seconds_all": [round(x, 2) for x in total],
                    "fixed_seconds_all": [round(x, 2) for x in fixed],
                    "end_to_end_msg_per_s": round(n / total_s, 1),
                    # Too short a run leaves nothing measurable after the fixed cost.
                    "msg_per_s": round((n - 1) / (total_s - fixed_s), 1)
                    if total_s > 1.2 * fixed_s
                    else None,
                }
            )
            print(f"  triage batch --workers {workers}: {results[-1]}", flush=True)
    return results


def library_call(pipeline: TriagePipeline, messages: list[Message]) -> dict[str, Any]:
    """Pipeline calls on lists of ``CHUNK`` messages, one process."""
    started = time.perf_counter()
    for start in range(0, len(messages), CHUNK):
        pipeline(messages[start : start + CHUNK])
    seconds = time.perf_counter() - started
    return {
        "messages": len(messages),
        "seconds": round(seconds, 2),
        "msg_per_s": round(len(messages) / seconds, 1),
    }


# (stage, module, attribute): the functions whose own time (callees excluded) makes up a stage.
# A target that no longer exists is reported and skipped; its time then lands in its caller.
STAGES = (
    ("normalize", "triage.pipeline", "normalize"),
    ("mask PII", "triage.pipeline", "mask_pii"),
    ("cues (CueLexicon.find)", "triage.cues", "CueLexicon.find"),
    ("preprocess, rest (checks, CueHit objects)", "triage.pipeline", "TriagePipeline.preprocess"),
    ("segmentation", "triage.models.linear", "segment"),
    ("n-gram hashing", "triage.models.linear", "_hashed_ngrams"),
    (
        "featurize, rest (lowercase, token codes, CSR assembly)",
        "triage.models.linear",
        "Featurizer.counts",
    ),
    ("tf-idf weighting + L2", "triage.models.linear", "Featurizer.weighted"),
    ("weights × features + activations", "triage.models.linear", "LinearEngine.predict_proba"),
    ("postprocess (incl. TriageResult)", "triage.pipeline", "TriagePipeline.postprocess"),
    (
        "pipeline, rest (sentiment blend, row split)",
        "triage.pipeline",
        "TriagePipeline.run_prepared",
    ),
)
INPUT_STAGE = "input validation (Message)"
OUTPUT_STAGE = "serialize (model_dump mode=json)"


class StageTimer:
    """Exclusive (self) time per stage: a timed call's time is not counted again in its caller."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._children: list[float] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._children.append(0.0)
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.totals[name] += elapsed - self._children.pop()
            if self._children:
                self._children[-1] += elapsed

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return function(*args, **kwargs)

        return timed


@contextmanager
def instrumented(timer: StageTimer) -> Iterator[list[str]]:
    """Patch the ``STAGES`` functions with timed wrappers; yields the targets not found."""
    restore: list[tuple[Any, str, Any]] = []
    missing = []
    for stage, module_name, attribute in STAGES:
        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        raw = inspect.getattr_static(owner, name, None) if owner is not None else None
        if raw is None:
            missing.append(f"{module_name}.{attribute}")
            continue
        if isinstance(raw, staticmethod | classmethod):
            patched: Any = type(raw)(timer.wrap(stage, raw.__func__))
        else:
            patched = timer.wrap(stage, raw)
        restore.append((owner, name, raw))
        setattr(owner, name, patched)
    try:
        yield missing
    finally:
        for owner, name, raw in reversed(restore):
            setattr(owner, name, raw)


def profile(pipeline: TriagePipeline, texts: list[str]) -> dict[str, Any]:
    """Seconds per stage for the work ``triage batch`` does per chunk of ``CHUNK`` rows.

    The real code runs (``Message`` validation, ``pipeline(messages)``, ``model_dump``) with
    timed wrappers around the functions in ``STAGES``; the wrappers cost about a microsecond
    per call, which the "total" row includes.
    """
    timer = StageTimer()
    with instrumented(timer) as missing:
        started = time.perf_counter()
        for start in range(0, len(texts), CHUNK):
            rows = [
                {"id": f"p{start + i}", "text": t}
                for i, t in enumerate(texts[start : start + CHUNK])
            ]
            with timer.stage(INPUT_STAGE):
                messages = [Message.model_validate(r) for r in rows]
            results = pipeline(messages)
            with timer.stage(OUTPUT_STAGE):
                for result in results:
                    result.model_dump(mode="json")
        total = time.perf_counter() - started
    stages = dict(timer.totals)
    stages["unattributed"] = total - sum(stages.values())
    return {"seconds": stages, "total_seconds": total, "missing_targets": missing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=20_000)
    parser.add_argument("--model-dir", type=Path, help="default: train the default model")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="the 'all cores' worker count (default: usable cores)",
    )
    parser.add_argument("--profile-messages", type=int, default=8192)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per CLI run")
    parser.add_argument("--repeat", type=int, default=3, help="CLI runs per setting (median)")
    args = parser.parse_args()

    texts = seed_texts()
    messages = [
        Message(id=f"bench-{i:07d}", text=texts[i % len(texts)]) for i in range(args.messages)
    ]
    with model_dir_or_default(args.model_dir) as model_dir:
        started = time.perf_counter()
        pipeline = TriagePipeline.from_directory(model_dir)
        pipeline.triage_one("预热")  # loads the segmenter's dictionary and OpenCC
        load_seconds = time.perf_counter() - started
        library = library_call(pipeline, messages)
        print(f"  library call: {library}", flush=True)
        stages = profile(pipeline, [m.text for m in messages[: args.profile_messages]])
        runs = batch_runs(
            model_dir, texts, args.messages, sorted({1, args.workers}), args.timeout, args.repeat
        )

    print(f"\n{args.messages} messages; model load + warm-up in-process {load_seconds:.2f} s\n")
    rows = [
        [
            f"triage batch --workers {r['workers']}",
            r["wall_seconds"],
            r["fixed_seconds"],
            r["end_to_end_msg_per_s"],
            r["msg_per_s"] or "n/a (run too short)",
            TARGET,
            verdict(r["msg_per_s"], TARGET) if r["msg_per_s"] else "-",
        ]
        for r in runs
    ]
    rows.append(
        [
            f"library: pipeline(list of {CHUNK}), 1 process",
            library["seconds"],
            round(load_seconds, 2),
            "-",
            library["msg_per_s"],
            "-",
            "-",
        ]
    )
    print(
        markdown_table(
            [
                "run",
                "wall s",
                "fixed s (1-row run; library: load)",
                "msg/s end to end",
                "msg/s excl. fixed",
                "target",
                "status",
            ],
            rows,
        )
    )
    n_profiled = min(args.profile_messages, args.messages)
    seconds, total = stages["seconds"], stages["total_seconds"]
    print(
        f"\nPer-stage profile ({n_profiled} messages, chunks of {CHUNK}, one process, "
        "self time of each stage)\n"
    )
    print(
        markdown_table(
            ["stage", "µs / message", "share"],
            [
                [stage, f"{1e6 * s / n_profiled:.1f}", f"{100 * s / total:.1f} %"]
                for stage, s in sorted(seconds.items(), key=lambda kv: -kv[1])
            ]
            + [
                [
                    "total",
                    f"{1e6 * total / n_profiled:.1f}",
                    f"→ {n_profiled / total:,.0f} msg/s per core",
                ]
            ],
        )
    )
    if stages["missing_targets"]:
        print(f"not found (time counted in the caller): {', '.join(stages['missing_targets'])}")
    path = write_result(
        "batch_throughput",
        {
            "messages": args.messages,
            "target_msg_per_s": TARGET,
            "chunk": CHUNK,
            "load_seconds": round(load_seconds, 3),
            "library": library,
            "batch": runs,
            "profile": {
                "messages": n_profiled,
                "missing_targets": stages["missing_targets"],
                "us_per_message": {k: round(1e6 * v / n_profiled, 1) for k, v in seconds.items()},
                "total_us_per_message": round(1e6 * total / n_profiled, 1),
            },
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
