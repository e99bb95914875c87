"""Tests of fewcells.analysis.evaluate: metrics against scikit-learn, ROC averaging, the
learning-curve fit on synthetic data, summaries, and the end-to-end driver on synthetic job
outputs."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from fewcells.analysis.evaluate import evaluate_experiment
from fewcells.analysis.learning_curve import fit_learning_curve, saturating_curve
from fewcells.analysis.metrics import (
    binary_metrics,
    classwise_metrics,
    classwise_summary,
    confusion_matrix_square,
    confusion_matrix_table,
    fold_scores,
    mean_roc,
    multiclass_metrics,
    network_outputs,
    probability_columns,
    with_replicate,
)
from fewcells.analysis.report import classwise_markdown, summary_markdown
from fewcells.analysis.summary import summarize
from fewcells.errors import FewcellsError

BINARY = ["healthy", "blast"]
MULTI = ["lymphocyte", "blast", "neutrophil"]


def make_predictions(
    class_names: list[str], sizes=(10, 20, 40, 80), folds=5, n_test=20, seed=0, strength=0.8
) -> pd.DataFrame:
    """Predictions that get better with size: the true class's logit grows with log(size)."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        for fold in range(folds):
            for split, count in (("test", n_test), ("val", 6)):
                targets = np.arange(count) % len(class_names)
                logits = rng.normal(0.0, 1.0, (count, len(class_names)))
                logits[np.arange(count), targets] += strength * np.log(size)
                probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
                for i, target in enumerate(targets):
                    row = {
                        "fold": fold,
                        "size": size,
                        "image_id": f"img{fold}_{split}_{i}",
                        "target": int(target),
                        "split": split,
                    }
                    row.update({f"p_{c}": probabilities[i, k] for k, c in enumerate(class_names)})
                    rows.append(row)
    return pd.DataFrame(rows)


def make_history(sizes=(10, 20, 40, 80), folds=5, seed=0) -> pd.DataFrame:
    """Training loss falls; validation loss is U-shaped; folds stop at different epochs."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        for fold in range(folds):
            best = int(rng.integers(5, 15))
            for epoch in range(best + 10):
                rows.append(
                    {
                        "fold": fold,
                        "size": size,
                        "epoch": epoch,
                        "train_loss": 0.7 * math.exp(-epoch / 8) + 0.02,
                        "val_loss": 0.3 + 0.002 * (epoch - best) ** 2 + rng.normal(0, 0.01),
                        "val_accuracy": 0.8,
                        "lr": 1e-3,
                    }
                )
    return pd.DataFrame(rows)


def write_jobs(tmp_path, pred: pd.DataFrame, history: pd.DataFrame, class_names, task):
    """Lay the frames out as one predictions.csv + history.csv per (size, fold, replicate)
    training (frames without a replicate column: one training per (size, fold))."""
    prediction_files, history_files = [], []
    pred, history = with_replicate(pred), with_replicate(history)
    for (size, fold, replicate), group in pred.groupby(["size", "fold", "replicate"]):
        job = tmp_path / "jobs" / f"n{size}_f{fold}_r{replicate}"
        job.mkdir(parents=True)
        group.to_csv(job / "predictions.csv", index=False)
        history[
            (history["size"] == size)
            & (history["fold"] == fold)
            & (history["replicate"] == replicate)
        ].to_csv(job / "history.csv", index=False)
        prediction_files.append(job / "predictions.csv")
        history_files.append(job / "history.csv")
    classes_json = tmp_path / "CLASSES.json"
    classes_json.write_text(json.dumps({"classes": class_names, "task": task}))
    return prediction_files, history_files, classes_json


# ------------------------------------------------------------------------------ metrics


def brute_force_youden(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Max of sensitivity + specificity - 1 over every observed score as threshold, and the
    highest threshold attaining it."""
    best_j, best_threshold = -np.inf, None
    for threshold in sorted(set(score), reverse=True):
        predicted = score >= threshold
        sensitivity = np.mean(predicted[y_true == 1])
        specificity = np.mean(~predicted[y_true == 0])
        if sensitivity + specificity - 1 > best_j + 1e-12:
            best_j, best_threshold = sensitivity + specificity - 1, threshold
    return best_j, best_threshold


