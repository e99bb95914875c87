"""Metrics of trained networks from their test predictions (predictions.csv): per network,
per class, the confusion matrix and the mean ROC curve. Pure functions on DataFrames."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from fewcells.contracts import (
    BINARY_METRICS,
    CLASSWISE_COLUMNS,
    MULTICLASS_METRICS,
    RUN_KEYS,
    is_collapsed,
    output_spread,
)
from fewcells.errors import FewcellsError

log = logging.getLogger(__name__)


def probability_columns(pred: pd.DataFrame) -> list[str]:
    """The `p_<class>` columns of a predictions table, in file order (= target order)."""
    return [c for c in pred.columns if c.startswith("p_")]


def with_replicate(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `replicate` column: 0 (the first network of a fold) where it has none."""
    return frame if "replicate" in frame.columns else frame.assign(replicate=0)


def test_rows(pred: pd.DataFrame) -> pd.DataFrame:
    """The test rows of a predictions table (with a `replicate` column)."""
    pred = with_replicate(pred)
    return pred[pred["split"] == "test"]


def youden(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """The threshold of `score` maximising sensitivity + specificity - 1 for the 0/1 truth
    `y_true` (e.g. chosen on validation images), and that sensitivity and specificity.

    Predicted positive means score >= threshold. Among tied optima the highest threshold
    wins; the threshold is always one of the observed scores.
    """
    y_true, score = np.asarray(y_true), np.asarray(score, dtype=float)
    fpr, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]), float(tpr[best]), float(1.0 - fpr[best])


def binary_metrics(pred: pd.DataFrame, positive_class: str) -> pd.DataFrame:
    """Per network (size, fold, replicate) test metrics of a two-class predictions table.

    The probability columns are in target order, so the positive class's target index is
    the position of `p_<positive_class>` among them. Sensitivity, specificity, accuracy and
    F1 use "positive if p >= 0.5"; the Youden threshold is chosen on the test fold itself
    (descriptive, optimistic). A fold whose test set has one class gets NaN for the AUC,
    the Youden columns and the undefined one of sensitivity/specificity.
    """
    columns = probability_columns(pred)
    score_column = f"p_{positive_class}"
    if score_column not in columns or len(columns) != 2:
        raise FewcellsError(
            f"binary metrics need exactly two p_ columns including {score_column!r}; got {columns}"
        )
    positive_target = columns.index(score_column)
    rows = []
    for (size, fold, replicate), group in test_rows(pred).groupby(RUN_KEYS, sort=True):
        y_true = (group["target"].to_numpy() == positive_target).astype(int)
        score = group[score_column].to_numpy(dtype=float)
        y_pred = (score >= 0.5).astype(int)
        n_positive = int(y_true.sum())
        n_negative = int(len(y_true) - n_positive)
        true_positive = int(((y_pred == 1) & (y_true == 1)).sum())
        true_negative = int(((y_pred == 0) & (y_true == 0)).sum())
        row = {
            "size": int(size),
            "fold": int(fold),
            "replicate": int(replicate),
            "n_test": len(y_true),
            "n_positive": n_positive,
            "n_negative": n_negative,
            "roc_auc": math.nan,
            "sensitivity": true_positive / n_positive if n_positive else math.nan,
            "specificity": true_negative / n_negative if n_negative else math.nan,
            "youden_threshold": math.nan,
            "youden_sensitivity": math.nan,
            "youden_specificity": math.nan,
            "accuracy": accuracy_score(y_true, y_pred),
            "f1": f1_score(y_true, y_pred, zero_division=0.0),
        }
        if n_positive and n_negative:
            row["roc_auc"] = roc_auc_score(y_true, score)
            threshold, sensitivity, specificity = youden(y_true, score)
            row.update(
                youden_threshold=threshold,
                youden_sensitivity=sensitivity,
                youden_specificity=specificity,
            )
        else:
            log.warning(
                "size %s fold %s: test set has only one class (%d positive, %d negative); "
                "ROC-AUC is NaN",
                size,
                fold,
                n_positive,
                n_negative,
            )
        rows.append(row)
    return pd.DataFrame(
        rows, columns=[*RUN_KEYS, "n_test", "n_positive", "n_negative", *BINARY_METRICS]
    )


