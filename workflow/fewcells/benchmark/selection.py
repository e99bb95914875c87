"""The selection strategies' own cost (fewcells.data.selection): what a diverse order and an
uncertain round compute besides training, measured on one fold's pool of a store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.data.active import network_probabilities
from fewcells.data.selection import image_features, k_center, standardise, uncertainty
from fewcells.data.store import open_store


def selection_cost(root: Path, train_dir: Path, fold: int = 0) -> dict:
    """Seconds to compute the colour/texture features of fold `fold`'s pool and order it by
    k-center (diverse), and to load the network in TRAIN_DIR and score the pool by entropy
    (one uncertain round), on the store and folds of ROOT (store/, folds/folds.csv)."""
    folds = pd.read_csv(root / "folds" / "folds.csv")
    pool = folds.query("fold == @fold and role == 'pool'")["image_id"].tolist()
    start = time.perf_counter()
    images, index = open_store(root / "store")
    rows = index.set_index("image_id").loc[pool, "row"].to_numpy()
    k_center(standardise(image_features(np.asarray(images[rows]))))
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    uncertainty(network_probabilities(train_dir, root / "store")(pool))
    scoring_s = time.perf_counter() - start
    return {"n_pool": len(pool), "diverse_seconds": features_s, "uncertain_seconds": scoring_s}
