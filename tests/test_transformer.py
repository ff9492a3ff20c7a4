"""The transformer engine and its training, on a tiny randomly initialised encoder."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from triage.cli import main
from triage.engines import load_engine
from triage.errors import ConfigError, ModelError
from triage.models.linear import HeadSpec
from triage.models.transformer import InferenceConfig, TransformerEngine
from triage.pipeline import TriagePipeline
from triage.training.corpus import seed_corpus_path
from triage.training.transformer import (
    MISSING,
    MultiTaskRows,
    Trainer,
    TrainerState,
    TransformerTrainArguments,
    class_weights,
    masked_loss,
    new_engine,
)

HEADS = {
    "topic": HeadSpec(["logistics", "refund", "praise"], "softmax"),
    "sentiment": HeadSpec(["negative", "neutral", "positive"], "softmax"),
}
ROWS = [
    ("快递三天了还没到，物流信息一直不更新", "logistics", "negative"),
    ("包裹显示已签收但我根本没收到", "logistics", "negative"),
    ("请问我的快递现在到哪里了", "logistics", "neutral"),
    ("退款申请提交一周了还没到账", "refund", "negative"),
    ("想问一下退款一般几天能到", "refund", "neutral"),
    ("退款很快就到账了，谢谢", "refund", "positive"),
    ("客服小姐姐态度特别好，点赞", "praise", "positive"),
    ("东西质量很好，下次还来买", "praise", "positive"),
]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """About 220 training and 80 dev messages of the seed corpus."""
    folder = tmp_path_factory.mktemp("tiny-corpus")
    train, dev = folder / "train.jsonl", folder / "dev.jsonl"
    train.write_text(
        "\n".join(seed_corpus_path("train").read_text(encoding="utf-8").splitlines()[::16]) + "\n",
        encoding="utf-8",
    )
    dev.write_text(
        "\n".join(seed_corpus_path("dev").read_text(encoding="utf-8").splitlines()[::8]) + "\n",
        encoding="utf-8",
    )
    return train, dev


def arguments(tiny_encoder_dir: Path, out_dir: Path, **changes: Any) -> TransformerTrainArguments:
    base = TransformerTrainArguments(
        out_dir=out_dir,
        base_model=str(tiny_encoder_dir),
        dev_path=None,
        epochs=30,
        batch_size=4,
        learning_rate=3e-3,
        head_learning_rate=3e-3,
        warmup_ratio=0.0,
        max_length=32,
        head_dropout=0.0,
        freeze_embeddings=False,
        early_stopping_patience=0,
        checkpoint_every_epochs=0,
        device="cpu",
        progress=False,
    )
    return replace(base, **changes)


def handful() -> MultiTaskRows:
    return MultiTaskRows.from_labels(
        [t for t, _, _ in ROWS],
        {"topic": [r[1] for r in ROWS], "sentiment": [r[2] for r in ROWS]},
        {name: spec.labels for name, spec in HEADS.items()},
    )


def fit(args: TransformerTrainArguments, rows: MultiTaskRows, **hooks: object) -> TransformerEngine:
    engine = new_engine(args, HEADS)
    return Trainer(engine, rows, args, **hooks).fit().engine  # type: ignore[arg-type]


def test_overfits_a_handful_of_rows(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    rows = handful()
    engine = fit(arguments(tiny_encoder_dir, tmp_path / "out"), rows)
    probs = engine.predict_proba(rows.texts)
    for head, gold in rows.labels.items():
        assert probs[head].argmax(axis=1).tolist() == gold.tolist()


def test_save_load_round_trip_gives_identical_outputs(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    engine = fit(arguments(tiny_encoder_dir, tmp_path / "out", epochs=2), handful())
    saved = engine.save(tmp_path / "model", {"name": "tiny", "thresholds": {"complaint": 0.4}})
    loaded = load_engine(saved)
    assert isinstance(loaded, TransformerEngine)
    texts = [t for t, _, _ in ROWS]
    for head, probs in engine.predict_proba(texts).items():
        np.testing.assert_array_equal(loaded.predict_proba(texts)[head], probs)
    assert (loaded.name, loaded.version) == ("tiny", engine.version)
    assert loaded.meta["thresholds"] == {"complaint": 0.4}
    assert loaded.heads == HEADS
    files = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "heads.safetensors",
        "README.md",
        "encoder/config.json",
        "encoder/model.safetensors",
        "encoder/tokenizer.json",
    } <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    card = (saved / "README.md").read_text(encoding="utf-8")
    assert "logistics, refund, praise" in card and "transformers" in card


def test_batch_equals_single(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    engine = fit(arguments(tiny_encoder_dir, tmp_path / "out", epochs=2), handful())
    texts = [t for t, _, _ in ROWS] + ["好"]
    batched = engine.predict_proba(texts)
    for i, text in enumerate(texts):
        single = engine.predict_proba([text])
        for head in HEADS:
            np.testing.assert_allclose(single[head][0], batched[head][i], atol=1e-5)


def test_heads_without_labels_get_no_gradient(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    engine = new_engine(arguments(tiny_encoder_dir, tmp_path / "out"), HEADS)
    rows = MultiTaskRows.from_labels(
        ["好评", "差评"],
        {"topic": [None, None], "sentiment": ["positive", "negative"]},
        {name: spec.labels for name, spec in HEADS.items()},
    )
    ids = engine.batches(rows.texts)[0]
    logits = engine.model(torch.from_numpy(ids.input_ids), torch.from_numpy(ids.attention_mask))
    labels = {h: torch.from_numpy(rows.labels[h][ids.rows]) for h in HEADS}
    weights = {h: torch.ones(len(spec.labels)) for h, spec in HEADS.items()}
    masked_loss(logits, labels, weights).backward()  # type: ignore[no-untyped-call]
    heads: Any = engine.model.heads
    assert heads["topic"].weight.grad is None
    sentiment_grad = heads["sentiment"].weight.grad
    assert sentiment_grad is not None and float(sentiment_grad.abs().sum()) > 0


def test_masked_loss_counts_only_labeled_rows() -> None:
    logits = {"sentiment": torch.tensor([[2.0, 0.0, -1.0], [0.0, 5.0, 0.0], [1.0, 1.0, 1.0]])}
    labels = {"sentiment": torch.tensor([0, MISSING, 2])}
    loss = masked_loss(logits, labels, {"sentiment": torch.ones(3)})
    expected = torch.nn.functional.cross_entropy(logits["sentiment"][[0, 2]], torch.tensor([0, 2]))
    assert torch.isclose(loss, expected)


def test_partial_rows_train_only_their_heads(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """Sentiment-only review rows added to the handful leave the topic fit intact."""
    reviews = MultiTaskRows.from_labels(
        ["一般般吧", "还行", "太差了"],
        {"sentiment": ["neutral", "neutral", "negative"]},
        {name: spec.labels for name, spec in HEADS.items()},
    )
    rows = handful() + reviews
    assert rows.labels["topic"][-3:].tolist() == [MISSING] * 3
    engine = fit(arguments(tiny_encoder_dir, tmp_path / "out"), rows)
    probs = engine.predict_proba(rows.texts)
    assert probs["topic"][:8].argmax(axis=1).tolist() == handful().labels["topic"].tolist()
    assert probs["sentiment"].argmax(axis=1).tolist() == rows.labels["sentiment"].tolist()


def test_class_weights_balance_the_labeled_rows() -> None:
    labels = np.array([0, 0, 0, 1, MISSING])
    np.testing.assert_allclose(class_weights(labels, 3, "balanced").numpy(), [4 / 6, 2.0, 1.0])
    np.testing.assert_allclose(class_weights(labels, 3, "none").numpy(), [1.0, 1.0, 1.0])


def test_same_seed_same_model_other_seed_other_model(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    def head_weights(seed: int) -> dict[str, torch.Tensor]:
        args = arguments(tiny_encoder_dir, tmp_path / f"out-{seed}", epochs=2, seed=seed)
        return fit(args, handful()).head_tensors()

    first, again, other = head_weights(1), head_weights(1), head_weights(2)
    for key, value in first.items():
        assert torch.equal(value, again[key])
    assert not torch.equal(first["heads.topic.weight"], other["heads.topic.weight"])


def test_resumed_run_equals_uninterrupted_run(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    args = arguments(tiny_encoder_dir, tmp_path / "straight", epochs=3, head_dropout=0.1)
    straight = fit(args, handful())

    class Interrupted(Exception):
        pass

    def interrupt(state: TrainerState) -> None:
        if state.global_step == 3:  # one step into the second epoch (2 steps per epoch)
            raise Interrupted

    broken = replace(
        args, out_dir=tmp_path / "broken", keep_checkpoints=True, checkpoint_every_epochs=1
    )
    with pytest.raises(Interrupted):
        fit(broken, handful(), after_step=interrupt)
    checkpoint = broken.out_dir / "checkpoints" / "last"
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    assert (state["trainer"]["epoch"], state["trainer"]["global_step"]) == (1, 2)
    resumed = fit(replace(broken, resume_from=checkpoint), handful())
    for key, value in straight.head_tensors().items():
        torch.testing.assert_close(resumed.head_tensors()[key], value)


def test_resume_with_other_arguments_is_refused(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    args = arguments(
        tiny_encoder_dir,
        tmp_path / "out",
        epochs=1,
        keep_checkpoints=True,
        checkpoint_every_epochs=1,
    )
    fit(args, handful())
    checkpoint = args.out_dir / "checkpoints" / "last"
    changed = replace(args, learning_rate=1e-4, resume_from=checkpoint)
    with pytest.raises(ConfigError, match=r"learning_rate.*0\.003.*0\.0001"):
        fit(changed, handful())


def test_arguments_name_the_bad_value(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch_size: expected a positive integer \(got 0\)"):
        arguments(tiny_encoder_dir, tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match=r"class_weighting: expected one of .* \(got 'max'\)"):
        arguments(tiny_encoder_dir, tmp_path, class_weighting="max")


def test_unknown_base_model_points_to_the_importer(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="triage models import-e5"):
        TransformerEngine.from_pretrained(str(tmp_path / "no-such-model"), HEADS)


@pytest.mark.parametrize("runtime", ["torch-int8", "onnx", "onnx-int8"])
def test_faster_runtimes_agree_with_fp32(
    tiny_encoder_dir: Path, tmp_path: Path, runtime: str
) -> None:
    engine = fit(arguments(tiny_encoder_dir, tmp_path / "out", epochs=3), handful())
    saved = engine.save(tmp_path / "model")
    fast = TransformerEngine.load(saved, {"runtime": runtime, "threads": 1})
    texts = [t for t, _, _ in ROWS]
    reference, probs = engine.predict_proba(texts), fast.predict_proba(texts)
    # Within 0.05 of fp32 everywhere; labels are not compared, as quantisation may flip a near
    # tie of this tiny random model (it did when the corpus, and so the vocabulary, grew).
    for head in HEADS:
        np.testing.assert_allclose(probs[head], reference[head], atol=0.05)


def test_cli_trains_a_transformer_the_pipeline_runs(
    tiny_encoder_dir: Path, tiny_corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    train, dev = tiny_corpus
    out = tmp_path / "model"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--engine",
            "transformer",
            "--base-model",
            str(tiny_encoder_dir),
            "--data",
            str(train),
            "--dev",
            str(dev),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--max-length",
            "32",
            "--batch-size",
            "32",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "epoch 1: dev score" in result.output and "epoch 2: dev score" in result.output
    assert "topic" in result.output and "macro-F1" in result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["engine"] == "transformer"
    assert set(config["thresholds"]) >= {"complaint", "secondary_topic"}
    assert config["training"]["epochs_run"] == 2
    assert config["non_default_hyperparameters"]["epochs"] == 2
    assert not (out / "checkpoints").exists()
    triaged = TriagePipeline.from_directory(out).triage_one("快递三天了还没到")
    assert triaged.model.engine == "transformer"
    assert triaged.topic in config["heads"]["topic"]["labels"]


def test_cli_requires_a_base_model_for_the_transformer(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--engine", "transformer", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--base-model" in result.output and "import-e5" in result.output


def test_default_service_never_imports_torch() -> None:
    code = (
        "import sys, triage.service, triage.api.app, triage.cli, triage.engines\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inference_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"runtime: expected one of .* \(got 'tpu'\)"):
        InferenceConfig(runtime="tpu")


def test_frozen_encoder_trains_heads_only(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    args = arguments(
        tiny_encoder_dir, tmp_path / "out", freeze_encoder=True, epochs=30, head_learning_rate=0.05
    )
    untrained = new_engine(args, HEADS)
    before = untrained.model.encoder.state_dict()
    engine = fit(args, handful())
    for key, value in engine.model.encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    rows = handful()

    def gold_log_probability(model: TransformerEngine) -> float:
        probs = model.predict_proba(rows.texts)
        return sum(
            float(np.log(probs[head][np.arange(len(gold)), gold]).mean())
            for head, gold in rows.labels.items()
        )

    assert gold_log_probability(engine) > gold_log_probability(untrained) + 0.5