def predicted_targets(group: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    """The predicted class (argmax of the probabilities) of each row, as a target index."""
    probabilities = group[[f"p_{name}" for name in class_names]].to_numpy(dtype=float)
    return probabilities.argmax(axis=1)


def multiclass_metrics(pred: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per network (size, fold, replicate) test macro F1, accuracy and balanced accuracy
    (prediction = argmax).

    Macro F1 averages over the classes present in the fold's truth or predictions
    (scikit-learn's default); balanced accuracy is the mean recall over the classes present
    in the truth.
    """
    rows = []
    for (size, fold, replicate), group in test_rows(pred).groupby(RUN_KEYS, sort=True):
        y_true = group["target"].to_numpy(dtype=int)
        y_pred = predicted_targets(group, class_names)
        recalls = [np.mean(y_pred[y_true == label] == label) for label in np.unique(y_true)]
        rows.append(
            {
                "size": int(size),
                "fold": int(fold),
                "replicate": int(replicate),
                "n_test": len(y_true),
                "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0.0),
                "accuracy": accuracy_score(y_true, y_pred),
                "balanced_accuracy": float(np.mean(recalls)),
            }
        )
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "n_test", *MULTICLASS_METRICS])


def task_metrics(pred: pd.DataFrame, class_names: Sequence[str], task: str) -> pd.DataFrame:
    """Per network the test metrics of the task: binary_metrics (the second class positive)
    or multiclass_metrics."""
    if task == "binary":
        return binary_metrics(pred, class_names[1])
    return multiclass_metrics(pred, class_names)


def network_outputs(pred: pd.DataFrame) -> pd.DataFrame:
    """Per network (size, fold, replicate): the spread of its test and validation outputs
    and whether they are constant (`collapsed`, see fewcells.contracts)."""
    columns = probability_columns(pred)
    rows = []
    pred = with_replicate(pred)
    for key, group in pred[pred["split"].isin(["test", "val"])].groupby(RUN_KEYS, sort=True):
        spread = output_spread(group[columns].to_numpy(dtype=float))
        rows.append(
            dict(zip(RUN_KEYS, map(int, key), strict=True))
            | {"output_spread": spread, "collapsed": is_collapsed(spread)}
        )
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "output_spread", "collapsed"])


def fold_scores(metrics: pd.DataFrame, metric: str, *, drop_collapsed: bool = False):
    """Per (size, fold): `metric` averaged over the fold's replicates (columns size, fold,
    score, networks); with drop_collapsed the collapsed networks are left out first (a fold
    whose networks all collapsed then has no score at that size)."""
    kept = metrics[~metrics["collapsed"]] if drop_collapsed else metrics
    kept = kept[np.isfinite(kept[metric].to_numpy(dtype=float))]
    grouped = kept.groupby(["size", "fold"], sort=True)[metric]
    return pd.DataFrame({"score": grouped.mean(), "networks": grouped.count()}).reset_index()


def classwise_table(test: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class of a set of test rows: support (images of the class), n_predicted,
    precision and sensitivity (recall); NaN where undefined (nothing predicted as the
    class, or no image of it)."""
    y_true = test["target"].to_numpy(dtype=int)
    y_pred = predicted_targets(test, class_names)
    labels = list(range(len(class_names)))
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan
    )
    return pd.DataFrame(
        {
            "class_name": list(class_names),
            "support": support.astype(int),
            "n_predicted": np.bincount(y_pred, minlength=len(class_names)),
            "precision": precision.astype(float),
            "sensitivity": recall.astype(float),
        }
    )


def classwise_metrics(pred: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per (size, fold) and class: support, n_predicted, precision and sensitivity of the
    test fold (prediction = argmax), as Matek et al. 2019 report them."""
    frames = [
        classwise_table(group, class_names).assign(size=int(size), fold=int(fold))
        for (size, fold), group in test_rows(pred).groupby(["size", "fold"], sort=True)
    ]
    return pd.concat(frames, ignore_index=True)[CLASSWISE_COLUMNS]


def classwise_summary(pred: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per size and class: precision and sensitivity of the test predictions pooled over
    folds (support and n_predicted summed over folds; with a test set shared by the folds
    each image counts once per fold), and their mean, sd and number of folds where defined.
    """
    per_fold = classwise_metrics(pred, class_names)
    rows = []
    for size, test in test_rows(pred).groupby("size", sort=True):
        pooled = classwise_table(test, class_names).assign(size=int(size))
        folds = per_fold[per_fold["size"] == size].groupby("class_name", sort=False)
        for name in ("precision", "sensitivity"):
            stats = folds[name].agg(["mean", "std", "count"]).reindex(list(class_names))
            pooled[f"{name}_mean"] = stats["mean"].to_numpy()
            pooled[f"{name}_sd"] = stats["std"].to_numpy()
            pooled[f"{name}_folds"] = stats["count"].to_numpy(dtype=int)
        rows.append(pooled)
    table = pd.concat(rows, ignore_index=True)
    return table[["size", *[c for c in table.columns if c != "size"]]]


def confusion_matrix_table(
    pred: pd.DataFrame, class_names: Sequence[str], size: int
) -> pd.DataFrame:
    """Test confusion matrix of one training size, summed over folds, in tidy form.

    Columns: size, true_class, predicted_class, count, percent (of that true class; NaN for
    a class with no test images). Rows run over every (true, predicted) pair in class order.
    """
    test = test_rows(pred)
    test = test[test["size"] == size]
    if test.empty:
        raise FewcellsError(f"no test predictions for training size {size}")
    n_classes = len(class_names)
    counts = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(counts, (test["target"].to_numpy(dtype=int), predicted_targets(test, class_names)), 1)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(row_totals > 0, 100.0 * counts / row_totals, np.nan)
    true_index, predicted_index = np.meshgrid(range(n_classes), range(n_classes), indexing="ij")
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame(
        {
            "size": int(size),
            "true_class": names[true_index.ravel()],
            "predicted_class": names[predicted_index.ravel()],
            "count": counts.ravel(),
            "percent": percent.ravel(),
        }
    )


def confusion_matrix_square(
    table: pd.DataFrame, value: str, class_names: Sequence[str]
) -> pd.DataFrame:
    """Square matrix (rows = true class, columns = predicted class) of `count` or `percent`."""
    return table.pivot(index="true_class", columns="predicted_class", values=value).reindex(
        index=list(class_names), columns=list(class_names)
    )


def _tpr_on_grid(fpr: np.ndarray, tpr: np.ndarray, fpr_grid: np.ndarray) -> np.ndarray:
    """The piecewise-linear ROC curve through (fpr, tpr) at each grid fpr; at a vertical step
    (several points with one fpr) the upper point is taken."""
    unique_fpr, first = np.unique(fpr, return_index=True)
    last = np.append(first[1:] - 1, len(fpr) - 1)
    entering, leaving = tpr[first], tpr[last]
    k = np.searchsorted(unique_fpr, fpr_grid, side="right") - 1
    on_point = (unique_fpr[k] == fpr_grid) | (k == len(unique_fpr) - 1)
    following = np.minimum(k + 1, len(unique_fpr) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (fpr_grid - unique_fpr[k]) / (unique_fpr[following] - unique_fpr[k])
    between = leaving[k] + (entering[following] - leaving[k]) * share
    return np.where(on_point, leaving[k], between)


def mean_roc(pred: pd.DataFrame, positive_class: str, size: int, grid: int = 101) -> pd.DataFrame:
    """Vertically averaged test ROC curve of one training size over folds (paper Fig. 3b).

    Each fold's piecewise-linear ROC curve (upper point at vertical steps) is read at `grid`
    equally spaced false-positive rates; returns fpr, tpr_mean, tpr_sd (ddof=1),
    tpr_lower/tpr_upper (mean -+ sd clipped to [0, 1]), plus n_folds, auc_mean and auc_sd
    of the folds used. Folds whose test set has one class are left out (logged).
    """
    columns = probability_columns(pred)
    score_column = f"p_{positive_class}"
    if score_column not in columns:
        raise FewcellsError(f"predictions have no column {score_column!r}")
    positive_target = columns.index(score_column)
    fpr_grid = np.linspace(0.0, 1.0, grid)
    test = test_rows(pred)
    test = test[test["size"] == size]
    tprs, aucs = [], []
    for fold, group in test.groupby("fold", sort=True):
        y_true = (group["target"].to_numpy() == positive_target).astype(int)
        score = group[score_column].to_numpy(dtype=float)
        if y_true.min() == y_true.max():
            log.warning(
                "size %s fold %s: one class in the test set; left out of the mean ROC", size, fold
            )
            continue
        fpr, tpr, _ = roc_curve(y_true, score)
        tprs.append(_tpr_on_grid(fpr, tpr, fpr_grid))
        aucs.append(roc_auc_score(y_true, score))
    if not tprs:
        raise FewcellsError(f"no fold of training size {size} has both classes in its test set")
    tprs = np.vstack(tprs)
    tpr_mean = tprs.mean(axis=0)
    tpr_sd = tprs.std(axis=0, ddof=1) if len(tprs) > 1 else np.full(grid, np.nan)
    return pd.DataFrame(
        {
            "size": int(size),
            "fpr": fpr_grid,
            "tpr_mean": tpr_mean,
            "tpr_sd": tpr_sd,
            "tpr_lower": np.clip(tpr_mean - tpr_sd, 0.0, 1.0),
            "tpr_upper": np.clip(tpr_mean + tpr_sd, 0.0, 1.0),
            "n_folds": len(tprs),
            "auc_mean": float(np.mean(aucs)),
            "auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else math.nan,
        }
    )