def test_binary_metrics_match_sklearn_and_brute_force():
    pred = make_predictions(BINARY)
    metrics = binary_metrics(pred, "blast")
    assert len(metrics) == 4 * 5
    for row in metrics.itertuples():
        test = pred[
            (pred["size"] == row.size) & (pred["fold"] == row.fold) & (pred["split"] == "test")
        ]
        y_true, score = test["target"].to_numpy(), test["p_blast"].to_numpy()
        y_pred = (score >= 0.5).astype(int)
        tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
        assert row.n_test == 20
        assert row.roc_auc == pytest.approx(roc_auc_score(y_true, score))
        assert row.f1 == pytest.approx(f1_score(y_true, y_pred))
        assert row.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
        assert row.sensitivity == pytest.approx(tp / (tp + fn))
        assert row.specificity == pytest.approx(tn / (tn + fp))
        best_j, best_threshold = brute_force_youden(y_true, score)
        assert row.youden_sensitivity + row.youden_specificity - 1 == pytest.approx(best_j)
        assert row.youden_threshold == pytest.approx(best_threshold)


def test_binary_metrics_positive_class_picks_its_column_and_target():
    pred = make_predictions(BINARY, sizes=(10,), folds=1)
    as_healthy = binary_metrics(pred, "healthy").iloc[0]
    test = pred[pred["split"] == "test"]
    assert as_healthy.roc_auc == pytest.approx(
        roc_auc_score(test["target"] == 0, test["p_healthy"])
    )
    with pytest.raises(FewcellsError, match="p_monocyte"):
        binary_metrics(pred, "monocyte")


def test_one_class_fold_gives_nan_auc_and_logs(caplog):
    pred = make_predictions(BINARY, sizes=(10,), folds=2)
    pred = pred[~((pred["fold"] == 1) & (pred["split"] == "test") & (pred["target"] == 1))]
    with caplog.at_level(logging.WARNING, logger="fewcells.analysis.metrics"):
        metrics = binary_metrics(pred, "blast").set_index("fold")
    assert np.isfinite(metrics.loc[0, "roc_auc"])
    assert np.isnan(metrics.loc[1, "roc_auc"])
    assert np.isnan(metrics.loc[1, "youden_threshold"])
    assert np.isnan(metrics.loc[1, "sensitivity"])
    assert np.isfinite(metrics.loc[1, "specificity"])
    assert "only one class" in caplog.text


def test_multiclass_metrics_match_sklearn():
    pred = make_predictions(MULTI, sizes=(10, 40), folds=3)
    metrics = multiclass_metrics(pred, MULTI)
    assert len(metrics) == 6
    for row in metrics.itertuples():
        test = pred[
            (pred["size"] == row.size) & (pred["fold"] == row.fold) & (pred["split"] == "test")
        ]
        y_true = test["target"].to_numpy()
        y_pred = test[[f"p_{c}" for c in MULTI]].to_numpy().argmax(axis=1)
        assert row.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
        assert row.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
        assert row.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_classwise_precision_and_sensitivity_match_sklearn():
    pred = make_predictions(MULTI, sizes=(10, 40), folds=3, strength=0.4)
    # no test image predicted as a class -> its precision is undefined (NaN), not 0
    pred.loc[pred["split"] == "test", "p_neutrophil"] = 0.0
    per_fold = classwise_metrics(pred, MULTI)
    assert len(per_fold) == 2 * 3 * len(MULTI)
    test = pred[pred["split"] == "test"]
    labels = [0, 1, 2]
    for (size, fold), rows in per_fold.groupby(["size", "fold"]):
        job = test[(test["size"] == size) & (test["fold"] == fold)]
        y_true = job["target"].to_numpy()
        y_pred = job[[f"p_{c}" for c in MULTI]].to_numpy().argmax(axis=1)
        kwargs = {"labels": labels, "average": None, "zero_division": np.nan}
        np.testing.assert_allclose(rows["precision"], precision_score(y_true, y_pred, **kwargs))
        np.testing.assert_allclose(rows["sensitivity"], recall_score(y_true, y_pred, **kwargs))
        np.testing.assert_array_equal(rows["support"], np.bincount(y_true, minlength=3))
        assert rows["class_name"].tolist() == MULTI
    assert per_fold.loc[per_fold["class_name"] == "neutrophil", "precision"].isna().all()
    summary = classwise_summary(pred, MULTI)
    for size, rows in summary.groupby("size"):
        pooled = test[test["size"] == size]
        y_true = pooled["target"].to_numpy()
        y_pred = pooled[[f"p_{c}" for c in MULTI]].to_numpy().argmax(axis=1)
        kwargs = {"labels": labels, "average": None, "zero_division": np.nan}
        np.testing.assert_allclose(rows["precision"], precision_score(y_true, y_pred, **kwargs))
        np.testing.assert_allclose(rows["sensitivity"], recall_score(y_true, y_pred, **kwargs))
        folds = per_fold[per_fold["size"] == size].set_index("class_name")
        lymphocyte = rows.set_index("class_name").loc["lymphocyte"]
        assert lymphocyte["sensitivity_mean"] == pytest.approx(
            folds.loc["lymphocyte", "sensitivity"].mean()
        )
        assert lymphocyte["sensitivity_sd"] == pytest.approx(
            folds.loc["lymphocyte", "sensitivity"].std(ddof=1)
        )
        assert lymphocyte["support"] == (y_true == 0).sum()
    assert (summary.loc[summary["class_name"] == "neutrophil", "precision_folds"] == 0).all()
    lines = classwise_markdown(summary, 40)
    assert any(line.startswith("| neutrophil | – (–) | 0.00") for line in lines)


