"""The linear engine: config validation, fitting, saving and loading."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.exceptions import ConvergenceWarning

from triage.errors import ConfigError, ModelError
from triage.models.hidden import _BETA1, _BETA2, _EPSILON, _EmbeddingAdam
from triage.models.linear import Featurizer, HeadData, LinearConfig, LinearEngine

TEXTS = [
    "快递三天还没到",
    "物流一直不更新",
    "包裹丢了没人管",
    "申请退款还没到账",
    "退货退款太慢了",
    "退款被拒绝了",
    "客服态度很好谢谢",
    "非常感谢你们的帮助",
]
TOPICS = ["logistics"] * 3 + ["refund"] * 3 + ["praise"] * 2
SENTIMENTS = ["negative"] * 6 + ["positive"] * 2
COMPLAINTS = ["yes"] * 6 + ["no"] * 2
# Sentiment-only rows: characters that occur in no topic or complaint row, and no word of the
# polarity lexicon.
SENTIMENT_ONLY = ["嗯嗯哦哦", "耶耶哒哒"]
SENTIMENT_ONLY_LABELS = ["neutral", "positive"]

LABEL_SETS = {
    "topic": ["logistics", "refund", "praise", "other"],
    "sentiment": ["negative", "neutral", "positive"],
    "complaint": ["no", "yes"],
}

# The linear heads alone (the hidden layer has tests of its own below).
SMALL = LinearConfig(
    char_features_log2=16,
    word_features_log2=16,
    regularization_c={"topic": 100.0, "sentiment": 100.0, "complaint": 100.0},
    hidden_share={},
)


def _data() -> dict[str, HeadData]:
    return {
        "topic": HeadData(TEXTS, TOPICS),
        "sentiment": HeadData(TEXTS + SENTIMENT_ONLY, SENTIMENTS + SENTIMENT_ONLY_LABELS),
        "complaint": HeadData(TEXTS, COMPLAINTS),
    }


@pytest.fixture(scope="module")
def engine() -> LinearEngine:
    return LinearEngine.fit(SMALL, _data(), LABEL_SETS)


@pytest.fixture(scope="module")
def saved(engine: LinearEngine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine.save(tmp_path_factory.mktemp("linear") / "model", {"name": "tiny-test"})


def _predicted(engine: LinearEngine, head: str, texts: list[str]) -> list[str]:
    labels = engine.heads[head].labels
    return [labels[i] for i in engine.predict_proba(texts)[head].argmax(axis=1)]


# --- LinearConfig ----------------------------------------------------------------------------


def test_default_config_is_valid_and_has_no_non_defaults():
    assert LinearConfig().non_defaults() == {}
    assert SMALL.non_defaults()["char_features_log2"] == 16


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"char_ngram_max": 7}, "char_ngram_max", "7"),
        ({"char_ngram_min": 4, "char_ngram_max": 3}, "char_ngram_max", "3"),
        ({"word_ngram_max": 0}, "word_ngram_max", "0"),
        ({"word_ngram_max": 4}, "word_ngram_max", "4"),
        ({"char_features_log2": 9}, "char_features_log2", "9"),
        ({"word_features_log2": 23}, "word_features_log2", "23"),
        ({"segmenter": "spacy"}, "segmenter", "'spacy'"),
        ({"regularization_c": {"topic": -1.0}}, "regularization_c", "-1.0"),
        ({"regularization_c": {"topic": 0.0}}, "regularization_c", "0.0"),
        ({"class_weight": "auto"}, "class_weight", "'auto'"),
        ({"solver": "liblinear"}, "solver", "'liblinear'"),
        ({"min_df": {"topic": 1.0}}, "min_df", "1.0"),
        ({"min_df": {"topic": -0.1}}, "min_df", "-0.1"),
        ({"min_df": 0.001}, "min_df", "0.001"),
        ({"min_df": {"topic": "0.1"}}, "min_df", "'0.1'"),
        ({"regularization_c": {"topic": "8"}}, "regularization_c", "'8'"),
        ({"naive_bayes_c": {"polarity": 0.0}}, "naive_bayes_c", "0.0"),
        ({"naive_bayes_c": 32.0}, "naive_bayes_c", "32.0"),
        ({"naive_bayes_c": {"polarity": True}}, "naive_bayes_c", "True"),
        ({"naive_bayes_share": 0.0}, "naive_bayes_share", "0.0"),
        ({"naive_bayes_share": 1.5}, "naive_bayes_share", "1.5"),
        ({"naive_bayes_share": "0.3"}, "naive_bayes_share", "'0.3'"),
        ({"naive_bayes_share": True}, "naive_bayes_share", "True"),
        ({"naive_bayes_c": {"polarity": float("nan")}}, "naive_bayes_c", "nan"),
        ({"regularization_c": {"topic": float("inf")}}, "regularization_c", "inf"),
        ({"hidden_share": {"topic": 0.0}}, "hidden_share", "0.0"),
        ({"hidden_share": {"topic": 1.5}}, "hidden_share", "1.5"),
        ({"hidden_share": 0.5}, "hidden_share", "0.5"),
        ({"hidden_units": 0}, "hidden_units", "0"),
        ({"hidden_epochs": 1.5}, "hidden_epochs", "1.5"),
        ({"hidden_learning_rate": 0.0}, "hidden_learning_rate", "0.0"),
        ({"hidden_dropout": 1.0}, "hidden_dropout", "1.0"),
        ({"hidden_min_df": "0.1"}, "hidden_min_df", "'0.1'"),
    ],
)
def test_config_rejects_bad_values_quoting_them(kwargs, field, shown):
    with pytest.raises(ConfigError) as caught:
        LinearConfig(**kwargs)
    message = str(caught.value)
    assert f"LinearConfig.{field}" in message
    assert "expected" in message
    assert "(got " in message
    assert shown in message[message.index("(got ") :]


def test_config_error_for_char_ngram_min_quotes_that_value():
    with pytest.raises(ConfigError, match=r"char_ngram_min.*\(got 0\)"):
        LinearConfig(char_ngram_min=0)


@pytest.mark.parametrize(
    "kwargs", [{"max_iter": 0}, {"max_iter": -5}, {"char_features_log2": 12.5}]
)
def test_config_rejects_unvalidated_bad_values(kwargs):
    with pytest.raises(ConfigError):
        LinearConfig(**kwargs)


# --- fitting ---------------------------------------------------------------------------------


def test_fit_overfits_a_tiny_training_set(engine):
    assert _predicted(engine, "topic", TEXTS) == TOPICS
    assert _predicted(engine, "sentiment", TEXTS + SENTIMENT_ONLY) == (
        SENTIMENTS + SENTIMENT_ONLY_LABELS
    )
    assert _predicted(engine, "complaint", TEXTS) == COMPLAINTS


def test_probabilities_have_the_head_labels_as_columns_and_sum_to_one(engine):
    probs = engine.predict_proba(TEXTS)
    assert set(probs) == set(LABEL_SETS)
    for head, labels in LABEL_SETS.items():
        assert engine.heads[head].labels == labels
        assert probs[head].shape == (len(TEXTS), len(labels))
        assert probs[head].dtype == np.float32
        assert np.all(probs[head] >= 0) and np.all(probs[head] <= 1)
        np.testing.assert_allclose(probs[head].sum(axis=1), 1.0, rtol=1e-5)


def test_label_absent_from_training_gets_no_probability(engine):
    other = LABEL_SETS["topic"].index("other")
    probs = engine.predict_proba([*TEXTS, "完全没见过的句子"])["topic"]
    assert np.all(probs[:, other] < 1e-6)


def test_empty_batch_gives_empty_rows(engine):
    probs = engine.predict_proba([])
    assert {head: p.shape for head, p in probs.items()} == {
        head: (0, len(labels)) for head, labels in LABEL_SETS.items()
    }


@pytest.mark.parametrize("fitted", ["engine", "hidden_engine"])
def test_batch_predictions_equal_single_text_predictions(request, fitted):
    # Exactly: the API batches concurrent requests and promises single-message results.
    engine = request.getfixturevalue(fitted)
    texts = [*TEXTS, "新的一句话:快递呢?", "退款"]
    batch = engine.predict_proba(texts)
    for i, text in enumerate(texts):
        single = engine.predict_proba([text])
        for head in LABEL_SETS:
            np.testing.assert_array_equal(single[head][0], batch[head][i])


def test_fit_is_deterministic():
    first = LinearEngine.fit(SMALL, _data(), LABEL_SETS, seed=0).predict_proba(TEXTS)
    second = LinearEngine.fit(SMALL, _data(), LABEL_SETS, seed=0).predict_proba(TEXTS)
    for head in LABEL_SETS:
        np.testing.assert_array_equal(first[head], second[head])


def test_heads_fitted_in_worker_processes_save_the_same_model(tmp_path):
    config = replace(SMALL, naive_bayes_c={"complaint": 8.0})
    data = {
        **_data(),
        "urgency": HeadData(TEXTS, ["P1", "P2", "P3", "P4"] * 2),
    }
    label_sets = {**LABEL_SETS, "urgency": ["P1", "P2", "P3", "P4"]}
    sequential = LinearEngine.fit(config, data, label_sets, processes=1)
    concurrent = LinearEngine.fit(config, data, label_sets, processes=2)
    sequential.save(tmp_path / "sequential")
    concurrent.save(tmp_path / "concurrent")
    first = load_file(str(tmp_path / "sequential" / "model.safetensors"))
    second = load_file(str(tmp_path / "concurrent" / "model.safetensors"))
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        np.testing.assert_array_equal(tensor, second[name], err_msg=name)
    assert sequential.version == concurrent.version


@pytest.mark.parametrize(
    ("idf_head", "idf_texts"), [("topic", TEXTS), (None, TEXTS + SENTIMENT_ONLY)]
)
def test_document_frequencies_come_from_the_idf_heads_texts(idf_head, idf_texts):
    """Texts are counted once for the frequencies and the rows; the frequencies must still be
    those of the idf head's distinct texts (every head's when none is named)."""
    data = {**_data(), "complaint": HeadData(TEXTS + TEXTS[:3], COMPLAINTS + COMPLAINTS[:3])}
    fitted = LinearEngine.fit(SMALL, data, LABEL_SETS, idf_head=idf_head)
    reference = Featurizer.fit(SMALL, idf_texts)
    np.testing.assert_array_equal(fitted.featurizer.idf_char, reference.idf_char)
    np.testing.assert_array_equal(fitted.featurizer.idf_word, reference.idf_word)
    assert (fitted.featurizer.transform(TEXTS) != reference.transform(TEXTS)).nnz == 0


def test_automatic_processes_start_workers_only_for_heads_worth_it(monkeypatch):
    import triage.models.linear as linear

    monkeypatch.setattr(linear, "available_cores", lambda: 4)
    captured: dict[str, linear.FitJob] = {}

    def capture(jobs, processes, hidden=None):
        captured.update(jobs)
        return {name: linear.fit_head(job) for name, job in jobs.items()}, None

    monkeypatch.setattr(linear, "fit_heads", capture)
    LinearEngine.fit(SMALL, _data(), LABEL_SETS)
    small = sum(job.cost for job in captured.values())
    assert linear.automatic_processes(captured) == 1  # a tiny corpus: not worth a worker
    monkeypatch.setattr(linear, "PARALLEL_FIT_MIN_COST", small)
    assert linear.automatic_processes(captured) == 3  # one per fit, below the 4 cores
    monkeypatch.setattr(linear, "available_cores", lambda: 2)
    assert linear.automatic_processes(captured) == 2


def test_fitting_needs_at_least_one_process():
    with pytest.raises(ConfigError, match=r"processes: expected a positive integer \(got 0\)"):
        LinearEngine.fit(SMALL, _data(), LABEL_SETS, processes=0)


def test_head_with_rows_for_only_some_texts_trains_on_its_own_rows(engine):
    # The sentiment head learned its extra rows ...
    assert _predicted(engine, "sentiment", SENTIMENT_ONLY) == SENTIMENT_ONLY_LABELS
    # ... while the topic and complaint heads never saw them: their features carry no weight
    # there, so those texts score exactly like a text made of unseen characters.
    unseen = "ΩΨ"
    probs = engine.predict_proba([*SENTIMENT_ONLY, unseen])
    for head in ("topic", "complaint"):
        np.testing.assert_allclose(probs[head][0], probs[head][2], rtol=0, atol=1e-7)
        np.testing.assert_allclose(probs[head][1], probs[head][2], rtol=0, atol=1e-7)
    assert not np.allclose(probs["sentiment"][0], probs["sentiment"][2], atol=1e-3)


def test_three_label_head_with_two_labels_present_still_predicts_them():
    data = {"sentiment": HeadData(TEXTS, SENTIMENTS)}
    fitted = LinearEngine.fit(SMALL, data, {"sentiment": LABEL_SETS["sentiment"]})
    assert _predicted(fitted, "sentiment", TEXTS) == SENTIMENTS
    neutral = LABEL_SETS["sentiment"].index("neutral")
    assert np.all(fitted.predict_proba(TEXTS)["sentiment"][:, neutral] < 1e-6)


def test_min_df_gives_weight_only_to_columns_in_that_share_of_a_heads_rows():
    # "退" occurs in three of the eight topic rows, "丢" in one.
    config = replace(SMALL, min_df={"topic": 0.25})
    fitted = LinearEngine.fit(config, _data(), LABEL_SETS)
    topic = fitted._slices["topic"]
    # "谢" occurs in exactly two rows: 0.25 of eight, kept ("at least").
    counts = fitted.featurizer.counts(["退", "丢", "谢"])
    frequent, rare, boundary = (counts.columns[counts.indptr[row]] for row in (0, 1, 2))
    assert np.any(fitted.weights[frequent, topic] != 0)
    assert np.any(fitted.weights[boundary, topic] != 0)
    assert np.all(fitted.weights[rare, topic] == 0)
    # Other heads keep every column they saw.
    assert np.any(fitted.weights[rare, fitted._slices["complaint"]] != 0)


@pytest.mark.parametrize("solver", ["newton-cg", "lbfgs", "saga"])
def test_the_configured_solver_fits_every_head(monkeypatch, engine, solver):
    from sklearn.linear_model import LogisticRegression

    used: list[str] = []

    class Spy(LogisticRegression):  # type: ignore[misc]
        def fit(self, *args, **kwargs):
            used.append(self.solver)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr("triage.models.linear.LogisticRegression", Spy)
    other = LinearEngine.fit(replace(SMALL, solver=solver, max_iter=3000), _data(), LABEL_SETS)
    assert used == [solver] * len(LABEL_SETS)
    for head in LABEL_SETS:
        assert _predicted(other, head, TEXTS) == _predicted(engine, head, TEXTS)


def test_each_head_is_fitted_on_its_own_rows_in_its_own_order(monkeypatch):
    """Texts are featurized once for all heads; every head must still get its rows (repeats
    and order included) as the featurizer transforms them."""
    import triage.models.linear as linear

    captured: dict[str, linear.HeadFit] = {}

    def capture(jobs, processes, hidden=None):
        captured.update(jobs)
        return {name: linear.fit_head(job) for name, job in jobs.items()}, None

    monkeypatch.setattr(linear, "fit_heads", capture)
    reordered = TEXTS[::-1] + TEXTS[:2]
    data = {
        "topic": HeadData(TEXTS, TOPICS),
        "complaint": HeadData(reordered, COMPLAINTS[::-1] + COMPLAINTS[:2]),
    }
    fitted = LinearEngine.fit(SMALL, data, LABEL_SETS)
    for name, head in data.items():
        expected = fitted.featurizer.transform(head.texts)
        job = captured[name]
        used = np.unique(expected.indices)
        assert (job.features != expected[:, used]).nnz == 0


def test_the_pass_cap_of_sag_fits_without_a_convergence_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fitted = LinearEngine.fit(replace(SMALL, max_iter=2), _data(), LABEL_SETS)
    assert fitted.config.solver == "sag"


def test_sample_weights_change_the_fit():
    texts = ["好", "好的", "不好", "很好"]
    labels = ["yes", "yes", "no", "no"]
    plain = LinearEngine.fit(SMALL, {"h": HeadData(texts, labels)}, {"h": ["no", "yes"]})
    weighted = LinearEngine.fit(
        SMALL, {"h": HeadData(texts, labels, [1.0, 1.0, 1.0, 20.0])}, {"h": ["no", "yes"]}
    )
    p_plain = plain.predict_proba(["很好"])["h"][0, 0]
    p_weighted = weighted.predict_proba(["很好"])["h"][0, 0]
    assert p_weighted > p_plain


def _complaint_scores(fitted: LinearEngine, texts: list[str]) -> np.ndarray:
    """The complaint head's logit, from its P(yes)."""
    p = fitted.predict_proba(texts)["complaint"][:, 1].astype(np.float64)
    return np.log(p / (1.0 - p))


