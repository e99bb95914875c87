"""Evaluation of a training-size sweep: per-job metrics, summaries, learning-curve fit.

Everything here is a pure function on tidy DataFrames except `evaluate_experiment`, which
reads the training jobs' outputs (see the data contracts) and writes tables and figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from fewcells.analysis import plots
from fewcells.atomic import write_csv, write_json, write_png, write_text
from fewcells.contracts import (
    BINARY_METRICS,
    HISTORY_COLUMNS,
    MAIN_METRIC,
    MULTICLASS_METRICS,
    is_collapsed,
    output_spread,
)
from fewcells.errors import FewcellsError

log = logging.getLogger(__name__)

# Mean and s.d. over 10 folds reported by Schouten et al. 2021, keyed by reference name.
# A dict maps training-set size -> (mean, sd); a bare tuple is the result of the full
# training set, compared with the largest size of our sweep.
PAPER_REFERENCE: dict[str, dict[int, tuple[float, float]] | tuple[float, float]] = {
    "all_binary": {200: (0.97, 0.02)},
    "aml_binary": {50: (0.91, 0.04), 200: (0.93, 0.02)},
    "all_multiclass_f1": (0.81, 0.09),
}
# The task each reference belongs to (its number is that task's main metric).
PAPER_REFERENCE_TASK = {
    "all_binary": "binary",
    "aml_binary": "binary",
    "all_multiclass_f1": "multiclass",
}
# Training-set size at which the paper saw the score saturate ("at about n = 30").
PAPER_SATURATION_N = {"all_binary": 30}

LEARNING_CURVE_MODEL = "score(n) = a - (a - b) * exp(-n / tau)"

# One trained network: training size, fold and replicate (another seed on the same fold).
RUN_KEYS = ["size", "fold", "replicate"]
PREDICTION_COLUMNS = ["fold", "size", "replicate", "image_id", "target", "split"]
# train_info.json fields that say what produced a training.
PROVENANCE_FIELDS = (
    "fewcells_version",
    "git_commit",
    "torch_version",
    "device",
    "cpu_kernel",
    "cpu",
)
PLOT_OPTION_DEFAULTS = {"dpi": 150, "roc_sizes": None, "loss_sizes": None}


# ----------------------------------------------------------------------------- metrics


def probability_columns(pred: pd.DataFrame) -> list[str]:
    """The `p_<class>` columns of a predictions table, in file order (= target order)."""
    return [c for c in pred.columns if c.startswith("p_")]


def with_replicate(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `replicate` column: 0 (the first network of a fold) where it has none."""
    return frame if "replicate" in frame.columns else frame.assign(replicate=0)


def _test_rows(pred: pd.DataFrame) -> pd.DataFrame:
    pred = with_replicate(pred)
    return pred[pred["split"] == "test"]