def test_confusion_matrix_table_counts_and_percent():
    pred = make_predictions(MULTI, sizes=(10, 40), folds=3)
    table = confusion_matrix_table(pred, MULTI, 10)
    test = pred[(pred["split"] == "test") & (pred["size"] == 10)]
    expected = confusion_matrix(
        test["target"], test[[f"p_{c}" for c in MULTI]].to_numpy().argmax(axis=1), labels=[0, 1, 2]
    )
    counts = confusion_matrix_square(table, "count", MULTI)
    assert list(counts.index) == MULTI and list(counts.columns) == MULTI
    np.testing.assert_array_equal(counts.to_numpy(), expected)
    assert table.groupby("true_class")["percent"].sum().to_numpy() == pytest.approx(100.0)
    without_neutrophils = pred[pred["target"] != 2]
    table = confusion_matrix_table(without_neutrophils, MULTI, 10)
    assert table.loc[table["true_class"] == "neutrophil", "percent"].isna().all()
    with pytest.raises(FewcellsError, match="size 999"):
        confusion_matrix_table(pred, MULTI, 999)


# ---------------------------------------------------------------------------- mean ROC


def test_mean_roc_known_curve_and_band():
    one_fold = pd.DataFrame(
        {
            "fold": 0,
            "size": 10,
            "image_id": list("abcd"),
            "target": [0, 0, 1, 1],
            "split": "test",
            "p_healthy": [0.9, 0.4, 0.6, 0.1],
            "p_blast": [0.1, 0.6, 0.4, 0.9],
        }
    )
    roc = mean_roc(one_fold, "blast", 10, grid=5).set_index("fpr")
    # ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1); the upper point is used at a vertical step.
    assert roc["tpr_mean"].to_numpy() == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0])
    assert roc["auc_mean"].iloc[0] == pytest.approx(0.75)

    pred = make_predictions(BINARY, sizes=(10,), folds=5)
    roc = mean_roc(pred, "blast", 10)
    assert len(roc) == 101
    assert roc["fpr"].iloc[0] == 0.0 and roc["fpr"].iloc[-1] == 1.0
    assert np.all(np.diff(roc["tpr_mean"]) >= 0)
    assert roc["tpr_mean"].iloc[-1] == pytest.approx(1.0)
    assert np.all(roc["tpr_lower"] <= roc["tpr_mean"]) and np.all(
        roc["tpr_mean"] <= roc["tpr_upper"]
    )
    assert roc["tpr_lower"].min() >= 0 and roc["tpr_upper"].max() <= 1
    assert roc["tpr_sd"].max() > 0
    assert roc["n_folds"].iloc[0] == 5
    aucs = binary_metrics(pred, "blast")["roc_auc"]
    assert roc["auc_mean"].iloc[0] == pytest.approx(aucs.mean())


# ---------------------------------------------------------------------- learning curve


def synthetic_scores(plateau=0.95, start=0.5, tau=25.0, noise=0.01, folds=10, seed=3):
    rng = np.random.default_rng(seed)
    sizes = np.arange(10, 201, 10)
    rows = [
        (size, fold, saturating_curve(size, plateau, start, tau) + rng.normal(0, noise))
        for fold in range(folds)
        for size in sizes
    ]
    return pd.DataFrame(rows, columns=["size", "fold", "score"])