@pytest.mark.parametrize("share", [0.3, 1.0])
def test_naive_bayes_view_scores_a_two_label_head_with_a_weighted_mean_of_both_fits(share):
    from sklearn.linear_model import LogisticRegression

    config = replace(SMALL, naive_bayes_c={"complaint": 8.0}, naive_bayes_share=share)
    fitted = LinearEngine.fit(config, _data(), LABEL_SETS)
    plain = LinearEngine.fit(replace(SMALL, naive_bayes_c={}), _data(), LABEL_SETS)
    # The naive-Bayes fit by hand: every column scaled by log(P(column | yes) / P(column | no)),
    # from document counts with add-one smoothing.
    features = plain.featurizer.transform(TEXTS)
    used = np.unique(features.indices)
    y = np.array([c == "yes" for c in COMPLAINTS], dtype=np.int64)
    present = (features[:, used] > 0).astype(np.float64)
    yes = 1.0 + np.asarray(present[y == 1].sum(axis=0)).ravel()
    no = 1.0 + np.asarray(present[y == 0].sum(axis=0)).ravel()
    ratios = np.log((yes / yes.sum()) / (no / no.sum()))
    scaled = LogisticRegression(
        C=8.0, class_weight="balanced", max_iter=SMALL.max_iter, solver=SMALL.solver, random_state=0
    )
    with warnings.catch_warnings():  # 30 passes of "sag": the cap is the stopping rule
        warnings.simplefilter("ignore", ConvergenceWarning)
        scaled.fit(features[:, used].multiply(ratios).tocsr(), y)
    texts = [*TEXTS, "快递丢了", "谢谢帮助"]
    unseen = plain.featurizer.transform(texts)[:, used]
    by_hand = unseen.multiply(ratios).tocsr() @ scaled.coef_.ravel() + scaled.intercept_[0]
    expected = (1 - share) * _complaint_scores(plain, texts) + share * by_hand
    np.testing.assert_allclose(_complaint_scores(fitted, texts), expected, atol=1e-3)
    assert _predicted(fitted, "complaint", TEXTS) == COMPLAINTS