def _youden(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """Threshold maximising sensitivity + specificity - 1, and that sens/spec.

    Predicted positive means score >= threshold. Among tied optima the highest threshold
    wins; the threshold is always one of the observed scores.
    """
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
    for (size, fold, replicate), group in _test_rows(pred).groupby(RUN_KEYS, sort=True):
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
            threshold, sensitivity, specificity = _youden(y_true, score)
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


def _predicted_targets(group: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
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
    for (size, fold, replicate), group in _test_rows(pred).groupby(RUN_KEYS, sort=True):
        y_true = group["target"].to_numpy(dtype=int)
        y_pred = _predicted_targets(group, class_names)
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


def network_outputs(pred: pd.DataFrame) -> pd.DataFrame:
    """Per network (size, fold, replicate): the spread of its test and validation outputs
    and whether they are constant (`collapsed`, see fewcells.collapse)."""
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


CLASSWISE_COLUMNS = ["size", "fold", "class_name", "support", "n_predicted"]
CLASSWISE_COLUMNS += ["precision", "sensitivity"]


def _classwise(test: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class of a set of test rows: support (images of the class), n_predicted,
    precision and sensitivity (recall); NaN where undefined (nothing predicted as the
    class, or no image of it)."""
    y_true = test["target"].to_numpy(dtype=int)
    y_pred = _predicted_targets(test, class_names)
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
        _classwise(group, class_names).assign(size=int(size), fold=int(fold))
        for (size, fold), group in _test_rows(pred).groupby(["size", "fold"], sort=True)
    ]
    return pd.concat(frames, ignore_index=True)[CLASSWISE_COLUMNS]


def classwise_summary(pred: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per size and class: precision and sensitivity of the test predictions pooled over
    folds (support and n_predicted summed over folds; with a test set shared by the folds
    each image counts once per fold), and their mean, sd and number of folds where defined.
    """
    per_fold = classwise_metrics(pred, class_names)
    rows = []
    for size, test in _test_rows(pred).groupby("size", sort=True):
        pooled = _classwise(test, class_names).assign(size=int(size))
        folds = per_fold[per_fold["size"] == size].groupby("class_name", sort=False)
        for name in ("precision", "sensitivity"):
            stats = folds[name].agg(["mean", "std", "count"]).reindex(list(class_names))
            pooled[f"{name}_mean"] = stats["mean"].to_numpy()
            pooled[f"{name}_sd"] = stats["std"].to_numpy()
            pooled[f"{name}_folds"] = stats["count"].to_numpy(dtype=int)
        rows.append(pooled)
    table = pd.concat(rows, ignore_index=True)
    return table[["size", *[c for c in table.columns if c != "size"]]]


def classwise_markdown(summary: pd.DataFrame, size: int) -> list[str]:
    """Matek-style table (class, precision, sensitivity, images) of one training size."""
    table = summary[summary["size"] == size]

    def cell(row, name: str) -> str:
        pooled = getattr(row, name)
        text = "–" if not np.isfinite(pooled) else f"{pooled:.2f}"
        return f"{text} ({_mean_sd(getattr(row, f'{name}_mean'), getattr(row, f'{name}_sd'))})"

    lines = [
        f"Class-wise precision and sensitivity at n = {size}: pooled over the folds' test "
        "predictions (in brackets mean ± s.d. over the folds where defined); images = test "
        "images of the class summed over folds.",
        "",
        "| class | precision | sensitivity | images |",
        "|---|---|---|---:|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.class_name} | {cell(row, 'precision')} | {cell(row, 'sensitivity')} | "
            f"{row.support} |"
        )
    return lines


def confusion_matrix_table(
    pred: pd.DataFrame, class_names: Sequence[str], size: int
) -> pd.DataFrame:
    """Test confusion matrix of one training size, summed over folds, in tidy form.

    Columns: size, true_class, predicted_class, count, percent (of that true class; NaN for
    a class with no test images). Rows run over every (true, predicted) pair in class order.
    """
    test = _test_rows(pred)
    test = test[test["size"] == size]
    if test.empty:
        raise FewcellsError(f"no test predictions for training size {size}")
    n_classes = len(class_names)
    counts = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(
        counts, (test["target"].to_numpy(dtype=int), _predicted_targets(test, class_names)), 1
    )
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
    test = _test_rows(pred)
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


# ------------------------------------------------------------------------ learning curve


def saturating_curve(n: np.ndarray, plateau: float, start: float, tau: float) -> np.ndarray:
    """score(n) = plateau - (plateau - start) * exp(-n / tau)."""
    return plateau - (plateau - start) * np.exp(-np.asarray(n, dtype=float) / tau)


def _saturating_jacobian(n: np.ndarray, plateau: float, start: float, tau: float) -> np.ndarray:
    """Partial derivatives of `saturating_curve` with respect to (plateau, start, tau)."""
    decay = np.exp(-np.asarray(n, dtype=float) / tau)
    return np.column_stack([1.0 - decay, decay, -(plateau - start) * decay * n / tau**2])


def _fit_once(
    sizes: np.ndarray, scores: np.ndarray, starts: list[tuple[float, float, float]], tau_max: float
) -> np.ndarray:
    """Least-squares fit from each start; the parameters with the smallest residual."""
    lower, upper = np.array([0.0, 0.0, 1e-3]), np.array([1.0, 1.0, tau_max])
    best, best_sse = None, math.inf
    for start in starts:
        x0 = np.clip(start, lower + 1e-6, upper - 1e-6)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(
                    saturating_curve,
                    sizes,
                    scores,
                    p0=x0,
                    bounds=(lower, upper),
                    jac=_saturating_jacobian,
                    max_nfev=5000,
                )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((saturating_curve(sizes, *params) - scores) ** 2))
        if np.all(np.isfinite(params)) and sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        raise RuntimeError("least squares did not converge from any starting point")
    return best


def _first_size_reaching(params: np.ndarray, size_grid: np.ndarray, fraction: float) -> float:
    """Smallest grid size where the curve reaches fraction * plateau; inf if none does."""
    reached = saturating_curve(size_grid, *params) >= fraction * params[0]
    return float(size_grid[np.argmax(reached)]) if reached.any() else math.inf


def _ci(values: np.ndarray) -> list[float | None]:
    """Empirical 2.5 and 97.5 percentiles; infinite ends (beyond the sizes run) -> None."""
    if len(values) == 0:
        return [None, None]
    bounds = np.quantile(values, [0.025, 0.975], method="inverted_cdf")
    return [float(b) if np.isfinite(b) else None for b in bounds]


def fit_learning_curve(
    df: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, plateau_fraction: float = 0.95
) -> dict:
    """Fit score(n) = a - (a - b) * exp(-n / tau) to per-fold scores (columns size, fold, score).

    Why this model rather than the inverse power law a - b * n^-c: it is finite at n = 0
    (b is the score of an untrained network, near chance), has one interpretable scale
    (tau images per e-fold of the remaining gap), and describes the fast rise then flat
    plateau the paper reports; the power law diverges below the smallest size and creeps
    towards its plateau so slowly that "n at 95% of plateau" is dominated by extrapolation.
    Scores must lie in [0, 1] (AUC, F1, accuracy); non-finite scores are dropped.

    Returns a dict (JSON-friendly but for `curve`): ok, reason (why the fit failed; None when
    ok), note (e.g. why there are no CIs), model, plateau, start, tau,
    at_bound (parameters fitted at a bound), plateau_fraction, n_at_fraction (smallest
    integer size within [min size, max size] where the curve reaches plateau_fraction *
    plateau, None if beyond), plateau_ci and n_at_fraction_ci (95% percentile bootstrap over
    folds resampled with replacement; None for an end beyond the sizes run), n_boot_ok,
    n_points, n_folds, size_range, and `curve` (DataFrame size, fitted_score, fitted_lower,
    fitted_upper: the curve and its pointwise bootstrap band on a grid for plotting).
    """
    result = {
        "ok": False,
        "reason": None,
        "note": None,
        "model": LEARNING_CURVE_MODEL,
        "plateau": math.nan,
        "start": math.nan,
        "tau": math.nan,
        "at_bound": [],
        "plateau_fraction": plateau_fraction,
        "n_at_fraction": None,
        "plateau_ci": [None, None],
        "n_at_fraction_ci": [None, None],
        "n_boot": n_boot,
        "n_boot_ok": 0,
        "n_points": 0,
        "n_folds": 0,
        "size_range": [None, None],
        "curve": pd.DataFrame(columns=["size", "fitted_score", "fitted_lower", "fitted_upper"]),
    }
    missing = {"size", "fold", "score"} - set(df.columns)
    if missing:
        result["reason"] = f"input lacks columns {sorted(missing)}"
        return result
    data = df[["size", "fold", "score"]].apply(pd.to_numeric, errors="coerce")
    data = data[np.isfinite(data.to_numpy(dtype=float)).all(axis=1)]
    result["n_points"], result["n_folds"] = len(data), int(data["fold"].nunique())
    if data["size"].nunique() < 3:
        result["reason"] = "needs finite scores at 3 or more distinct sizes"
        return result
    if ((data["score"] < 0) | (data["score"] > 1)).any() or (data["size"] <= 0).any():
        result["reason"] = "scores must lie in [0, 1] and sizes be positive"
        return result

    sizes, scores = data["size"].to_numpy(float), data["score"].to_numpy(float)
    size_min, size_max = sizes.min(), sizes.max()
    result["size_range"] = [int(size_min), int(size_max)]
    tau_max = 10.0 * size_max
    means = data.groupby("size")["score"].mean()
    starts = [
        (means.iloc[-1], means.iloc[0], tau) for tau in np.geomspace(size_min / 2, size_max, 5)
    ]
    try:
        params = _fit_once(sizes, scores, starts, tau_max)
    except RuntimeError as error:
        result["reason"] = str(error)
        return result

    size_grid = np.arange(math.ceil(size_min), math.floor(size_max) + 1, dtype=float)
    plot_grid = np.linspace(size_min, size_max, 200)
    n_at_fraction = _first_size_reaching(params, size_grid, plateau_fraction)
    bounds = {"plateau": (0.0, 1.0), "start": (0.0, 1.0), "tau": (1e-3, tau_max)}
    result.update(
        ok=True,
        plateau=float(params[0]),
        start=float(params[1]),
        tau=float(params[2]),
        at_bound=[
            name
            for name, value in zip(bounds, params, strict=True)
            if np.isclose(value, bounds[name][0], atol=1e-6)
            or np.isclose(value, bounds[name][1], atol=1e-6)
        ],
        n_at_fraction=int(n_at_fraction) if np.isfinite(n_at_fraction) else None,
    )

    folds = data["fold"].unique()
    by_fold = {
        fold: (group["size"].to_numpy(float), group["score"].to_numpy(float))
        for fold, group in data.groupby("fold")
    }
    rng = np.random.default_rng(seed)
    boot_params = []
    if len(folds) >= 2:
        for _ in range(n_boot):
            drawn = [by_fold[f] for f in rng.choice(folds, size=len(folds))]
            boot_sizes = np.concatenate([d[0] for d in drawn])
            boot_scores = np.concatenate([d[1] for d in drawn])
            if len(np.unique(boot_sizes)) < 3:
                continue
            try:
                boot_params.append(_fit_once(boot_sizes, boot_scores, [tuple(params)], tau_max))
            except RuntimeError:
                continue
    else:
        result["note"] = "bootstrap needs 2 or more folds; no confidence intervals"
    result["n_boot_ok"] = len(boot_params)
    fitted = saturating_curve(plot_grid, *params)
    lower = upper = np.full_like(plot_grid, np.nan)
    if boot_params:
        boot = np.vstack(boot_params)
        boot_n = np.array([_first_size_reaching(p, size_grid, plateau_fraction) for p in boot])
        result["plateau_ci"] = _ci(boot[:, 0])
        result["n_at_fraction_ci"] = [None if v is None else int(v) for v in _ci(boot_n)]
        boot_curves = np.vstack([saturating_curve(plot_grid, *p) for p in boot])
        lower, upper = np.quantile(boot_curves, [0.025, 0.975], axis=0)
    result["curve"] = pd.DataFrame(
        {"size": plot_grid, "fitted_score": fitted, "fitted_lower": lower, "fitted_upper": upper}
    )
    return result


# ---------------------------------------------------------------------------- summaries


def paper_values(reference: str, task: str, sizes: Sequence[int]) -> dict[int, tuple[float, float]]:
    """The paper's (mean, sd) by training size for `reference`; a full-training-set number
    is placed at the largest size run. Unknown reference or wrong task -> FewcellsError."""
    if reference not in PAPER_REFERENCE:
        raise FewcellsError(
            f"unknown paper reference {reference!r}; known: {sorted(PAPER_REFERENCE)}"
        )
    if PAPER_REFERENCE_TASK[reference] != task:
        raise FewcellsError(
            f"paper reference {reference!r} is a {PAPER_REFERENCE_TASK[reference]} result, "
            f"but the experiment's task is {task!r}"
        )
    values = PAPER_REFERENCE[reference]
    if isinstance(values, tuple):
        return {int(max(sizes)): values} if len(sizes) else {}
    not_run = sorted(set(values) - set(sizes))
    if not_run:
        log.warning("paper reference %s: sizes %s were not run; not compared", reference, not_run)
    return dict(values)


def summarize(metrics: pd.DataFrame, task: str, reference: str | None) -> pd.DataFrame:
    """Per size, over folds (the replicates of a fold averaged first): n_folds (folds with a
    finite main metric), n_networks, n_collapsed, mean and sd over folds of every metric,
    main one first; for the main metric also seed_sd (the s.d. between the replicates of
    one fold, averaged over the folds that have two or more; NaN without replicates) and
    mean / sd without the collapsed networks; paper_mean / paper_sd where the paper reports
    a number for that size (else NaN)."""
    if task not in MAIN_METRIC:
        raise FewcellsError(f"task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
    names = BINARY_METRICS if task == "binary" else MULTICLASS_METRICS
    main = MAIN_METRIC[task]
    metrics = with_replicate(metrics)
    if "collapsed" not in metrics.columns:
        metrics = metrics.assign(collapsed=False)
    sizes = sorted(metrics["size"].unique())
    per_fold = metrics.groupby(["size", "fold"], sort=True)[names].mean()
    over_folds = per_fold.groupby(level="size")
    networks = metrics.groupby("size")
    summary = pd.DataFrame({"size": sizes})
    summary["n_folds"] = over_folds[main].count().reindex(sizes).to_numpy()
    summary["n_networks"] = networks[main].count().reindex(sizes).to_numpy()
    summary["n_collapsed"] = networks["collapsed"].sum().reindex(sizes).astype(int).to_numpy()
    for name in names:
        summary[f"{name}_mean"] = over_folds[name].mean().reindex(sizes).to_numpy()
        summary[f"{name}_sd"] = over_folds[name].std(ddof=1).reindex(sizes).to_numpy()
    between_seeds = metrics.groupby(["size", "fold"])[main].std(ddof=1).groupby(level="size")
    summary[f"{main}_seed_sd"] = between_seeds.mean().reindex(sizes).to_numpy()
    clean = fold_scores(metrics, main, drop_collapsed=True).groupby("size")["score"]
    summary[f"{main}_without_collapsed_mean"] = clean.mean().reindex(sizes).to_numpy()
    summary[f"{main}_without_collapsed_sd"] = clean.std(ddof=1).reindex(sizes).to_numpy()
    paper = paper_values(reference, task, summary["size"].tolist()) if reference else {}
    summary["paper_mean"] = [paper.get(s, (math.nan, math.nan))[0] for s in summary["size"]]
    summary["paper_sd"] = [paper.get(s, (math.nan, math.nan))[1] for s in summary["size"]]
    return summary


def _mean_sd(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def _n_ci_text(curve_fit: dict) -> str:
    low, high = curve_fit["n_at_fraction_ci"]
    if low is None and high is None:
        return ""
    largest = curve_fit["size_range"][1]
    if low is None:
        return f" (95% CI beyond the largest size, {largest})"
    return (
        f" (95% CI {low:.0f}–{high:.0f})" if high is not None else f" (95% CI {low:.0f}–>{largest})"
    )


def _learning_curve_lines(curve_fit: dict, reference: str | None) -> list[str]:
    if not curve_fit["ok"]:
        return [f"Learning-curve fit failed: {curve_fit['reason']}."]
    percent = round(100 * curve_fit["plateau_fraction"])
    low, high = curve_fit["plateau_ci"]
    plateau_ci = f" (95% CI {low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    at_bound = curve_fit["at_bound"]
    lines = [
        f"Learning curve {curve_fit['model']}: plateau a = {curve_fit['plateau']:.3f}"
        f"{plateau_ci}, b = {curve_fit['start']:.3f}, tau = {curve_fit['tau']:.1f} images"
        + (f" (at a bound: {', '.join(at_bound)})" if at_bound else "")
        + ".",
    ]
    n = curve_fit["n_at_fraction"]
    if n is None:
        lines.append(
            f"{percent}% of plateau not reached within the sizes run{_n_ci_text(curve_fit)}."
        )
    else:
        lines.append(f"{percent}% of plateau reached at n = {n}{_n_ci_text(curve_fit)}.")
        if n == curve_fit["size_range"][0]:
            lines.append("That is the smallest size run: the true n may be smaller.")
    if reference in PAPER_SATURATION_N:
        lines.append(f"Paper: the score saturates at about n = {PAPER_SATURATION_N[reference]}.")
    if curve_fit["note"]:
        lines.append(f"Note: {curve_fit['note']}.")
    lines.append(
        f"Bootstrap: {curve_fit['n_boot_ok']} of {curve_fit['n_boot']} resamples of the "
        f"{curve_fit['n_folds']} folds fitted."
    )
    return lines


def summary_markdown(
    summary: pd.DataFrame,
    curve_fit: dict,
    experiment_name: str,
    reference: str | None = None,
    extra_lines: Sequence[str] = (),
    *,
    curve_fit_without_collapsed: dict | None = None,
    provenance_lines: Sequence[str] = (),
) -> str:
    """Markdown report: per-size table (mean ± sd over folds, paper next to the main metric,
    networks and collapsed networks counted, the spread between seeds where there are
    replicates), the learning-curve lines ("95% of plateau reached at n = X (95% CI a–b)")
    with and without the collapsed networks, `extra_lines` (e.g. the class-wise table of a
    multiclass task) and `provenance_lines` (what produced the numbers)."""
    metric_names = [
        c[: -len("_mean")]
        for c in summary.columns
        if c.endswith("_mean") and c != "paper_mean" and "_without_collapsed" not in c
    ]
    main = metric_names[0]
    main_label = plots.METRIC_LABELS.get(main, main)
    replicated = bool((summary["n_networks"] > summary["n_folds"]).any())
    collapsed = bool(summary["n_collapsed"].sum())
    headers = ["n (images)", "folds"]
    headers += ["networks"] if replicated else []
    headers += ["collapsed", main_label]
    headers += ["s.d. between seeds"] if replicated else []
    headers += [f"{main_label} without collapsed"] if collapsed else []
    headers += ["paper"] + [plots.METRIC_LABELS.get(m, m) for m in metric_names[1:]]
    lines = [
        f"# {experiment_name}",
        "",
        "Test-fold metrics by training-set size n: mean ± s.d. over folds"
        + (" (each fold's replicates averaged first)" if replicated else "")
        + ". Collapsed: networks whose output is the same for every image (a failed "
        "training, ROC-AUC 0.5 by construction); they are counted in the means.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in summary.itertuples(index=False):
        row = row._asdict()
        cells = [str(row["size"]), str(row["n_folds"])]
        cells += [str(row["n_networks"])] if replicated else []
        cells += [str(row["n_collapsed"]), _mean_sd(row[f"{main}_mean"], row[f"{main}_sd"])]
        if replicated:
            seed_sd = row[f"{main}_seed_sd"]
            cells.append(f"{seed_sd:.3f}" if np.isfinite(seed_sd) else "–")
        if collapsed:
            cells.append(
                _mean_sd(row[f"{main}_without_collapsed_mean"], row[f"{main}_without_collapsed_sd"])
            )
        cells.append(_mean_sd(row["paper_mean"], row["paper_sd"]))
        cells += [_mean_sd(row[f"{m}_mean"], row[f"{m}_sd"]) for m in metric_names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_learning_curve_lines(curve_fit, reference), ""]
    if curve_fit_without_collapsed is not None and collapsed:
        lines += [
            "Without the collapsed networks:",
            "",
            *_learning_curve_lines(curve_fit_without_collapsed, None),
            "",
        ]
    if extra_lines:
        lines += [*extra_lines, ""]
    if provenance_lines:
        lines += ["## Produced by", "", *provenance_lines, ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ reading inputs


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FewcellsError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FewcellsError(f"{path}: not a readable CSV ({error})") from error
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise FewcellsError(f"{path}: missing columns {missing}")
    if frame.empty:
        raise FewcellsError(f"{path}: has no rows")
    frame = with_replicate(frame)
    for column in RUN_KEYS:
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise FewcellsError(f"{path}: column {column!r} must hold integers")
    if frame[RUN_KEYS].drop_duplicates().shape[0] != 1:
        raise FewcellsError(
            f"{path}: must hold exactly one (size, fold, replicate); a training writes one"
        )
    return frame


def read_classes(path: str | os.PathLike) -> tuple[list[str], str]:
    """Class names (target order) and task from CLASSES.json."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        classes, task = content["classes"], content["task"]
    except FileNotFoundError as error:
        raise FewcellsError(f"{path}: file not found") from error
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise FewcellsError(f"{path}: needs JSON with 'classes' and 'task' ({error})") from error
    if task not in MAIN_METRIC:
        raise FewcellsError(f"{path}: task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
    if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
        raise FewcellsError(f"{path}: 'classes' must list 2 or more distinct names")
    if task == "binary" and len(classes) != 2:
        raise FewcellsError(f"{path}: a binary task needs exactly 2 classes, got {classes}")
    return [str(c) for c in classes], task


def read_predictions(
    paths: Sequence[str | os.PathLike], class_names: Sequence[str]
) -> pd.DataFrame:
    """Concatenate predictions.csv files, checking each against the contract."""
    probability = [f"p_{name}" for name in class_names]
    frames, seen = [], {}
    for path in map(Path, paths):
        frame = _read_csv(path, [c for c in PREDICTION_COLUMNS if c != "replicate"] + probability)
        extra = [c for c in probability_columns(frame) if c not in probability]
        if extra:
            raise FewcellsError(
                f"{path}: probability columns {extra} are not classes {list(class_names)}"
            )
        key = tuple(int(frame[column].iloc[0]) for column in RUN_KEYS)
        if key in seen:
            raise FewcellsError(
                f"{path}: size {key[0]} fold {key[1]} replicate {key[2]} already read from "
                f"{seen[key]}"
            )
        seen[key] = path
        if not (frame["split"] == "test").any():
            raise FewcellsError(f"{path}: no rows with split == 'test'")
        if not all(pd.api.types.is_numeric_dtype(frame[c]) for c in probability):
            raise FewcellsError(f"{path}: probability columns must hold numbers")
        if not frame["target"].isin(range(len(class_names))).all():
            raise FewcellsError(f"{path}: 'target' must be class indices 0..{len(class_names) - 1}")
        values = frame[probability].to_numpy(dtype=float)
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
            raise FewcellsError(f"{path}: probabilities must be numbers in [0, 1]")
        if not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
            raise FewcellsError(f"{path}: probabilities of a row must sum to 1")
        if frame.duplicated(["split", "image_id"]).any():
            raise FewcellsError(f"{path}: an image_id appears twice in one split")
        frames.append(frame[PREDICTION_COLUMNS + probability])
    if not frames:
        raise FewcellsError("no predictions.csv files given")
    return pd.concat(frames, ignore_index=True)


def read_histories(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate history.csv files, checking each against the contract (the optional
    `phase` column of fine-tuned trainings is kept)."""
    frames = []
    for path in map(Path, paths):
        frame = _read_csv(path, [c for c in HISTORY_COLUMNS if c != "replicate"])
        numeric = ["epoch", "train_loss", "val_loss"]
        if not all(pd.api.types.is_numeric_dtype(frame[c]) for c in numeric):
            raise FewcellsError(f"{path}: columns {numeric} must hold numbers")
        if frame["epoch"].isna().any():
            raise FewcellsError(f"{path}: 'epoch' has empty cells")
        frames.append(frame[[*HISTORY_COLUMNS, *(["phase"] if "phase" in frame else [])]])
    if not frames:
        raise FewcellsError("no history.csv files given")
    return pd.concat(frames, ignore_index=True)


def read_train_infos(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The train_info.json of each training (a missing or unreadable file is an error)."""
    infos = []
    for path in map(Path, paths):
        try:
            infos.append(json.loads(path.read_text()))
        except FileNotFoundError as error:
            raise FewcellsError(f"{path}: file not found") from error
        except (OSError, json.JSONDecodeError) as error:
            raise FewcellsError(f"{path}: not readable JSON ({error})") from error
    return infos


def provenance_lines(infos: Sequence[dict], evaluation: dict) -> list[str]:
    """Markdown lines saying what produced the trainings (each distinct value of the
    PROVENANCE_FIELDS with its number of networks; "unknown" where a train_info.json
    predates the field) and the evaluation."""
    lines = []
    for field in PROVENANCE_FIELDS:
        counts = pd.Series([str(info.get(field, "unknown")) for info in infos]).value_counts()
        values = "; ".join(
            f"{value} ({count} networks)" if len(counts) > 1 else value
            for value, count in counts.items()
        )
        lines.append(f"- trainings' {field.replace('_', ' ')}: {values or 'unknown'}")
    lines.append(
        "- evaluation: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in evaluation.items())
    )
    return lines


# --------------------------------------------------------------------------- the driver


def _plot_options(plot_options: dict | None, sizes: Sequence[int]) -> dict:
    options = dict(PLOT_OPTION_DEFAULTS)
    unknown = set(plot_options or {}) - set(options)
    if unknown:
        raise FewcellsError(
            f"plot_options: unknown keys {sorted(unknown)}; known: {sorted(options)}"
        )
    options.update(plot_options or {})
    if not isinstance(options["dpi"], int) or options["dpi"] <= 0:
        raise FewcellsError(f"plot_options.dpi must be a positive integer, got {options['dpi']!r}")
    for key in ("roc_sizes", "loss_sizes"):
        if options[key] is None:
            options[key] = plots.spread_sizes(sizes)
        elif not set(options[key]) <= set(sizes):
            raise FewcellsError(
                f"plot_options.{key}: sizes {sorted(set(options[key]) - set(sizes))} were not run"
            )
    return options


def evaluate_experiment(
    prediction_files: Sequence[str | os.PathLike],
    history_files: Sequence[str | os.PathLike],
    classes_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    experiment: str,
    reference: str | None,
    plot_options: dict | None,
    info_files: Sequence[str | os.PathLike] = (),
    n_boot: int = 1000,
) -> None:
    """Evaluate a sweep's training outputs; write tables and figures (each atomically) to
    out_dir.

    Tables: metrics.csv (per network: size, fold, replicate, the metrics, output_spread,
    collapsed), summary.csv, summary.md, learning_curve.csv, learning_curve_fit.json (fitted
    to the per-fold means, with `without_collapsed`: the same fit without the collapsed
    networks), mean_roc.csv (binary; sizes with a finite AUC; replicate 0 of each fold); for
    multiclass tasks (replicate 0 of each fold) confusion_matrix.csv (largest size),
    confusion_matrix_by_size.csv, classwise.csv (precision and sensitivity per size, fold
    and class) and classwise_summary.csv (pooled over folds, and mean ± sd over folds; its
    largest size is also in summary.md).
    Figures: loss_curves.png, learning_curve.png, and roc_mean.png + auc_boxplot.png
    (binary) or f1_boxplot.png + confusion_matrix.png (multiclass), and with replicates
    spread_folds_seeds.png.
    plot_options: dpi (150), roc_sizes and loss_sizes (default: 4 sizes spread over the range).
    info_files: the trainings' train_info.json, whose provenance summary.md reports.
    n_boot: bootstrap resamples of the learning-curve fit.
    """
    from fewcells.provenance import provenance

    class_names, task = read_classes(classes_json)
    pred = read_predictions(prediction_files, class_names)
    history = read_histories(history_files)
    predicted_jobs = set(map(tuple, pred[RUN_KEYS].drop_duplicates().to_numpy().tolist()))
    history_jobs = set(map(tuple, history[RUN_KEYS].drop_duplicates().to_numpy().tolist()))
    if predicted_jobs != history_jobs:
        raise FewcellsError(
            "predictions and histories cover different (size, fold, replicate) trainings: only "
            f"predictions {sorted(predicted_jobs - history_jobs)}, "
            f"only histories {sorted(history_jobs - predicted_jobs)}"
        )
    sizes = sorted(pred["size"].unique().tolist())
    options = _plot_options(plot_options, sizes)
    main = MAIN_METRIC[task]
    if task == "binary":
        metrics = binary_metrics(pred, class_names[1])
    else:
        metrics = multiclass_metrics(pred, class_names)
    metrics = metrics.merge(network_outputs(pred), on=RUN_KEYS, how="left")
    summary = summarize(metrics, task, reference)
    curve_fit = fit_learning_curve(fold_scores(metrics, main), n_boot=n_boot)
    clean_fit = fit_learning_curve(fold_scores(metrics, main, drop_collapsed=True), n_boot=n_boot)
    with_paper = summary[summary["paper_mean"].notna()]
    paper = dict(
        zip(
            with_paper["size"],
            zip(with_paper["paper_mean"], with_paper["paper_sd"], strict=True),
            strict=True,
        )
    )
    first_networks = pred[pred["replicate"] == 0]

    extra_lines: list[str] = []
    tables = {
        "metrics.csv": metrics,
        "summary.csv": summary,
        "learning_curve.csv": curve_fit["curve"],
    }
    figures = {
        "loss_curves.png": plots.loss_curves(
            history[history["replicate"] == 0], options["loss_sizes"], experiment=experiment
        ),
        "learning_curve.png": plots.learning_curve(
            metrics, curve_fit, score=main, experiment=experiment
        ),
    }
    if (metrics["replicate"] > 0).any():
        figures["spread_folds_seeds.png"] = plots.spread_folds_seeds(
            metrics, main, experiment=experiment
        )
    if task == "binary":
        roc_sizes = sorted(metrics.loc[metrics["roc_auc"].notna(), "size"].unique())
        roc = pd.concat(
            [mean_roc(first_networks, class_names[1], size) for size in roc_sizes],
            ignore_index=True,
        )
        tables["mean_roc.csv"] = roc
        figures["roc_mean.png"] = plots.roc_curves(
            roc[roc["size"].isin(options["roc_sizes"])], experiment=experiment
        )
        figures["auc_boxplot.png"] = plots.score_boxplot(
            metrics, "roc_auc", paper=paper, experiment=experiment
        )
    else:
        by_size = pd.concat(
            [confusion_matrix_table(first_networks, class_names, size) for size in sizes],
            ignore_index=True,
        )
        largest = by_size[by_size["size"] == sizes[-1]]
        tables["confusion_matrix.csv"] = largest
        tables["confusion_matrix_by_size.csv"] = by_size
        tables["classwise.csv"] = classwise_metrics(first_networks, class_names)
        tables["classwise_summary.csv"] = classwise_summary(first_networks, class_names)
        extra_lines = classwise_markdown(tables["classwise_summary.csv"], sizes[-1])
        figures["f1_boxplot.png"] = plots.score_boxplot(
            metrics, "macro_f1", paper=paper, experiment=experiment
        )
        figures["confusion_matrix.png"] = plots.confusion_matrix(
            confusion_matrix_square(largest, "percent", class_names),
            confusion_matrix_square(largest, "count", class_names),
            class_names,
            experiment=f"{experiment}, n = {sizes[-1]}",
        )

    out_dir = Path(out_dir)
    for name, table in tables.items():
        write_csv(table, out_dir / name)
    write_json(
        _fit_parameters(curve_fit) | {"without_collapsed": _fit_parameters(clean_fit)},
        out_dir / "learning_curve_fit.json",
    )
    write_text(
        summary_markdown(
            summary,
            curve_fit,
            experiment,
            reference,
            extra_lines,
            curve_fit_without_collapsed=clean_fit,
            provenance_lines=provenance_lines(read_train_infos(info_files), provenance()),
        ),
        out_dir / "summary.md",
    )
    for name, figure in figures.items():
        write_png(figure, out_dir / name, options["dpi"])


def _fit_parameters(curve_fit: dict) -> dict:
    """A learning-curve fit as JSON: without the plotted curve, NaN as null."""
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in curve_fit.items()
        if key != "curve"
    }