def test_learning_curve_recovers_known_parameters():
    plateau, start, tau = 0.95, 0.5, 25.0
    true_n = math.ceil(tau * math.log((plateau - start) / (0.05 * plateau)))  # 57
    fit = fit_learning_curve(synthetic_scores(plateau, start, tau), n_boot=200, seed=1)
    assert fit["ok"] and fit["reason"] is None
    assert fit["plateau"] == pytest.approx(plateau, abs=0.01)
    assert fit["tau"] == pytest.approx(tau, rel=0.15)
    assert abs(fit["n_at_fraction"] - true_n) <= 4
    assert fit["plateau_ci"][0] <= plateau <= fit["plateau_ci"][1]
    assert fit["n_at_fraction_ci"][0] <= true_n <= fit["n_at_fraction_ci"][1]
    assert fit["n_boot_ok"] == 200
    curve = fit["curve"]
    assert curve["size"].min() == 10 and curve["size"].max() == 200
    assert np.all(curve["fitted_lower"] <= curve["fitted_score"] + 1e-9)
    json.dumps({k: v for k, v in fit.items() if k != "curve"})  # JSON-friendly


def test_learning_curve_plateau_beyond_range_gives_none():
    fit = fit_learning_curve(
        synthetic_scores(plateau=0.9, start=0.5, tau=400.0, noise=0.0, folds=3), n_boot=20
    )
    assert fit["ok"]
    assert fit["n_at_fraction"] is None


@pytest.mark.parametrize(
    "frame, reason",
    [
        (
            pd.DataFrame({"size": [10, 20] * 3, "fold": [0, 0, 1, 1, 2, 2], "score": 0.8}),
            "3 or more",
        ),
        (pd.DataFrame({"size": [10, 20, 30], "fold": 0, "score": np.nan}), "3 or more"),
        (pd.DataFrame({"size": [10, 20, 30], "fold": 0, "score": [5.0, -2.0, 7.0]}), "[0, 1]"),
        (pd.DataFrame({"size": [10, 20, 30], "fold": 0, "auc": 0.9}), "columns"),
        (pd.DataFrame({"size": [10, 20, 30], "fold": 0, "score": ["x", "y", "z"]}), "3 or more"),
    ],
)
def test_learning_curve_garbage_gives_nan_and_reason(frame, reason):
    fit = fit_learning_curve(frame, n_boot=10)
    assert not fit["ok"]
    assert reason in fit["reason"]
    assert math.isnan(fit["plateau"]) and fit["n_at_fraction"] is None


def test_learning_curve_single_fold_fits_without_ci():
    fit = fit_learning_curve(synthetic_scores(folds=1), n_boot=10)
    assert fit["ok"] and fit["plateau_ci"] == [None, None]
    assert "2 or more folds" in fit["note"]


# ---------------------------------------------------------------------------- summaries


def test_summarize_binary_with_paper_reference():
    metrics = binary_metrics(make_predictions(BINARY, sizes=(10, 200)), "blast")
    summary = summarize(metrics, "binary", "all_binary").set_index("size")
    at_200 = metrics[metrics["size"] == 200]["roc_auc"]
    assert summary.loc[200, "roc_auc_mean"] == pytest.approx(at_200.mean())
    assert summary.loc[200, "roc_auc_sd"] == pytest.approx(at_200.std(ddof=1))
    assert summary.loc[200, "n_folds"] == 5
    assert (summary.loc[200, "paper_mean"], summary.loc[200, "paper_sd"]) == (0.97, 0.02)
    assert np.isnan(summary.loc[10, "paper_mean"])
    assert list(summary.columns[:6]) == [
        "n_folds",
        "n_networks",
        "n_collapsed",
        "roc_auc_mean",
        "roc_auc_sd",
        "sensitivity_mean",
    ]


def test_summarize_multiclass_places_full_set_number_at_largest_size():
    metrics = multiclass_metrics(make_predictions(MULTI, sizes=(10, 40)), MULTI)
    summary = summarize(metrics, "multiclass", "all_multiclass_f1").set_index("size")
    assert summary.loc[40, "paper_mean"] == 0.81 and np.isnan(summary.loc[10, "paper_mean"])
    assert "macro_f1_mean" in summary.columns
    with pytest.raises(FewcellsError, match="binary result"):
        summarize(metrics, "multiclass", "aml_binary")
    with pytest.raises(FewcellsError, match="unknown paper reference"):
        summarize(metrics, "multiclass", "nature_2030")