def test_naive_bayes_view_is_refused_for_heads_with_more_labels():
    config = replace(SMALL, naive_bayes_c={"sentiment": 8.0})
    with pytest.raises(ConfigError, match=r"expected heads with two labels .*'sentiment'"):
        LinearEngine.fit(config, _data(), LABEL_SETS)


def test_naive_bayes_view_of_a_head_that_is_not_fitted_changes_nothing(engine):
    config = replace(SMALL, naive_bayes_c={"polarity": 8.0})
    fitted = LinearEngine.fit(config, _data(), LABEL_SETS)
    np.testing.assert_array_equal(fitted.weights, engine.weights)


def test_naive_bayes_view_survives_save_and_load(tmp_path):
    config = replace(SMALL, naive_bayes_c={"complaint": 8.0}, naive_bayes_share=0.6)
    fitted = LinearEngine.fit(config, _data(), LABEL_SETS)
    loaded = LinearEngine.load(fitted.save(tmp_path / "nb"))
    assert (loaded.config.naive_bayes_c, loaded.config.naive_bayes_share) == (
        {"complaint": 8.0},
        0.6,
    )
    texts = [*TEXTS, "没见过的句子"]
    np.testing.assert_array_equal(
        loaded.predict_proba(texts)["complaint"], fitted.predict_proba(texts)["complaint"]
    )


