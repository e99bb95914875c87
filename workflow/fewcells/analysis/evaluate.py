"""The evaluation of an experiment's training-size sweep: reads the trainings' outputs and
writes the tables, summary.md and figures (fewcells evaluate)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from fewcells.analysis import plots
from fewcells.analysis.learning_curve import fit_learning_curve, fit_parameters
from fewcells.analysis.metrics import (
    classwise_metrics,
    classwise_summary,
    confusion_matrix_square,
    confusion_matrix_table,
    fold_scores,
    mean_roc,
    network_outputs,
    task_metrics,
)
from fewcells.analysis.readers import read_histories, read_predictions, read_train_infos
from fewcells.analysis.report import classwise_markdown, provenance_lines, summary_markdown
from fewcells.analysis.summary import summarize
from fewcells.atomic import write_csv, write_json, write_png, write_text
from fewcells.contracts import MAIN_METRIC, RUN_KEYS, read_classes
from fewcells.errors import FewcellsError

PLOT_OPTION_DEFAULTS = {"dpi": 150, "roc_sizes": None, "loss_sizes": None}
BOXPLOT_FILES = {"binary": "auc_boxplot.png", "multiclass": "f1_boxplot.png"}


def checked_plot_options(plot_options: dict | None, sizes: Sequence[int]) -> dict:
    """The experiment's `plots` section with its defaults; the ROC and loss sizes default to
    up to four sizes spread over the sizes run."""
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
    check_same_trainings(pred, history)
    sizes = sorted(pred["size"].unique().tolist())
    options = checked_plot_options(plot_options, sizes)
    main = MAIN_METRIC[task]
    metrics = task_metrics(pred, class_names, task)
    metrics = metrics.merge(network_outputs(pred), on=RUN_KEYS, how="left")
    summary = summarize(metrics, task, reference)
    curve_fit = fit_learning_curve(fold_scores(metrics, main), n_boot=n_boot)
    clean_fit = fit_learning_curve(fold_scores(metrics, main, drop_collapsed=True), n_boot=n_boot)
    tables = {
        "metrics.csv": metrics,
        "summary.csv": summary,
        "learning_curve.csv": curve_fit["curve"],
    }
    figures = sweep_figures(history, metrics, summary, curve_fit, task, options, experiment)
    first_networks = pred[pred["replicate"] == 0]
    if task == "binary":
        roc_sizes = sorted(metrics.loc[metrics["roc_auc"].notna(), "size"].unique())
        task_tables, task_figures = binary_outputs(
            first_networks, class_names[1], roc_sizes, options["roc_sizes"], experiment
        )
    else:
        task_tables, task_figures = multiclass_outputs(first_networks, class_names, experiment)
    tables |= task_tables
    figures |= task_figures
    extra_lines = []
    if "classwise_summary.csv" in tables:
        extra_lines = classwise_markdown(tables["classwise_summary.csv"], sizes[-1])

    markdown = summary_markdown(
        summary,
        curve_fit,
        experiment,
        reference,
        extra_lines,
        curve_fit_without_collapsed=clean_fit,
        provenance_lines=provenance_lines(read_train_infos(info_files), provenance()),
    )
    fits = fit_parameters(curve_fit) | {"without_collapsed": fit_parameters(clean_fit)}
    write_evaluation(Path(out_dir), tables, fits, markdown, figures, options["dpi"])


def sweep_figures(
    history: pd.DataFrame,
    metrics: pd.DataFrame,
    summary: pd.DataFrame,
    curve_fit: dict,
    task: str,
    options: dict,
    experiment: str,
) -> dict[str, Figure]:
    """The figures of every task: loss curves (the first network of each fold), learning
    curve, the main metric's box plot, and with replicates the spread between folds and
    seeds."""
    main = MAIN_METRIC[task]
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
    figures[BOXPLOT_FILES[task]] = plots.score_boxplot(
        metrics, main, paper=paper_by_size(summary), experiment=experiment
    )
    return figures


def write_evaluation(
    out_dir: Path,
    tables: dict[str, pd.DataFrame],
    fits: dict,
    markdown: str,
    figures: dict[str, Figure],
    dpi: int,
) -> None:
    """The evaluation's tables, learning_curve_fit.json, summary.md and figures, each
    atomically."""
    for name, table in tables.items():
        write_csv(table, out_dir / name)
    write_json(fits, out_dir / "learning_curve_fit.json")
    write_text(markdown, out_dir / "summary.md")
    for name, figure in figures.items():
        write_png(figure, out_dir / name, dpi)


def check_same_trainings(pred: pd.DataFrame, history: pd.DataFrame) -> None:
    """Predictions and histories must come from the same (size, fold, replicate) trainings."""
    predicted_jobs = set(map(tuple, pred[RUN_KEYS].drop_duplicates().to_numpy().tolist()))
    history_jobs = set(map(tuple, history[RUN_KEYS].drop_duplicates().to_numpy().tolist()))
    if predicted_jobs != history_jobs:
        raise FewcellsError(
            "predictions and histories cover different (size, fold, replicate) trainings: only "
            f"predictions {sorted(predicted_jobs - history_jobs)}, "
            f"only histories {sorted(history_jobs - predicted_jobs)}"
        )


def paper_by_size(summary: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """The paper's (mean, sd) at each size of the summary where it reports one."""
    with_paper = summary[summary["paper_mean"].notna()]
    return dict(
        zip(
            with_paper["size"],
            zip(with_paper["paper_mean"], with_paper["paper_sd"], strict=True),
            strict=True,
        )
    )


def binary_outputs(
    first_networks: pd.DataFrame,
    positive_class: str,
    roc_sizes: Sequence[int],
    shown_sizes: Sequence[int],
    experiment: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, Figure]]:
    """The mean ROC curve (the first network of each fold) at each of `roc_sizes` (those with
    a finite AUC), drawn at `shown_sizes`."""
    roc = pd.concat(
        [mean_roc(first_networks, positive_class, size) for size in roc_sizes],
        ignore_index=True,
    )
    figure = plots.roc_curves(roc[roc["size"].isin(shown_sizes)], experiment=experiment)
    return {"mean_roc.csv": roc}, {"roc_mean.png": figure}


def multiclass_outputs(
    first_networks: pd.DataFrame, class_names: Sequence[str], experiment: str
) -> tuple[dict[str, pd.DataFrame], dict[str, Figure]]:
    """The confusion matrices and class-wise tables of a multiclass task (the first network
    of each fold), and the figure of the largest size's confusion matrix."""
    sizes = sorted(first_networks["size"].unique().tolist())
    by_size = pd.concat(
        [confusion_matrix_table(first_networks, class_names, size) for size in sizes],
        ignore_index=True,
    )
    largest = by_size[by_size["size"] == sizes[-1]]
    tables = {
        "confusion_matrix.csv": largest,
        "confusion_matrix_by_size.csv": by_size,
        "classwise.csv": classwise_metrics(first_networks, class_names),
        "classwise_summary.csv": classwise_summary(first_networks, class_names),
    }
    figure = plots.confusion_matrix(
        confusion_matrix_square(largest, "percent", class_names),
        confusion_matrix_square(largest, "count", class_names),
        class_names,
        experiment=f"{experiment}, n = {sizes[-1]}",
    )
    return tables, {"confusion_matrix.png": figure}