def test_summary_markdown_table_and_learning_curve_line():
    metrics = binary_metrics(make_predictions(BINARY, sizes=(10, 20, 200)), "blast")
    summary = summarize(metrics, "binary", "all_binary")
    fit = fit_learning_curve(synthetic_scores(), n_boot=50)
    text = summary_markdown(summary, fit, "ALL binary", reference="all_binary")
    assert text.startswith("# ALL binary")
    assert "| n (images) | folds | collapsed | ROC-AUC | paper |" in text
    assert "| 200 | 5 | 0 |" in text and "0.970 ± 0.020" in text
    assert f"95% of plateau reached at n = {fit['n_at_fraction']} (95% CI " in text
    assert "about n = 30" in text
    failed = fit_learning_curve(synthetic_scores().head(2), n_boot=10)
    assert "fit failed" in summary_markdown(summary, failed, "ALL binary")


# ----------------------------------------------------------------------------- end to end


def test_evaluate_experiment_binary_writes_every_file(tmp_path):
    pred, history = make_predictions(BINARY), make_history()
    # At n = 10 every test set holds healthy cells only: NaN AUCs, no ROC, still no crash.
    pred = pred[~((pred["size"] == 10) & (pred["split"] == "test") & (pred["target"] == 1))]
    files = write_jobs(tmp_path, pred, history, BINARY, "binary")
    out = tmp_path / "eval"
    evaluate_experiment(
        *files,
        out,
        experiment="ALL binary",
        reference="all_binary",
        plot_options={"dpi": 60},
        n_boot=20,
    )
    expected = {
        "metrics.csv",
        "summary.csv",
        "summary.md",
        "learning_curve.csv",
        "learning_curve_fit.json",
        "mean_roc.csv",
        "loss_curves.png",
        "roc_mean.png",
        "auc_boxplot.png",
        "learning_curve.png",
    }
    assert {p.name for p in out.iterdir()} == expected  # and no temporary leftovers
    for name in expected:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(out / "metrics.csv")) == 20
    assert set(pd.read_csv(out / "mean_roc.csv")["size"]) == {20, 40, 80}
    summary = pd.read_csv(out / "summary.csv").set_index("size")
    assert summary.loc[10, "n_folds"] == 0 and summary.loc[20, "n_folds"] == 5
    fit_text = (out / "learning_curve_fit.json").read_text()
    assert "NaN" not in fit_text and json.loads(fit_text)["n_boot"] == 20
    assert "of plateau" in (out / "summary.md").read_text()


def test_evaluate_experiment_multiclass_writes_every_file(tmp_path):
    pred, history = make_predictions(MULTI), make_history()
    files = write_jobs(tmp_path, pred, history, MULTI, "multiclass")
    out = tmp_path / "eval"
    evaluate_experiment(
        *files, out, experiment="ALL 3-class", reference=None, plot_options=None, n_boot=20
    )
    assert {p.name for p in out.iterdir()} == {
        "metrics.csv",
        "summary.csv",
        "summary.md",
        "learning_curve.csv",
        "learning_curve_fit.json",
        "confusion_matrix.csv",
        "confusion_matrix_by_size.csv",
        "classwise.csv",
        "classwise_summary.csv",
        "loss_curves.png",
        "f1_boxplot.png",
        "learning_curve.png",
        "confusion_matrix.png",
    }
    largest = pd.read_csv(out / "confusion_matrix.csv")
    assert set(largest["size"]) == {80} and len(largest) == 9
    assert set(pd.read_csv(out / "confusion_matrix_by_size.csv")["size"]) == {10, 20, 40, 80}
    assert len(pd.read_csv(out / "classwise.csv")) == 4 * 5 * len(MULTI)
    assert "Class-wise precision and sensitivity at n = 80" in (out / "summary.md").read_text()


def _break_first(files, edit):
    path = files[0]
    edit(path)
    return path


