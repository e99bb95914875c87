"""Tests of fewcells.analysis.plots: every figure function returns a Figure with labelled axes and
shows what it promises (best epochs, AUC legend, paper marker, fit annotation, cell text)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fewcells.analysis import plots
from fewcells.analysis.learning_curve import fit_learning_curve
from fewcells.analysis.metrics import binary_metrics, mean_roc

CLASSES = ["healthy", "blast"]
SIZES = (10, 20, 40, 80, 160)


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    """Binary test predictions, 4 folds x 5 sizes, 12 images each, better with size."""
    rng = np.random.default_rng(0)
    rows = []
    for size in SIZES:
        for fold in range(4):
            target = np.arange(12) % 2
            p_blast = 1 / (1 + np.exp(-(2 * target - 1) * np.log(size) + rng.normal(0, 1.5, 12)))
            for i in range(12):
                rows.append(
                    {
                        "fold": fold,
                        "size": size,
                        "image_id": f"{fold}-{i}",
                        "target": target[i],
                        "split": "test",
                        "p_healthy": 1 - p_blast[i],
                        "p_blast": p_blast[i],
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def metrics(predictions) -> pd.DataFrame:
    return binary_metrics(predictions, "blast")


def test_spread_sizes_keeps_ends():
    assert plots.spread_sizes([40, 10, 20, 80, 160, 320]) == [10, 40, 80, 320]
    assert plots.spread_sizes([10, 20]) == [10, 20]


def test_loss_curves_marks_best_epoch_per_fold():
    rows = [
        {"fold": f, "size": s, "epoch": e, "train_loss": 1 / (e + 1), "val_loss": (e - f - 2) ** 2}
        for s in SIZES
        for f in range(3)
        for e in range(8)
    ]
    history = pd.DataFrame(rows).assign(val_accuracy=0.5, lr=1e-3)
    figure = plots.loss_curves(history, experiment="ALL binary")
    assert isinstance(figure, Figure)
    axes = figure.axes
    assert len(axes) == 4  # default: 4 of the 5 sizes
    assert axes[0].get_title().startswith("n = 10 images (3 folds)")
    assert all(ax.get_xlabel() == "Epoch" for ax in axes)
    assert "loss" in axes[0].get_ylabel()
    assert "ALL binary" in figure.get_suptitle()
    best_markers = [line for line in axes[0].lines if line.get_marker() == "o"]
    assert sorted(m.get_xdata()[0] for m in best_markers) == [2, 3, 4]  # argmin of val loss
    assert len(plots.loss_curves(history, [20]).axes) == 1
    # fine-tuned: the checkpoint is the best epoch of the last phase, not of the head phase
    tuned = history.assign(phase=np.where(history["epoch"] < 4, "head", "finetune"))
    markers = [line for line in plots.loss_curves(tuned).axes[0].lines if line.get_marker() == "o"]
    assert sorted(m.get_xdata()[0] for m in markers) == [4, 4, 4]


def test_roc_curves_legend_has_auc(predictions):
    roc = pd.concat([mean_roc(predictions, "blast", s) for s in (10, 160)])
    figure = plots.roc_curves(roc, experiment="ALL binary")
    ax = figure.axes[0]
    assert "False-positive rate" in ax.get_xlabel() and "True-positive rate" in ax.get_ylabel()
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0].startswith("n = 10: AUC ") and "(4 folds)" in labels[0]
    assert labels[-1] == "chance"
    assert "ALL binary" in ax.get_title()


def test_score_boxplot_with_and_without_paper(metrics):
    figure = plots.score_boxplot(metrics, "roc_auc", paper={160: (0.97, 0.02)}, experiment="X")
    ax = figure.axes[0]
    assert "Training-set size n" in ax.get_xlabel() and "4 folds per size" in ax.get_xlabel()
    assert ax.get_ylabel() == "ROC-AUC on the test fold"
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in SIZES]
    assert "paper (mean ± s.d.)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plain = plots.score_boxplot(metrics, "roc_auc", paper={999: (0.9, 0.1)}).axes[0]
    assert "paper (mean ± s.d.)" not in [t.get_text() for t in plain.get_legend().get_texts()]


def test_learning_curve_shows_fit_or_failure(metrics):
    scores = metrics[["size", "fold"]].assign(score=metrics["roc_auc"])
    fit = fit_learning_curve(scores, n_boot=30)
    ax = plots.learning_curve(metrics, fit, score="roc_auc", experiment="ALL binary").axes[0]
    assert "Training-set size n" in ax.get_xlabel() and ax.get_ylabel().startswith("ROC-AUC")
    labels = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "plateau a = " in labels and "95% of plateau" in labels
    failed = fit_learning_curve(scores[scores["size"] <= 20], n_boot=5)
    ax = plots.learning_curve(metrics, failed).axes[0]
    assert any("fit failed" in t.get_text() for t in ax.texts)


def test_confusion_matrix_cells_show_percent_and_count():
    names = ["lymphocyte", "blast", "neutrophil"]
    counts = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    with np.errstate(invalid="ignore"):
        percent = 100 * counts / counts.sum(axis=1, keepdims=True)
    figure = plots.confusion_matrix(percent, counts, names, experiment="ALL 3-class")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "Predicted class" and ax.get_ylabel().startswith("True class")
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 9
    assert cells[0] == "80%\n(8)" and cells[8] == "–"
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "lymphocyte (10)"
    assert figure.axes[1].get_ylabel() == "% of the true class"  # colour bar


def test_relevance_shares_has_one_panel_per_composite_with_area_reference():
    from fewcells.explain import plots as plots_explain

    rows = [
        {
            "composite": composite,
            "size": size,
            "region": region,
            "mask": "expert",
            "mean": share,
            "sd": 0.1,
            "n_images": 25,
            "area_mean": area,
        }
        for composite, share in [("epsilon", 0.03), ("epsilon_gamma_box", 0.4)]
        for size in (10, 50)
        for region, area in [("nucleus", 0.13), ("cell", 0.16)]
    ]
    labels = {"epsilon": "ε everywhere", "epsilon_gamma_box": "box at the input"}
    figure = plots_explain.relevance_shares(
        pd.DataFrame(rows), experiment="ALL binary", fold=0, labels=labels
    )
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    for ax, (name, label) in zip(figure.axes, labels.items(), strict=True):
        assert ax.get_title() == f"{name}\n{label}"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "50"]
        dotted = {tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == ":"}
        assert {(0.13, 0.13), (0.16, 0.16)} <= dotted
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "nucleus (expert mask)" in legend and "area share (uniform relevance)" in legend
    assert "n = 25 test images" in figure.texts[0].get_text()
