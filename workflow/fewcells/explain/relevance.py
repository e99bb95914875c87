"""Relevance maps of trained networks (paper Fig. 4b) and where their relevance lies.

Saliency is |d logit / d input|, the maximum over colour channels. LRP uses zennit: by
default the paper's setting, the epsilon rule (epsilon = 1) on every conv and dense layer,
starting from the pre-softmax logit of the target class (the true class by default). The
share of positive LRP relevance inside the nucleus and inside the cell turns the paper's
"larger training sets focus on the nucleus" into a number per training size, for each of
several composites (by default the paper's rule and the box rule at the input layer, which
does not scale relevance by the pixel values as the epsilon rule does); nuclei come from a
stain-colour segmentation and, where they exist, from expert masks.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fewcells.atomic import write_csv, write_png
from fewcells.contracts import FOLD_COLUMNS, read_classes, read_table
from fewcells.data.store import open_store
from fewcells.errors import FewcellsError
from fewcells.explain import plots
from fewcells.explain.attribution import (
    canonizers_for,
    describe_composite,
    input_bounds,
    lrp,
    make_composite,
    saliency,
)
from fewcells.explain.masks import image_masks, mask_table, region_shares
from fewcells.training.models import to_model_input

log = logging.getLogger(__name__)

BATCH_SIZE = 16
DEFAULT_SETTINGS = {
    "composite": "epsilon",
    "share_composites": ["epsilon", "epsilon_gamma_box"],
    "epsilon": 1.0,
    "gamma": 0.25,
    "target": "true_class",
    "cells": None,
}


def load_network(path: Path) -> torch.nn.Module:
    """The network of a model.ckpt, on the CPU, in eval mode."""
    from fewcells.training.module import CellClassifier

    if not path.is_file():
        raise FewcellsError(f"{path}: no trained network (model.ckpt) for explain")
    try:
        return CellClassifier.from_checkpoint(path, map_location="cpu").model.eval()
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        raise FewcellsError(f"{path}: cannot load the network: {error}") from error


def fold_images(store_dir: Path, folds_csv: Path, fold: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The memory-mapped store and the fold's rows (image_id, target, class_name, role,
    store_row), sorted by image_id."""
    images, index = open_store(store_dir)
    folds = read_table(folds_csv, FOLD_COLUMNS)
    frame = folds[folds["fold"] == fold].sort_values("image_id", ignore_index=True)
    if frame.empty:
        raise FewcellsError(f"{folds_csv}: no rows for fold {fold}")
    rows = dict(zip(index["image_id"].astype(str), index["row"], strict=True))
    missing = sorted(set(frame["image_id"].astype(str)) - set(rows))
    if missing:
        raise FewcellsError(
            f"{store_dir / 'index.csv'}: image_id(s) of {folds_csv} missing: {missing[:3]}"
        )
    frame["store_row"] = frame["image_id"].astype(str).map(rows)
    return images, frame


def example_cells(frame: pd.DataFrame, cells: Sequence[str] | None) -> pd.DataFrame:
    """The configured image ids (any of the fold's images), or the first test image (by id)
    of each class in target order."""
    if cells:
        unknown = [c for c in cells if c not in set(frame["image_id"])]
        if unknown:
            raise FewcellsError(
                f"config key explain.cells: image_id(s) {unknown} are not in the "
                f"fold (e.g. {frame['image_id'].iloc[0]!r})"
            )
        return frame.set_index("image_id").loc[list(cells)].reset_index()
    test = frame[frame["role"] == "test"].sort_values(["target", "image_id"])
    return test.groupby("target", sort=True).head(1).reset_index(drop=True)


