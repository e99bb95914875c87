"""The contact sheet of a prediction: the images the networks are most and least certain
about, each with its LRP relevance map (the explain stage's code, averaged over the
ensemble's networks, for the predicted class)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from fewcells.atomic import write_png
from fewcells.explain.attribution import (
    canonizers_for,
    describe_composite,
    input_bounds,
    lrp,
    make_composite,
)
from fewcells.explain.relevance import DEFAULT_SETTINGS
from fewcells.predict.images import prepare_image
from fewcells.training.models import to_model_input


def sheet_rows(predictions: pd.DataFrame, per_group: int) -> tuple[int, pd.DataFrame]:
    """The largest training size and its `per_group` most and least certain images
    (certainty = the ensemble's probability of its predicted class), with a `group`."""
    size = int(predictions["size"].max())
    table = predictions[predictions["size"] == size].sort_values(
        ["certainty", "image_id"], ascending=[False, True], kind="stable"
    )
    most = table.head(per_group).assign(group="most certain")
    rest = table.drop(index=most.index)
    least = rest.tail(min(per_group, len(rest))).iloc[::-1].assign(group="least certain")
    return size, pd.concat([most, least])


def ensemble_relevance(
    networks: Sequence, images: np.ndarray, targets: np.ndarray, settings: dict
) -> np.ndarray:
    """Mean over `networks` of the LRP relevance (summed over colour channels) of each
    image's target class: (B, H, W)."""
    settings = {**DEFAULT_SETTINGS, **settings}
    x = to_model_input(torch.from_numpy(images))
    target = torch.from_numpy(np.array(targets, dtype=np.int64))
    total = np.zeros(images.shape[:3], dtype=np.float64)
    for network in networks:
        composite = make_composite(
            settings["composite"],
            settings["epsilon"],
            canonizers_for(network.model),
            gamma=settings["gamma"],
            bounds=input_bounds(network.model),
        )
        relevance, _ = lrp(network.model, x, target, composite)
        total += relevance.sum(axis=1)
    return total / max(len(networks), 1)


def short_name(image_id: str, limit: int = 24) -> str:
    """The file name of an image id, shortened in the middle to `limit` characters."""
    name = PurePosixPath(image_id).name
    if len(name) <= limit:
        return name
    keep = limit - 1
    return f"{name[: keep - keep // 2]}…{name[-(keep // 2) :]}"


def contact_sheet(
    rows: pd.DataFrame,
    images: np.ndarray,
    relevance: np.ndarray,
    *,
    title: str,
    lrp_label: str,
) -> Figure:
    """Two rows per group (most / least certain): the images and their relevance maps."""
    groups = list(dict.fromkeys(rows["group"]))
    columns = max(1, max((rows["group"] == g).sum() for g in groups))
    figure = Figure(figsize=(1.9 * columns + 0.6, 4.1 * len(groups) + 0.8), layout="constrained")
    axes = figure.subplots(2 * len(groups), columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for g, group in enumerate(groups):
        positions = np.flatnonzero(rows["group"].to_numpy() == group)
        axes[2 * g, 0].set_ylabel(group, fontsize=9)
        axes[2 * g + 1, 0].set_ylabel("LRP", fontsize=9)
        for column, position in enumerate(positions):
            row = rows.iloc[position]
            truth = row["class_name"] if isinstance(row["class_name"], str) else "?"
            axes[2 * g, column].imshow(images[position])
            axes[2 * g, column].set_title(
                f"{short_name(row['image_id'])}\ntrue {truth}, called {row['predicted']}\n"
                f"p {row['certainty']:.2f}, spread {row['spread']:.2f}",
                fontsize=6.5,
            )
            rel = relevance[position]
            top = float(np.percentile(np.abs(rel), 99.5)) or 1.0
            axes[2 * g + 1, column].imshow(rel, cmap="bwr", vmin=-top, vmax=top)
    caption = (
        f"LRP of the predicted class ({lrp_label}), mean over the networks; "
        "red + / blue −; spread = s.d. between networks"
    )
    width = int(figure.get_figwidth() * 13)
    figure.suptitle("\n".join([title, *textwrap.wrap(caption, width)]), fontsize=8)
    return figure


def write_contact_sheet(
    predictions: pd.DataFrame,
    networks: Sequence,
    class_names: Sequence[str],
    path: Path,
    *,
    fit: str,
    rescale: float,
    settings: dict,
    per_group: int,
    title: str,
    dpi: int = 150,
) -> None:
    """contact_sheet.png of the largest training size's networks."""
    size, rows = sheet_rows(predictions, per_group)
    chosen = [n for n in networks if n.size == size]
    image_size = chosen[0].image_size
    images = np.stack([prepare_image(p, image_size, fit, rescale) for p in rows["path"]])
    index = {name: i for i, name in enumerate(class_names)}
    targets = rows["predicted"].map(index).to_numpy()
    relevance = ensemble_relevance(chosen, images, targets, settings)
    merged = {**DEFAULT_SETTINGS, **settings}
    label = describe_composite(merged["composite"], merged["epsilon"], merged["gamma"])
    figure = contact_sheet(rows, images, relevance, title=f"{title}, n = {size}", lrp_label=label)
    write_png(figure, path, dpi)