@pytest.mark.parametrize(
    "which, edit, message",
    [
        (0, lambda p: p.unlink(), "file not found"),
        (0, lambda p: p.write_text("fold,size\n0,10\n"), "missing column"),
        (0, lambda p: p.write_text(""), "not a readable CSV"),
        (1, lambda p: p.write_text(p.read_text().replace("0.3", "oops", 1)), "must hold numbers"),
        (
            0,
            lambda p: p.write_text(p.read_text().replace(",test,", ",train,")),
            "no rows with split == 'test'",
        ),
    ],
)
def test_evaluate_experiment_bad_input_names_the_file(tmp_path, which, edit, message):
    files = write_jobs(tmp_path, make_predictions(BINARY), make_history(), BINARY, "binary")
    broken = _break_first(files[which], edit)
    out = tmp_path / "eval"
    with pytest.raises(FewcellsError, match=message) as error:
        evaluate_experiment(*files, out, experiment="x", reference=None, plot_options={}, n_boot=5)
    assert str(broken) in str(error.value)
    assert not out.exists()


def test_evaluate_experiment_rejects_inconsistent_inputs(tmp_path):
    predictions, histories, classes = write_jobs(
        tmp_path, make_predictions(BINARY), make_history(), BINARY, "binary"
    )
    out = tmp_path / "eval"

    def run(**changes):
        arguments = {
            "prediction_files": predictions,
            "history_files": histories,
            "classes_json": classes,
            "out_dir": out,
            "experiment": "x",
            "reference": None,
            "plot_options": {},
            "n_boot": 5,
        } | changes
        evaluate_experiment(**arguments)

    with pytest.raises(FewcellsError, match="already read from"):
        run(prediction_files=predictions + predictions[:1])
    with pytest.raises(FewcellsError, match="different \\(size, fold, replicate\\) trainings"):
        run(history_files=histories[1:])
    with pytest.raises(FewcellsError, match="plot_options: unknown keys \\['colour'\\]"):
        run(plot_options={"colour": "red"})
    with pytest.raises(FewcellsError, match="roc_sizes"):
        run(plot_options={"roc_sizes": [15]})
    with pytest.raises(FewcellsError, match="multiclass result"):
        run(reference="all_multiclass_f1")
    classes.write_text(json.dumps({"classes": MULTI, "task": "multiclass"}))
    with pytest.raises(FewcellsError, match="missing column"):
        run()
    assert not out.exists()


# ------------------------------------------------------------- replicates and collapsed runs


def replicated(pred: pd.DataFrame, replicates: int, seed: int = 1) -> pd.DataFrame:
    """`pred` as replicate 0 plus replicates 1.. with the same images and noisier scores."""
    rng = np.random.default_rng(seed)
    frames = [pred.assign(replicate=0)]
    columns = probability_columns(pred)
    for replicate in range(1, replicates):
        copy = pred.assign(replicate=replicate)
        logits = np.log(copy[columns].to_numpy()) + rng.normal(0, 1.0, (len(copy), len(columns)))
        copy[columns] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames.append(copy)
    return pd.concat(frames, ignore_index=True)


def collapse(pred: pd.DataFrame, size: int, fold: int, replicate: int = 0) -> pd.DataFrame:
    """`pred` with one network's test and validation outputs made constant."""
    pred = pred.copy()
    rows = (pred["size"] == size) & (pred["fold"] == fold) & (pred["replicate"] == replicate)
    pred.loc[rows, "p_healthy"], pred.loc[rows, "p_blast"] = 0.5003, 0.4997
    return pred


def test_network_outputs_mark_constant_outputs_only():
    pred = collapse(replicated(make_predictions(BINARY, sizes=(10, 20)), 2), 20, 3, 1)
    outputs = network_outputs(pred).set_index(["size", "fold", "replicate"])
    assert len(outputs) == 2 * 5 * 2
    assert outputs["collapsed"].sum() == 1 and outputs.loc[(20, 3, 1), "collapsed"]
    assert outputs.loc[(20, 3, 1), "output_spread"] == 0.0
    assert (outputs.drop(index=(20, 3, 1))["output_spread"] > 0.1).all()


def test_a_network_stuck_at_its_start_is_collapsed_too():
    from fewcells.contracts import is_collapsed, output_spread

    rng = np.random.default_rng(0)
    stuck = 0.5 + rng.uniform(-0.0019, 0.0019, 25)  # ALL-IDB2 uncertain n = 100, fold 3
    learned = rng.uniform(0.34, 0.67, 25)  # the narrowest trained network seen: 0.33
    assert is_collapsed(output_spread(np.column_stack([stuck, 1 - stuck])))
    assert not is_collapsed(output_spread(np.column_stack([learned, 1 - learned])))


