"""Images set aside before fold assignment (`folds.set_aside`): an internal held-out set
that no fold ever sees - not as training, validation or test image - for an external-style
validation of the trained networks.

`set_aside_images` picks, per data set label, that many images at random (seeded by
folds.seed) from the deduplicated images, so no near-duplicate of a training image is among
them. The folds stage leaves them out; `write_set_aside` records them in a table and lays
them out as an image set (links to the images, with labels.csv) that a predict entry reads
like any folder (kind pbc for PBC, kind csv for every data set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.atomic import atomic_path, write_csv
from fewcells.errors import FewcellsError

SET_ASIDE_COLUMNS = ["image_id", "label", "path"]


def set_aside_images(kept: pd.DataFrame, per_label: int, seed: int) -> pd.DataFrame:
    """`per_label` images of every label of `kept`, chosen at random with `seed`, sorted
    by image_id. A label with `per_label` images or fewer is an error (nothing would be left
    to train on)."""
    if per_label < 1:
        raise FewcellsError(f"folds.set_aside: needs a whole number >= 1, got {per_label}")
    kept = kept.sort_values("image_id", ignore_index=True)
    counts = kept["label"].value_counts()
    small = sorted(label for label, n in counts.items() if n <= per_label)
    if small:
        raise FewcellsError(
            f"folds.set_aside = {per_label}: label(s) {small} have that many images or fewer "
            f"({', '.join(f'{k}: {counts[k]}' for k in small)})"
        )
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(kept["label"].to_numpy() == label), per_label, replace=False)
        for label in sorted(counts.index)
    ]
    return kept.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def without_set_aside(kept: pd.DataFrame, per_label: int | None, seed: int) -> pd.DataFrame:
    """`kept` without its set-aside images (all of it when `per_label` is None)."""
    if not per_label:
        return kept
    aside = set(set_aside_images(kept, per_label, seed)["image_id"])
    return kept[~kept["image_id"].isin(aside)].reset_index(drop=True)


def write_set_aside(kept: pd.DataFrame, per_label: int, seed: int, out_dir: Path) -> pd.DataFrame:
    """OUT_DIR/set_aside.csv (image_id, label, path) and OUT_DIR/images/: a link per image at
    images/<image_id><suffix> and images/labels.csv (path, label)."""
    aside = set_aside_images(kept, per_label, seed)
    out_dir = Path(out_dir)
    # images/ and the table are written one after the other (Snakemake creates the folder
    # of a declared output before the job, so out_dir itself is never empty)
    with atomic_path(out_dir / "images", directory=True) as images:
        links = []
        for image_id, path in zip(aside["image_id"], aside["path"], strict=True):
            link = Path(f"{image_id}{Path(path).suffix}")
            (images / link).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.abspath(path), images / link)
            links.append(link.as_posix())
        pd.DataFrame({"path": links, "label": aside["label"]}).to_csv(
            images / "labels.csv", index=False
        )
    write_csv(aside[SET_ASIDE_COLUMNS], out_dir / "set_aside.csv")
    return aside