def relevance_summary(shares: pd.DataFrame) -> pd.DataFrame:
    """Per composite, size, region and mask source: mean, s.d. and count of the
    positive-relevance share over images, the mean area fraction of that region over the same
    images (the share of uniform relevance) and the enrichment mean / area_mean (1: the region
    gets no more relevance than its area)."""
    rows = []
    for (composite, size), group in shares.groupby(["composite", "size"], sort=False):
        for column in [c for c in shares.columns if c.startswith("share_")]:
            _, region, source = column.split("_")
            values = group[column].dropna()
            area = group.loc[values.index, f"{region}_area_{source}"].mean()
            rows.append(
                {
                    "composite": composite,
                    "size": size,
                    "region": region,
                    "mask": source,
                    "mean": values.mean(),
                    "sd": values.std(ddof=1) if len(values) > 1 else float("nan"),
                    "median": values.median(),
                    "n_images": len(values),
                    "area_mean": area,
                    "enrichment": values.mean() / area if area > 0 else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def explain_fold(
    store_dir: str | os.PathLike,
    folds_dir: str | os.PathLike,
    fold: int,
    train_root: str | os.PathLike,
    sizes: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    settings: dict,
    experiment: str,
    masks_dir: str | os.PathLike | None = None,
    fit: str = "pad",
    dpi: int = 150,
) -> pd.DataFrame:
    """Relevance maps, relevance shares and their figures for the networks of one fold.

    Writes to out_dir: relevance_maps.png (LRP with settings["composite"]),
    relevance_shares.csv (per composite, size and test image), relevance_summary.csv (per
    composite and size), relevance_shares.png and masks.csv (mask areas, Dice). Shares are
    computed for settings["share_composites"] and the drawn composite. Returns the summary.
    """
    settings = {**DEFAULT_SETTINGS, **settings}
    store_dir, folds_dir, out_dir = Path(store_dir), Path(folds_dir), Path(out_dir)
    masks_dir = Path(masks_dir) if masks_dir else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise FewcellsError(f"datasets.<name>.masks: {masks_dir} is not a folder")
    images = read_fold_images(store_dir, folds_dir, fold, settings.get("cells"), masks_dir, fit)
    composites = list(dict.fromkeys([*settings["share_composites"], settings["composite"]]))
    labels = {
        name: describe_composite(name, settings["epsilon"], settings["gamma"])
        for name in composites
    }
    share_rows = {name: [] for name in composites}
    maps = {}
    for size in sizes:
        model = load_network(Path(train_root) / f"n{size}" / f"fold{fold}" / "model.ckpt")
        size_rows, size_maps = explain_network(model, size, images, composites, settings)
        for name in composites:
            share_rows[name] += size_rows[name]
        maps |= size_maps
        log.info(
            "explain: fold %d size %d: %d test images, composites %s",
            fold,
            size,
            len(images.test),
            ", ".join(composites),
        )
    shares = pd.DataFrame([row for name in composites for row in share_rows[name]])
    summary = relevance_summary(shares)
    summary.insert(0, "fold", fold)
    summary["target_logit"] = settings["target"]
    examples_drawn = [
        plots.Example(
            image_id=row.image_id,
            class_name=row.class_name,
            image=images.pixels[row.image_id],
            masks={s: m[0] for s, m in images.masks[row.image_id].items()},
            maps={size: maps[(row.image_id, size)] for size in sizes},
        )
        for row in images.examples.itertuples()
    ]
    figures = {
        "relevance_maps.png": plots.relevance_maps(
            examples_drawn,
            sizes,
            experiment=experiment,
            fold=fold,
            target=settings["target"],
            lrp_label=labels[settings["composite"]],
        ),
        "relevance_shares.png": plots.relevance_shares(
            summary, experiment=experiment, fold=fold, labels=labels
        ),
    }
    write_csv(shares, out_dir / "relevance_shares.csv")
    write_csv(summary, out_dir / "relevance_summary.csv")
    write_csv(mask_table(list(images.test["image_id"]), images.masks), out_dir / "masks.csv")
    for name, figure in figures.items():
        write_png(figure, out_dir / name, dpi)
    return summary


@dataclass
class FoldImages:
    """The images of one fold that explain_fold explains: `wanted` (the test images, then the
    example cells that are not among them), their pixels and masks by image_id, and the
    class names."""

    fold: int
    test: pd.DataFrame
    examples: pd.DataFrame
    wanted: pd.DataFrame
    pixels: dict[str, np.ndarray]
    masks: dict[str, dict]
    class_names: list[str]


def read_fold_images(
    store_dir: Path,
    folds_dir: Path,
    fold: int,
    cells: Sequence[str] | None,
    masks_dir: Path | None,
    fit: str,
) -> FoldImages:
    """The test images and example cells (`cells`, see example_cells) of a fold, with their
    pixels and their automatic (and expert) nucleus and cell masks."""
    class_names, _ = read_classes(folds_dir / "classes.json")
    images, frame = fold_images(store_dir, folds_dir / "folds.csv", fold)
    test = frame[frame["role"] == "test"].reset_index(drop=True)
    examples = example_cells(frame, cells)
    wanted = pd.concat([test, examples]).drop_duplicates("image_id")
    pixels = {
        i: np.asarray(images[r])
        for i, r in zip(wanted["image_id"], wanted["store_row"], strict=True)
    }
    masks = {i: image_masks(pixels[i], i, masks_dir, fit) for i in wanted["image_id"]}
    return FoldImages(fold, test, examples, wanted, pixels, masks, class_names)


def explain_network(
    model: torch.nn.Module,
    size: int,
    images: FoldImages,
    composites: list[str],
    settings: dict,
) -> tuple[dict[str, list[dict]], dict]:
    """One network's relevance: per composite a row of relevance shares per test image, and
    the saliency and LRP maps (with settings["composite"]) of the example cells, keyed by
    (image_id, size)."""
    rules = {
        name: make_composite(
            name,
            settings["epsilon"],
            canonizers_for(model),
            gamma=settings["gamma"],
            bounds=input_bounds(model),
        )
        for name in composites
    }
    share_rows = {name: [] for name in composites}
    maps = {}
    wanted, class_names = images.wanted, images.class_names
    for start in range(0, len(wanted), BATCH_SIZE):
        part = wanted.iloc[start : start + BATCH_SIZE]
        batch = np.stack([images.pixels[i] for i in part["image_id"]])
        x = to_model_input(torch.from_numpy(batch))
        with torch.no_grad():
            predicted = model(x).argmax(dim=1)
        if settings["target"] == "predicted":
            targets = predicted
        else:
            targets = torch.tensor(part["target"].to_numpy())
        is_example = part["image_id"].isin(images.examples["image_id"]).to_numpy()
        is_test = (part["role"] == "test").to_numpy()
        for name, composite in rules.items():
            relevance, logits = lrp(model, x, targets, composite)
            relevance = relevance.sum(axis=1)
            if name == settings["composite"] and is_example.any():
                grads = saliency(model, x[is_example], targets[is_example])
                for image_id, grad, rel, pred in zip(
                    part["image_id"][is_example],
                    grads,
                    relevance[is_example],
                    predicted[is_example],
                    strict=True,
                ):
                    maps[(image_id, size)] = (grad, rel, class_names[int(pred)])
            for j in np.flatnonzero(is_test):
                row = part.iloc[j]
                share_rows[name].append(
                    {
                        "fold": images.fold,
                        "composite": name,
                        "size": size,
                        "image_id": row["image_id"],
                        "class_name": row["class_name"],
                        "target": int(targets[j]),
                        "predicted": class_names[int(predicted[j])],
                        "logit": float(logits[j]),
                        "relevance_sum": float(relevance[j].sum()),
                        **region_shares(relevance[j], images.masks[row["image_id"]]),
                    }
                )
    return share_rows, maps
