"""Helpers shared by the benchmark scripts: paths, machine facts, tables and result files."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sklearn.model_selection import StratifiedKFold

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def add_linear_option(parser: argparse.ArgumentParser, repeatable: bool = False) -> None:
    """``--linear``: LinearConfig fields that differ from the defaults, as a JSON object (a list
    of them, one per ``--linear``, when ``repeatable``)."""
    parser.add_argument(
        "--linear",
        type=json.loads,
        action="append" if repeatable else "store",
        default=None if repeatable else {},
        help="non-default LinearConfig fields as JSON, e.g. '{\"cue_features\": true}'"
        + ("; repeat to compare settings" if repeatable else ""),
    )


def at_least_two(value: str) -> int:
    """``--folds``: a number of cross-validation folds (two at least)."""
    folds = int(value)
    if folds < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 folds (got {folds})")
    return folds


def topic_folds(topics: Sequence[str], folds: int) -> list[tuple[Any, Any]]:
    """The (train, held-out) index arrays of the seed corpus's cross-validation: stratified by
    topic, shuffled with seed 0, so every script that judges the corpus out of fold holds out
    the same messages."""
    split = StratifiedKFold(folds, shuffle=True, random_state=0)
    return list(split.split(list(topics), list(topics)))


def shared_datasets_dir() -> Path:
    """``../shared/datasets`` beside the repository, or ``$TRIAGE_SHARED_DATASETS``."""
    override = os.environ.get("TRIAGE_SHARED_DATASETS")
    return Path(override) if override else (REPO_ROOT.parent / "shared" / "datasets").resolve()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "load_average_at_write": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def seed_corpus() -> dict[str, str]:
    """Line count and SHA-256 prefix of the seed train/dev files, to tell corpus versions apart."""
    from triage.training.corpus import seed_corpus_path

    out = {}
    for split in ("train", "dev"):
        data = seed_corpus_path(split).read_bytes()
        lines = data.count(b"\n")
        out[split] = f"{lines} lines, sha256 {hashlib.sha256(data).hexdigest()[:12]}"
    return out


def source_fingerprint() -> str:
    """SHA-256 prefix over the package sources and data (not bench/): which code was measured."""
    digest = hashlib.sha256()
    for folder in ("api", "models", "training", "triage"):
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


SOURCE_AT_START = source_fingerprint()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get three decimals below 10, fewer above."""

    def cell(value: Any) -> str:
        if not isinstance(value, float):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{1 if abs(value) >= 10 else 3}f}"

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/NAME.json`` with the machine facts added; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    source = source_fingerprint()
    if source != SOURCE_AT_START:
        print(f"warning: the sources changed during the run ({SOURCE_AT_START} → {source})")
    payload = {
        "benchmark": name,
        "machine": machine(),
        "source_sha256": source if source == SOURCE_AT_START else f"{SOURCE_AT_START}→{source}",
        "seed_corpus": seed_corpus(),
        **data,
    }
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """'met' or 'missed' for a measured value against its target."""
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "missed"


def trained_default_model(out_dir: Path, linear: dict[str, Any] | None = None) -> float:
    """Train the default model (``train_linear`` defaults, or these ``LinearConfig`` fields)
    into ``out_dir``; returns seconds."""
    from triage.models.linear import LinearConfig
    from triage.training.train import TrainArguments, train_linear

    config = LinearConfig(**(linear or {}))
    return train_linear(TrainArguments(out_dir=out_dir, linear=config)).seconds


@contextmanager
def model_dir_or_default(model_dir: Path | None) -> Iterator[Path]:
    """The given model directory, or the default model trained into a temporary one."""
    if model_dir is not None:
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        trained = Path(tmp) / "default"
        print("training the default model ...", flush=True)
        trained_default_model(trained)
        yield trained