def test_summarize_separates_folds_from_seeds_and_counts_collapsed():
    pred = collapse(replicated(make_predictions(BINARY, sizes=(10, 20)), 3), 20, 2, 0)
    metrics = binary_metrics(pred, "blast").merge(
        network_outputs(pred), on=["size", "fold", "replicate"]
    )
    summary = summarize(metrics, "binary", None).set_index("size")
    at_20 = metrics[metrics["size"] == 20]
    per_fold = at_20.groupby("fold")["roc_auc"]
    assert summary.loc[20, "n_folds"] == 5 and summary.loc[20, "n_networks"] == 15
    assert summary.loc[20, "n_collapsed"] == 1 and summary.loc[10, "n_collapsed"] == 0
    assert summary.loc[20, "roc_auc_mean"] == pytest.approx(per_fold.mean().mean())
    assert summary.loc[20, "roc_auc_sd"] == pytest.approx(per_fold.mean().std(ddof=1))
    assert summary.loc[20, "roc_auc_seed_sd"] == pytest.approx(per_fold.std(ddof=1).mean())
    working = at_20[~at_20["collapsed"]].groupby("fold")["roc_auc"].mean()
    assert summary.loc[20, "roc_auc_without_collapsed_mean"] == pytest.approx(working.mean())
    assert summary.loc[20, "roc_auc_without_collapsed_mean"] > summary.loc[20, "roc_auc_mean"]


def test_summary_without_replicates_has_no_seed_spread():
    metrics = binary_metrics(make_predictions(BINARY, sizes=(10, 20)), "blast")
    summary = summarize(metrics, "binary", None)
    assert summary["roc_auc_seed_sd"].isna().all()
    assert (summary["n_networks"] == summary["n_folds"]).all()


def test_fold_scores_average_replicates_and_can_drop_collapsed():
    metrics = pd.DataFrame(
        {
            "size": [10, 10, 10, 10],
            "fold": [0, 0, 0, 1],
            "replicate": [0, 1, 2, 0],
            "roc_auc": [0.9, 0.7, 0.5, 0.8],
            "collapsed": [False, False, True, True],
        }
    )
    scores = fold_scores(metrics, "roc_auc").set_index("fold")
    assert scores.loc[0, "score"] == pytest.approx(0.7) and scores.loc[0, "networks"] == 3
    clean = fold_scores(metrics, "roc_auc", drop_collapsed=True).set_index("fold")
    assert clean.loc[0, "score"] == pytest.approx(0.8) and 1 not in clean.index


def test_evaluate_experiment_with_replicates_and_a_collapsed_network(tmp_path):
    pred = collapse(replicated(make_predictions(BINARY, sizes=(10, 20, 40, 80)), 3), 10, 1, 2)
    history = pd.concat([make_history().assign(replicate=r) for r in range(3)])
    files = write_jobs(tmp_path, pred, history, BINARY, "binary")
    infos = []
    for path in files[0]:
        info = path.parent / "train_info.json"
        info.write_text(json.dumps({"git_commit": "abc", "cpu_kernel": "compiled (AVX2)"}))
        infos.append(info)
    out = tmp_path / "eval"
    evaluate_experiment(
        *files,
        out,
        experiment="ALL binary",
        reference="all_binary",
        plot_options={"dpi": 60},
        info_files=infos,
        n_boot=20,
    )
    assert (out / "spread_folds_seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 4 * 5 * 3
    assert metrics["collapsed"].sum() == 1
    assert metrics.loc[metrics["collapsed"], ["size", "fold", "replicate"]].values.tolist() == [
        [10, 1, 2]
    ]
    fit = json.loads((out / "learning_curve_fit.json").read_text())
    assert fit["without_collapsed"]["n_points"] == fit["n_points"]  # fold 1 keeps 2 networks
    text = (out / "summary.md").read_text()
    assert "| n (images) | folds | networks | collapsed | ROC-AUC | s.d. between seeds |" in text
    assert "| 10 | 5 | 15 | 1 |" in text
    assert "Without the collapsed networks:" in text
    assert "trainings' git commit: abc" in text and "compiled (AVX2)" in text
    assert "trainings' torch version: unknown" in text  # a field older train_info lacks
    assert len(pd.read_csv(out / "mean_roc.csv").query("size == 80 and fpr == 0")) == 1
