"""The ``triage`` command line, run in-process with click's test runner on the small model."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import triage.service
from tests.conftest import read_jsonl
from triage.cli import describe, main
from triage.config import Settings
from triage.pipeline import TriagePipeline
from triage.schemas import TriageResult
from triage.taxonomy import load_taxonomy
from triage.training.corpus import seed_corpus_path

MESSAGE = "我的手机号13812345678，快递丢了半个月还不处理，再不赔我就去消协投诉，还要起诉你们！"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def labeled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixty labeled dev messages."""
    lines = seed_corpus_path("dev").read_text(encoding="utf-8").splitlines()[:60]
    path = tmp_path_factory.mktemp("labeled") / "dev60.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def input_csv(tmp_path: Path, labeled_file: Path) -> Path:
    """Twenty messages as a CSV export, the fourth with empty text."""
    records = [json.loads(line) for line in labeled_file.read_text(encoding="utf-8").splitlines()]
    rows = [{"id": r["id"], "text": r["text"], "channel": r["channel"]} for r in records[:20]]
    rows[3]["text"] = ""
    path = tmp_path / "messages.csv"
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["id", "text", "channel"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_classify_readable(runner, small_model_dir):
    result = runner.invoke(main, ["classify", MESSAGE, "--model-dir", str(small_model_dir)])
    assert result.exit_code == 0, result.output
    as_json = runner.invoke(
        main, ["classify", MESSAGE, "--json", "--model-dir", str(small_model_dir)]
    )
    expected = TriageResult.model_validate_json(as_json.stdout)

    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert lines["topic"].split()[1] == expected.topic
    assert f"{expected.sentiment} (score {expected.sentiment_score:+.2f})" in lines["sentiment"]
    urgency = lines["urgency"]
    assert urgency.split()[1].rstrip(",") == expected.urgency == "P1"
    model_urgency = max(expected.urgency_scores, key=expected.urgency_scores.__getitem__)
    if model_urgency != "P1" and expected.urgency_scores["P1"] < 0.05:
        assert f"raised from {model_urgency}" in urgency
        assert all(cue.text in urgency for cue in expected.cues if cue.floor == "P1")
    assert lines["complaint"].split()[1] == ("yes" if expected.is_complaint else "no")
    review = lines["needs review"].split()[2].rstrip(":")
    assert review == ("yes" if expected.needs_review else "no")
    for reason in expected.review_reasons:
        assert reason in lines["needs review"]
    for line in expected.explanation:
        assert f"  - {line}" in result.stdout
    assert lines["masked text"].endswith(expected.masked_text)
    assert "13812345678" not in result.stdout


def test_readable_urgency_is_the_pipelines_own_account(small_pipeline):
    result = small_pipeline.triage_one("请问你们几点开门")
    decided = "urgency P1 from the model: P(P1) 0.06 >= 0.05 (recall-oriented threshold)"
    by_threshold = result.model_copy(update={"urgency": "P1", "explanation": [decided]})
    raised = "urgency raised from P4 (model) to P1 by cue safety: '漏电'"
    by_cue = result.model_copy(update={"urgency": "P1", "explanation": [raised]})
    lines = [
        next(line for line in describe(r).splitlines() if line.startswith("urgency"))
        for r in (by_threshold, by_cue)
    ]
    assert lines == [
        "urgency       P1 from the model: P(P1) 0.06 >= 0.05 (recall-oriented threshold)",
        "urgency       P1, raised from P4 (model) to P1 by cue safety: '漏电'",
    ]


def test_classify_json(runner, small_model_dir, small_pipeline):
    args = ["classify", MESSAGE, "--json", "--channel", "chat", "--model-dir", str(small_model_dir)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == set(TriageResult.model_fields)
    expected = small_pipeline.triage_one(MESSAGE, channel="chat")
    assert TriageResult.model_validate(data).model_copy(update={"replies": []}) == expected
    assert data["replies"] and data["replies"][0]["text"]  # drafts from the packaged bank
    assert "快递" in result.stdout  # not escaped as \\uXXXX


def test_classify_reads_stdin(runner, small_model_dir):
    args = ["classify", "-", "--json", "--model-dir", str(small_model_dir)]
    result = runner.invoke(main, args, input="谢谢你们的耐心帮助")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["masked_text"] == "谢谢你们的耐心帮助"


def test_classify_rejects_empty_text_without_traceback(runner, small_model_dir):
    result = runner.invoke(main, ["classify", "   ", "--model-dir", str(small_model_dir)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: text is empty")
    assert "Traceback" not in result.output


def test_invalid_settings_are_reported(runner, small_model_dir):
    result = runner.invoke(
        main,
        ["classify", "你好", "--model-dir", str(small_model_dir)],
        env={"TRIAGE_MAX_TEXT_LENGTH": "0"},
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: settings: max_text_length:")


def test_missing_model_is_an_error_when_training_is_off(runner, tmp_path):
    result = runner.invoke(
        main,
        ["classify", "你好", "--model-dir", str(tmp_path / "none")],
        env={"TRIAGE_TRAIN_IF_MISSING": "false"},
    )
    assert result.exit_code == 2
    assert "error: " in result.stderr and "no model found" in result.stderr


def test_missing_model_is_trained_first_and_announced(
    runner, tmp_path, small_model_dir, monkeypatch
):
    trained: list[Path] = []

    def fake_training(model_dir: Path) -> None:  # the real one trains the full model
        trained.append(model_dir)
        shutil.copytree(small_model_dir, model_dir)

    monkeypatch.setattr(triage.service, "ensure_default_model", fake_training)
    model_dir = tmp_path / "fresh"
    result = runner.invoke(main, ["classify", "发票开错了", "--model-dir", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert trained == [model_dir]
    assert f"no model in {model_dir}: training the default model" in result.stderr
    assert result.stdout.startswith("topic")


def test_batch_csv_to_jsonl_keeps_bad_rows(runner, tmp_path, input_csv, small_model_dir):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        main, ["batch", str(input_csv), str(out), "--model-dir", str(small_model_dir)]
    )
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert len(records) == 20
    error = records[3]["error"]
    assert isinstance(error, dict) and error["code"] == "empty_text"
    assert "topic" not in records[3]
    assert all("topic" in r for i, r in enumerate(records) if i != 3)
    assert "rows read   20" in result.stdout
    assert "triaged     19" in result.stdout
    assert "errors      1 (empty_text 1)" in result.stdout
    assert "20/20" in result.stderr  # the progress bar knew the total


def test_batch_jsonl_to_csv_keeps_bad_rows(runner, tmp_path, labeled_file, small_model_dir):
    lines = labeled_file.read_text(encoding="utf-8").splitlines()[:10]
    lines.insert(2, json.dumps({"id": "empty", "text": ""}))
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    result = runner.invoke(
        main, ["batch", str(source), str(out), "--no-progress", "--model-dir", str(small_model_dir)]
    )
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["id"] for r in rows] == [json.loads(line).get("id") for line in lines]
    assert (rows[2]["error_code"], rows[2]["topic"]) == ("empty_text", "")
    assert all(r["topic"] and not r["error_code"] for i, r in enumerate(rows) if i != 2)
    assert "rows read   11" in result.stdout


def test_batch_text_column(runner, tmp_path, small_model_dir):
    source = tmp_path / "in.jsonl"
    source.write_text('{"ref": "x1", "content": "退款什么时候到账"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = [
        "batch",
        str(source),
        str(out),
        "--text-column",
        "content",
        "--id-column",
        "ref",
        "--no-progress",
        "--model-dir",
        str(small_model_dir),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out)
    assert (record["id"], record["masked_text"]) == ("x1", "退款什么时候到账")


def test_batch_workers_match_one_process(runner, tmp_path, input_csv, small_model_dir):
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}.jsonl"
        result = runner.invoke(
            main,
            [
                "batch",
                str(input_csv),
                str(out),
                "--workers",
                workers,
                "--no-progress",
                "--model-dir",
                str(small_model_dir),
            ],
        )
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_batch_missing_text_column(runner, tmp_path, small_model_dir):
    source = tmp_path / "in.csv"
    source.write_text("id,message\n1,快递没到\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        main, ["batch", str(source), str(out), "--model-dir", str(small_model_dir)]
    )
    assert result.exit_code == 2
    assert "error: " in result.stderr
    assert "no 'text' column" in result.stderr and "['id', 'message']" in result.stderr
    assert not out.exists()


def test_batch_unwritable_output(runner, tmp_path, input_csv, small_model_dir):
    out = tmp_path / "no-such-folder" / "out.jsonl"
    result = runner.invoke(
        main, ["batch", str(input_csv), str(out), "--model-dir", str(small_model_dir)]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {out}: cannot be written")


def test_batch_stdin_to_stdout(runner, small_model_dir):
    result = runner.invoke(
        main,
        [
            "batch",
            "-",
            "-",
            "--input-format",
            "jsonl",
            "--output-format",
            "jsonl",
            "--model-dir",
            str(small_model_dir),
        ],
        input='{"id": "s1", "text": "发票开错了"}\n{"id": "s2", "text": ""}\n',
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == ["s1", "s2"]
    assert "rows read   2" in result.stderr


def test_batch_bad_usage_is_clicks(runner, tmp_path, input_csv):
    args = ["batch", str(input_csv), str(tmp_path / "o.jsonl"), "--workers", "0"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert "Invalid value for '--workers'" in result.stderr


def test_evaluate_report_and_json(runner, tmp_path, small_model_dir, labeled_file):
    result = runner.invoke(main, ["evaluate", str(small_model_dir), str(labeled_file)])
    assert result.exit_code == 0, result.output
    for head in ("topic", "sentiment", "urgency", "complaint"):
        assert f"\n## {head}\n" in result.stdout
    assert "| head | accuracy | macro-F1 | ECE |" in result.stdout
    assert result.stdout.count("Confusion matrix (rows: gold, columns: predicted)") == 4
    assert "`dev60.jsonl`, 60 labeled messages" in result.stdout

    out = tmp_path / "report"
    args = ["evaluate", str(small_model_dir), str(labeled_file), "--json", "--out", str(out)]
    as_json = runner.invoke(main, args)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report == json.loads((out / "report.json").read_text(encoding="utf-8"))
    metrics = report["metrics"]
    assert sum(map(sum, metrics["urgency"]["confusion_matrix"])) == 60
    assert 0.0 <= metrics["topic"]["macro_f1"] <= 1.0
    assert report["model"]["source"] == str(small_model_dir)


def test_evaluate_invalid_data_is_an_error(runner, tmp_path, small_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "x"}\n', encoding="utf-8")
    result = runner.invoke(main, ["evaluate", str(small_model_dir), str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert "channel" in result.stderr


def test_train_small_model(runner, tmp_path, small_train_file):
    out = tmp_path / "model"
    result = runner.invoke(
        main, ["train", "--data", str(small_train_file), "--no-review-corpus", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    n_train = len(small_train_file.read_text(encoding="utf-8").splitlines())
    assert f"corpus: {n_train} training messages" in result.stdout
    assert f"model         {out}" in result.stdout
    assert "+0 review sentences" in result.stdout
    for head in ("topic", "sentiment", "urgency", "complaint"):
        assert any(line.startswith(head) for line in result.stdout.splitlines())
    pipeline = TriagePipeline.from_directory(out)
    assert pipeline.triage_one("快递三天没到").topic in pipeline.taxonomy.topic_ids
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["metrics"]["dev"]


def _renamed_topic(path: Path, source: Path, lines: slice) -> Path:
    """Seed messages with the topic logistics called shipping, as another taxonomy has it."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()[lines]]
    for row in rows:
        row["topic"] = "shipping" if row["topic"] == "logistics" else row["topic"]
        row["secondary_topics"] = [
            "shipping" if t == "logistics" else t for t in row["secondary_topics"]
        ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_train_learns_the_configured_taxonomy(runner, tmp_path, monkeypatch, small_train_file):
    taxonomy = load_taxonomy().model_dump()
    taxonomy["topics"][0]["id"] = "shipping"
    taxonomy_path = tmp_path / "taxonomy.yaml"
    taxonomy_path.write_text(yaml.safe_dump(taxonomy, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("TRIAGE_TAXONOMY_PATH", str(taxonomy_path))
    train = _renamed_topic(tmp_path / "train.jsonl", small_train_file, slice(0, 1200))
    dev = _renamed_topic(tmp_path / "dev.jsonl", small_train_file, slice(1200, 1500))
    command = ["train", "--data", str(train), "--dev", str(dev), "--no-review-corpus"]

    # The packaged reply bank is of the packaged topics: the situation head cannot learn it.
    refused = runner.invoke(main, [*command, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2
    assert "--no-situation-head" in refused.stderr and "TRIAGE_REPLIES_DIR" in refused.stderr

    out = tmp_path / "model"
    result = runner.invoke(main, [*command, "--no-situation-head", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["heads"]["topic"]["labels"][0] == "shipping"


def test_train_refuses_a_head_with_one_label(runner, tmp_path):
    rows = [json.loads(line) for line in seed_corpus_path("train").read_text("utf-8").splitlines()]
    one_urgency = tmp_path / "p3.jsonl"
    one_urgency.write_text(
        "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:300] if r["urgency"] == "P3"
        ),
        encoding="utf-8",
    )
    result = runner.invoke(
        main, ["train", "--data", str(one_urgency), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "urgency: expected messages of at least two labels" in result.stderr
    assert "(got only ['P3'])" in result.stderr


def test_evaluate_warns_when_the_data_is_a_file_the_model_learned(runner, tmp_path, labeled_file):
    lines = seed_corpus_path("train").read_text(encoding="utf-8").splitlines()[:400]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "model"
    command = ["train", "--data", str(train), "--dev", str(labeled_file), "--no-review-corpus"]
    assert runner.invoke(main, [*command, "--out", str(out)]).exit_code == 0
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["data"]["train_file_sha256"] == [hashlib.sha256(train.read_bytes()).hexdigest()]

    seen = runner.invoke(main, ["evaluate", str(out), str(train), "--no-progress"])
    assert seen.exit_code == 0, seen.output
    assert f"warning: {out} was trained on {train}" in seen.stderr
    unseen = runner.invoke(main, ["evaluate", str(out), str(labeled_file), "--no-progress"])
    assert unseen.exit_code == 0 and "warning" not in unseen.stderr


def test_train_rejects_an_invalid_corpus(runner, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    result = runner.invoke(main, ["train", "--data", str(bad), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr
    assert not (tmp_path / "m").exists()


def test_train_rejects_a_number_of_processes_below_one(runner, tmp_path, small_train_file):
    result = runner.invoke(
        main,
        ["train", "--data", str(small_train_file), "--processes", "0", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2
    expected = "TrainArguments.processes: expected None or an integer from 1 to 64 (got 0)"
    assert expected in result.stderr


def test_serve_passes_settings_to_the_app(runner, tmp_path, monkeypatch, small_model_dir):
    created: list[Settings] = []
    served: dict[str, object] = {}

    def create_app(settings: Settings) -> str:
        created.append(settings)
        return "the-app"

    app_module = types.ModuleType("triage.api.app")
    app_module.create_app = create_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triage.api.app", app_module)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.update(app=app, **kwargs))

    result = runner.invoke(
        main,
        ["serve", "--port", "9123", "--model-dir", str(small_model_dir)],
        env={"TRIAGE_HOST": "0.0.0.0", "TRIAGE_LOG_LEVEL": "warning"},
    )
    assert result.exit_code == 0, result.output
    (settings,) = created
    assert (settings.model_dir, settings.port, settings.host) == (small_model_dir, 9123, "0.0.0.0")
    assert served == {
        "app": "the-app",
        "host": "0.0.0.0",
        "port": 9123,
        "log_level": "warning",
        "access_log": False,
    }


def test_replies_check_reports_findings_and_exit_code(runner):
    bad = runner.invoke(main, ["replies", "check", "您好，这是您自己的问题，感谢反馈。"])
    assert bad.exit_code == 1
    assert "blame" in bad.stdout and "suggestion" in bad.stdout
    good = "王女士您好，感谢您的反馈，非常抱歉让您久等了。我们已加急处理，明天上午前会联系您。"
    passed = runner.invoke(main, ["replies", "check", good, "--json"])
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout) == {"score": 1.0, "passed": True, "findings": []}


def test_batch_with_replies_adds_drafts(runner, tmp_path, small_model_dir):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "text": MESSAGE}, ensure_ascii=False) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["batch", str(source), str(out), "--no-progress", "--replies"]
    result = runner.invoke(main, [*args, "--model-dir", str(small_model_dir)])
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out)
    drafts = record["replies"]
    assert isinstance(drafts, list) and drafts and "{" not in drafts[0]["text"]
    plain = tmp_path / "plain.jsonl"
    args = ["batch", str(source), str(plain), "--no-progress", "--model-dir", str(small_model_dir)]
    assert runner.invoke(main, args).exit_code == 0
    assert read_jsonl(plain)[0]["replies"] == []
