"""Figures of the explanations: relevance maps (paper Fig. 4b), relevance shares, tSNE
(paper Fig. 5) and class separation. Each function returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

MASK_COLOURS = {"auto": "yellow", "expert": "lime"}
REGION_COLOURS = {"nucleus": "tab:purple", "cell": "tab:blue"}
MASK_STYLES = {"auto": "-", "expert": "--"}


@dataclass(frozen=True)
class Example:
    """One example cell: its image, nucleus masks by source, and per size (saliency (H, W),
    LRP relevance (H, W), predicted class name)."""

    image_id: str
    class_name: str
    image: np.ndarray
    masks: Mapping[str, np.ndarray]
    maps: Mapping[int, tuple[np.ndarray, np.ndarray, str]]


def _robust_max(values: np.ndarray) -> float:
    top = float(np.percentile(np.abs(values), 99.5))
    return top if top > 0 else 1.0


def relevance_maps(
    examples: Sequence[Example],
    sizes: Sequence[int],
    *,
    experiment: str,
    fold: int,
    target: str,
    lrp_label: str,
) -> Figure:
    """Rows = example cells; columns = the cell (nucleus contours) and, per training size,
    gradient saliency (sequential map) and LRP (red positive, blue negative, symmetric).
    `target` is whose logit is explained (true_class or predicted), `lrp_label` the rules."""
    columns = 1 + 2 * len(sizes)
    width = max(7.5, 1.7 * columns + 0.4)
    figure = Figure(figsize=(width, 1.9 * len(examples) + 1.4), layout="constrained")
    axes = figure.subplots(len(examples), columns, squeeze=False)
    for row, example in zip(axes, examples, strict=True):
        row[0].imshow(example.image)
        for source, mask in example.masks.items():
            if mask.any() and not mask.all():
                row[0].contour(mask, levels=[0.5], colors=MASK_COLOURS[source], linewidths=1)
        row[0].set_ylabel(f"{example.class_name}\n{example.image_id}", fontsize=8)
        for k, size in enumerate(sizes):
            grad, relevance, predicted = example.maps[size]
            row[1 + 2 * k].imshow(grad, cmap="magma", vmin=0, vmax=_robust_max(grad))
            top = _robust_max(relevance)
            row[2 + 2 * k].imshow(relevance, cmap="bwr", vmin=-top, vmax=top)
            row[2 + 2 * k].set_xlabel(f"predicted: {predicted}", fontsize=7)
    for k, size in enumerate(sizes):
        axes[0, 1 + 2 * k].set_title(f"n = {size}\nsaliency", fontsize=9)
        axes[0, 2 + 2 * k].set_title(f"n = {size}\nLRP", fontsize=9)
    axes[0, 0].set_title("cell", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    contours = ", ".join(
        f"{colour}: {source}"
        for source, colour in MASK_COLOURS.items()
        if any(source in e.masks for e in examples)
    )
    figure.suptitle(
        f"{experiment}, fold {fold}: saliency and LRP of the "
        f"{target.replace('_', ' ')}'s logit\n"
        f"saliency |d logit / d input| (max over channels); LRP: {lrp_label}, "
        f"red + / blue −\n"
        f"each map scaled to its 99.5th percentile; nucleus contour {contours}",
        fontsize=9,
    )
    return figure


def relevance_shares(
    summary: pd.DataFrame, *, experiment: str, fold: int, labels: Mapping[str, str]
) -> Figure:
    """Share of positive LRP relevance inside the nucleus and the cell vs training size, one
    panel per composite (titled by `labels`, composite name -> description): mean ± 1 s.d.
    over the fold's test images; dotted: the region's mean area (what uniform relevance would
    give). A size whose network puts no positive relevance on any image (a collapsed
    network) is marked as such."""
    composites = list(dict.fromkeys(summary["composite"]))
    figure = Figure(figsize=(0.4 + 4.6 * len(composites), 4.8), layout="constrained")
    axes = figure.subplots(1, len(composites), squeeze=False, sharey=True)[0]
    sizes = sorted(summary["size"].unique())
    offset_unit = 0.01 * (max(sizes) - min(sizes) or 1)
    for ax, composite in zip(axes, composites, strict=True):
        panel = summary[summary["composite"] == composite]
        for size in sorted(panel.loc[panel["n_images"] == 0, "size"].unique()):
            ax.text(size, 0.9, "no positive\nrelevance", ha="center", fontsize=7, color="grey")
        for (region, source), group in panel.groupby(["region", "mask"]):
            group = group[group["n_images"] > 0].sort_values("size")
            colour = REGION_COLOURS[region]
            offset = offset_unit if source == "expert" else -offset_unit
            ax.errorbar(
                group["size"] + offset,
                group["mean"],
                yerr=group["sd"].fillna(0),
                color=colour,
                ls=MASK_STYLES[source],
                marker="o",
                ms=4,
                capsize=3,
                label=f"{region} ({source} mask)",
            )
            ax.plot(group["size"], group["area_mean"], color=colour, ls=":", lw=1)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_ylim(0, 1)
        ax.set_xlabel("Training-set size n (images)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{composite}\n{labels[composite]}", fontsize=8)
    axes[0].plot([], [], color="grey", ls=":", label="area share (uniform relevance)")
    axes[0].set_ylabel("Share of positive LRP relevance")
    axes[0].legend(fontsize=8, loc="best")
    n_images = int(summary["n_images"].max())
    figure.suptitle(
        f"{experiment}, fold {fold}: where the relevance lies\n"
        f"mean ± 1 s.d. over n = {n_images} test images",
        fontsize=11,
    )
    return figure


def tsne_panels(
    coordinates: pd.DataFrame,
    separation: pd.DataFrame,
    class_names: Sequence[str],
    *,
    experiment: str,
    fold: int,
) -> Figure:
    """tSNE of the last hidden layer, one panel per training size, points coloured by class;
    filled: test images, open: unused pool images (paper Fig. 5)."""
    sizes = sorted(coordinates["size"].unique())
    figure = Figure(figsize=(3.8 * len(sizes) + 0.6, 4.4), layout="constrained")
    axes = figure.subplots(1, len(sizes), squeeze=False)[0]
    colours = colormaps["tab10"](np.arange(len(class_names)) % 10)
    for ax, size in zip(axes, sizes, strict=True):
        points = coordinates[coordinates["size"] == size]
        for target in range(len(class_names)):
            for role, face in (("test", colours[target]), ("pool_unused", "none")):
                chosen = points[(points["target"] == target) & (points["role"] == role)]
                ax.scatter(
                    chosen["tsne_1"],
                    chosen["tsne_2"],
                    s=14,
                    facecolors=face,
                    edgecolors=colours[target],
                    linewidths=0.8,
                )
        stats = separation[separation["size"] == size].iloc[0]
        ax.set_title(
            f"n = {size} ({len(points)} points)\nsilhouette {stats['silhouette_2d']:.2f} (2-d), "
            f"{stats['silhouette_hidden']:.2f} (32-d)",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], marker="o", ls="", color=colours[t], label=name)
        for t, name in enumerate(class_names)
    ]
    handles += [
        Line2D([], [], marker="o", ls="", color="grey", label="test image"),
        Line2D([], [], marker="o", ls="", mfc="none", color="grey", label="unused pool image"),
    ]
    figure.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=len(handles))
    figure.suptitle(f"{experiment}, fold {fold}: tSNE of the last hidden layer", fontsize=11)
    return figure


def separation_plot(separation: pd.DataFrame, *, experiment: str, fold: int) -> Figure:
    """Silhouette (hidden layer and tSNE) and leave-one-out kNN accuracy vs training size."""
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.subplots()
    frame = separation.sort_values("size")
    k = int(frame["knn_k"].iloc[0])
    for column, label, colour in [
        ("silhouette_hidden", "silhouette, hidden layer", "tab:blue"),
        ("silhouette_2d", "silhouette, tSNE (2-d)", "tab:cyan"),
        ("knn_accuracy_hidden", f"{k}-NN accuracy (leave-one-out), hidden layer", "tab:red"),
        ("knn_accuracy_2d", f"{k}-NN accuracy (leave-one-out), tSNE", "tab:orange"),
    ]:
        ax.plot(frame["size"], frame[column], "o-", color=colour, label=label)
    ax.set_xticks(frame["size"], [str(s) for s in frame["size"]])
    ax.set_xlabel("Training-set size n (images)")
    ax.set_ylabel("Score")
    ax.set_ylim(min(-0.1, float(frame["silhouette_hidden"].min()) - 0.05), 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    points = ", ".join(str(int(n)) for n in frame["n_points"])
    ax.set_title(
        f"{experiment}, fold {fold}: class separation of the embedding\n"
        f"points per size (test + unused pool): {points}",
        fontsize=10,
    )
    return figure