def test_fit_rejects_labels_outside_the_label_set():
    data = {"topic": HeadData(TEXTS, ["logistics"] * 7 + ["weather"])}
    with pytest.raises(ConfigError, match="weather"):
        LinearEngine.fit(SMALL, data, {"topic": LABEL_SETS["topic"]})


def test_char_segmenter_config_fits_too():
    config = LinearConfig(
        char_features_log2=12,
        word_features_log2=12,
        segmenter="char",
        regularization_c={"topic": 100.0},
    )
    fitted = LinearEngine.fit(config, {"topic": HeadData(TEXTS, TOPICS)}, LABEL_SETS)
    assert _predicted(fitted, "topic", TEXTS) == TOPICS


# --- save and load ---------------------------------------------------------------------------


def test_save_writes_config_weights_and_card_and_no_pickle(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "polarity_lexicon.json"]
    for path in saved.rglob("*"):
        assert path.suffix not in {".pkl", ".pickle", ".joblib", ".npy", ".npz", ".pt"}
        # The pickle protocol 2+ header; safetensors files start with a little-endian length.
        assert not path.read_bytes().startswith(b"\x80")


def test_weights_get_the_mode_of_every_other_saved_file(saved):
    modes = {path.name: path.stat().st_mode & 0o777 for path in saved.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_saved_config_describes_heads_and_features(saved):
    config = json.loads((saved / "config.json").read_text(encoding="utf-8"))
    assert config["engine"] == "linear"
    assert config["name"] == "tiny-test"
    assert {head: spec["labels"] for head, spec in config["heads"].items()} == LABEL_SETS
    assert config["features"]["char_features_log2"] == 16
    assert config["non_default_hyperparameters"]["word_features_log2"] == 16
    assert len(config["version"]) == 12


def test_model_card_lists_every_head_and_label(saved):
    card = (saved / "README.md").read_text(encoding="utf-8")
    assert "tiny-test" in card
    for head, labels in LABEL_SETS.items():
        line = next(line for line in card.splitlines() if f"**{head}**" in line)
        for label in labels:
            assert label in line


def test_save_load_round_trip_gives_identical_probabilities(engine, saved):
    loaded = LinearEngine.load(saved)
    texts = [*TEXTS, *SENTIMENT_ONLY, "完全没见过的句子", "快递"]
    before, after = engine.predict_proba(texts), loaded.predict_proba(texts)
    assert set(after) == set(before)
    for head in before:
        np.testing.assert_array_equal(before[head], after[head])
    assert loaded.heads == engine.heads
    assert loaded.config == engine.config
    assert loaded.name == "tiny-test"
    assert loaded.version == engine.version != "unsaved"


def test_model_saved_before_solver_and_min_df_loads_with_how_it_was_trained(saved, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(saved, old)
    config = json.loads((old / "config.json").read_text(encoding="utf-8"))
    for key in ("solver", "min_df", "naive_bayes_c", "naive_bayes_share", "hidden_share"):
        del config["features"][key]
    (old / "config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = LinearEngine.load(old)
    assert (loaded.config.solver, loaded.config.min_df) == ("lbfgs", {})
    assert loaded.config.naive_bayes_c == {}
    assert loaded.config.hidden_share == {} and loaded.hidden is None


def test_saving_twice_gives_the_same_version(engine, saved, tmp_path):
    again = engine.save(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
    assert LinearEngine.load(again).version == LinearEngine.load(saved).version


# --- load errors -----------------------------------------------------------------------------


def test_load_of_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match=re.escape(str(missing))):
        LinearEngine.load(missing)


@pytest.mark.parametrize("remove", ["config.json", "model.safetensors"])
def test_load_of_incomplete_directory_names_it_and_the_file(saved, tmp_path, remove):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / remove).unlink()
    with pytest.raises(ModelError) as caught:
        LinearEngine.load(broken)
    assert str(broken) in str(caught.value)
    assert remove in str(caught.value)


def test_load_of_corrupt_config_names_the_directory(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match=re.escape(str(broken))):
        LinearEngine.load(broken)


def test_load_of_another_engine_names_the_config(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    config = json.loads((broken / "config.json").read_text(encoding="utf-8"))
    config["engine"] = "transformer"
    (broken / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match="transformer"):
        LinearEngine.load(broken)


@pytest.mark.parametrize("damage", ["garbage-weights", "truncated-weights", "config-no-features"])
def test_load_of_corrupt_weights_names_the_directory(saved, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = broken / "model.safetensors"
    if damage == "garbage-weights":
        weights.write_bytes(b"this is not a safetensors file")
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        config = json.loads((broken / "config.json").read_text(encoding="utf-8"))
        del config["features"]
        (broken / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match=re.escape(str(broken))):
        LinearEngine.load(broken)


# --- the hidden layer ------------------------------------------------------------------------

# Every head learns the shared hidden layer too; its share of the topic head is 1 (the layer's
# probabilities alone), so that what the layer learned shows there unmixed.
HIDDEN = replace(
    SMALL,
    hidden_share={"topic": 1.0, "sentiment": 0.5, "complaint": 0.5},
    hidden_units=32,
    hidden_epochs=60,
    hidden_learning_rate=0.02,
    hidden_dropout=0.0,
)


@pytest.fixture(scope="module")
def hidden_engine() -> LinearEngine:
    return LinearEngine.fit(HIDDEN, _data(), LABEL_SETS)


def test_hidden_layer_overfits_a_tiny_training_set(hidden_engine):
    assert hidden_engine.hidden is not None
    assert set(hidden_engine.hidden.head_weights) == {"topic", "sentiment", "complaint"}
    assert _predicted(hidden_engine, "topic", TEXTS) == TOPICS
    assert _predicted(hidden_engine, "sentiment", SENTIMENT_ONLY) == SENTIMENT_ONLY_LABELS


def test_hidden_share_blends_the_layer_with_the_linear_heads(hidden_engine):
    layer = hidden_engine.hidden
    assert layer is not None
    features = hidden_engine.featurizer.weighted(TEXTS)
    from_layer = layer.predict_proba(features.indptr, features.columns, features.values)
    alone = LinearEngine(
        HIDDEN,
        hidden_engine.featurizer,
        hidden_engine.heads,
        hidden_engine.weights,
        hidden_engine.biases,
    ).predict_proba(TEXTS)
    blended = hidden_engine.predict_proba(TEXTS)
    np.testing.assert_allclose(blended["topic"], from_layer["topic"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        blended["sentiment"], 0.5 * alone["sentiment"] + 0.5 * from_layer["sentiment"], atol=1e-6
    )
    assert not np.allclose(alone["topic"], from_layer["topic"], atol=1e-3)


def test_hidden_layer_gives_labels_absent_from_training_no_probability(hidden_engine):
    other = LABEL_SETS["topic"].index("other")
    assert np.all(hidden_engine.predict_proba([*TEXTS, "没见过"])["topic"][:, other] < 1e-6)


def test_hidden_layer_fit_is_deterministic_in_one_process_or_two(tmp_path):
    LinearEngine.fit(HIDDEN, _data(), LABEL_SETS, processes=1).save(tmp_path / "one")
    LinearEngine.fit(HIDDEN, _data(), LABEL_SETS, processes=2).save(tmp_path / "two")
    first = load_file(str(tmp_path / "one" / "model.safetensors"))
    second = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert first.keys() == second.keys()
    assert {"hidden.embedding", "hidden.columns", "hidden.heads.topic.weight"} <= first.keys()
    for name, tensor in first.items():
        np.testing.assert_array_equal(tensor, second[name], err_msg=name)


def test_hidden_layer_survives_save_and_load(hidden_engine, tmp_path):
    loaded = LinearEngine.load(hidden_engine.save(tmp_path / "model"))
    texts = [*TEXTS, *SENTIMENT_ONLY, "快递"]
    before, after = hidden_engine.predict_proba(texts), loaded.predict_proba(texts)
    for head in before:
        np.testing.assert_array_equal(before[head], after[head])
    assert loaded.config == hidden_engine.config


def test_hidden_layer_learns_only_the_listed_heads_the_data_has():
    data = {"sentiment": HeadData(TEXTS, SENTIMENTS)}
    fitted = LinearEngine.fit(HIDDEN, data, {"sentiment": LABEL_SETS["sentiment"]})
    assert fitted.hidden is not None and set(fitted.hidden.head_weights) == {"sentiment"}
    unlisted = LinearEngine.fit(replace(HIDDEN, hidden_share={"urgency": 0.5}), _data(), LABEL_SETS)
    assert unlisted.hidden is None


def test_hidden_layer_gives_embedding_rows_only_to_columns_in_hidden_min_df_of_its_rows():
    fitted = LinearEngine.fit(replace(HIDDEN, hidden_min_df=0.25), _data(), LABEL_SETS)
    assert fitted.hidden is not None
    counts = fitted.featurizer.counts(["退", "丢"])
    frequent, rare = (int(counts.columns[counts.indptr[row]]) for row in (0, 1))
    columns = set(fitted.hidden.columns.tolist())
    assert frequent in columns and rare not in columns


def test_lazy_adam_step_moves_exactly_the_touched_rows_as_adam_does():
    """More rows than one chunk of the step, so the chunking shows if it changes anything."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2000, 8)).astype(np.float32)
    state = _EmbeddingAdam(values.copy())
    rows = np.sort(rng.choice(2000, size=700, replace=False))
    gradient = rng.normal(size=(700, 8)).astype(np.float32)
    rate = 0.01
    state.step(rows, gradient.copy(), rate)
    first = np.float32(1.0 - _BETA1) * gradient
    second = np.float32(1.0 - _BETA2) * (gradient * gradient)
    expected = values.copy()
    expected[rows] -= np.float32(rate) * first / (np.sqrt(second) + np.float32(_EPSILON))
    np.testing.assert_allclose(state.values, expected, rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(2000), rows)
    np.testing.assert_array_equal(state.values[untouched], values[untouched])


def test_hidden_min_df_that_no_column_reaches_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"hidden_min_df.*\(got 0\.99\)"):
        LinearEngine.fit(replace(HIDDEN, hidden_min_df=0.99), _data(), LABEL_SETS)
