"""Active learning (selection strategy `uncertain`): the training set of one round of one fold.

Round 0 is the first `folds.sizes[0]` images of the random order (the random strategy's own
seed set, so both strategies train the same images at the first size). Round r scores the
pool images not yet selected with the network trained on round r - 1's set and adds the
`sizes[r] - sizes[r - 1]` least certain ones. A round is written as a folder: folds.csv (the
fold's rows, the pool ranked selected-first, so that the training code takes the first n),
classes.json and selection.csv (every round so far: fold, round, image_id, score, reason).
Only the labels of selected images are read (balanced mode counts them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.data.selection import (
    SELECTION_COLUMNS,
    k_center,
    most_uncertain,
    reorder_pool,
    uncertainty,
)
from fewcells.errors import FewcellsError

PREDICT_BATCH = 64


def first_round(folds: pd.DataFrame, fold: int, size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fold rows, selection rows) of round 0: the first `size` images of the pool order."""
    rows = folds[folds["fold"] == fold].copy()
    if rows.empty:
        raise FewcellsError(f"folds.csv: no rows for fold {fold}")
    pool = rows[rows["role"] == "pool"].sort_values("rank")
    if len(pool) < size:
        raise FewcellsError(f"selection: fold {fold} has {len(pool)} pool images, not {size}")
    table = pd.DataFrame(
        {
            "fold": fold,
            "round": 0,
            "image_id": pool["image_id"].iloc[:size].tolist(),
            "score": np.nan,
            "reason": "start (random order)",
        }
    )
    return rows, table[SELECTION_COLUMNS]


def next_round(
    previous: pd.DataFrame,
    previous_size: int,
    size: int,
    round_: int,
    probabilities: Callable[[list[str]], np.ndarray],
    score: str = "entropy",
    balanced: bool = False,
    diversity: float = 0.0,
    features: Callable[[list[str]], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fold rows, new selection rows) of round `round_`: the previous round's set plus the
    `size - previous_size` unselected pool images with the highest uncertainty under
    `probabilities(image ids)` (the previous round's network).

    With diversity d in (0, 1), the step is taken from the step / (1 - d) most uncertain
    (d = 0.5: twice the step) by k-center on `features(image ids)`, continuing from the
    selected images: the shortlisted images farthest from the selected and from each other."""
    if size <= previous_size:
        raise FewcellsError(f"selection: round {round_} size {size} is not above {previous_size}")
    pool = previous[previous["role"] == "pool"].sort_values("rank")
    selected = pool[pool["rank"] < previous_size]
    candidates = pool.loc[pool["rank"] >= previous_size, "image_id"].tolist()
    if len(candidates) < size - previous_size:
        raise FewcellsError(f"selection: round {round_} needs more images than the pool has")
    probs = np.asarray(probabilities(candidates))
    scores = uncertainty(probs, score)
    guesses, counts = None, None
    if balanced:
        guesses = probs.argmax(axis=1)
        counts = selected["target"].value_counts().to_dict()  # labels of selected images only
    step = size - previous_size
    picks = most_uncertain(
        scores, shortlist_size(step, len(candidates), diversity), guesses, counts, probs.shape[1]
    )
    if len(picks) > step:
        picks = spread_out(picks, step, list(selected["image_id"]), candidates, features)
    new = [candidates[i] for i in picks]
    rows = reorder_pool(previous, [*selected["image_id"], *new])
    table = pd.DataFrame(
        {
            "fold": int(previous["fold"].iloc[0]),
            "round": round_,
            "image_id": new,
            "score": scores[picks],
            "reason": f"most uncertain ({score})" + (", spread out" if diversity else ""),
        }
    )
    return rows, table[SELECTION_COLUMNS]


def shortlist_size(step: int, n_candidates: int, diversity: float) -> int:
    """How many of the most uncertain candidates a step of `step` picks from: step / (1 - d),
    rounded up, at most every candidate."""
    if not 0.0 <= diversity < 1.0:
        raise FewcellsError(f"selection.diversity must lie in [0, 1), not {diversity}")
    return min(n_candidates, math.ceil(step / (1.0 - diversity) - 1e-9))


def spread_out(
    shortlist: np.ndarray,
    step: int,
    selected: list[str],
    candidates: list[str],
    features: Callable[[list[str]], np.ndarray] | None,
) -> np.ndarray:
    """The `step` positions of `shortlist` (into candidates) that k-center takes first,
    starting from the selected images (features of selected + shortlisted, label-free)."""
    if features is None:
        raise FewcellsError("selection.diversity needs image features")
    ids = [*selected, *(candidates[i] for i in shortlist)]
    order, _ = k_center(features(ids), n=len(selected) + step, first=range(len(selected)))
    return np.asarray([shortlist[i - len(selected)] for i in order[len(selected) :]], dtype=int)


def network_probabilities(
    train_dir: str | os.PathLike, store_dir: str | os.PathLike
) -> Callable[[list[str]], np.ndarray]:
    """probabilities(image ids) -> (images, classes) softmax of the network in TRAIN_DIR on
    the stored images (read from the store's memory map, in batches)."""
    import torch

    return network_outputs(
        train_dir, store_dir, lambda model, x: torch.softmax(model(x).float(), dim=1)
    )


def network_embeddings(
    network_dir: str | os.PathLike, store_dir: str | os.PathLike
) -> Callable[[list[str]], np.ndarray]:
    """embeddings(image ids) -> (images, width) hidden-layer activations of the network in
    NETWORK_DIR (a training's or a pretraining's) on the stored images (its `embed`: the paper
    CNN's hidden layer after its ReLU, a torchvision network's pooled penultimate layer), as
    in the training's embeddings.npz."""
    return network_outputs(network_dir, store_dir, lambda model, x: model.embed(x).float())


def network_outputs(
    network_dir: str | os.PathLike, store_dir: str | os.PathLike, forward: Callable
) -> Callable[[list[str]], np.ndarray]:
    """outputs(image ids) -> forward(model, batch) of the network in NETWORK_DIR (a training's
    or a pretraining's folder; eval mode, no gradients) on those stored images, read from the
    store's memory map in batches."""
    import torch

    from fewcells.data.store import open_store
    from fewcells.predict.predict import load_classifier
    from fewcells.training.models import to_model_input

    module = load_classifier(Path(network_dir) / "model.ckpt")
    model = module.model.eval()
    images, index = open_store(store_dir, int(module.hparams.image_size))
    row_of = dict(zip(index["image_id"], index["row"], strict=True))

    def outputs(image_ids: list[str]) -> np.ndarray:
        missing = [image for image in image_ids if image not in row_of]
        if missing:
            raise FewcellsError(f"{store_dir}: image(s) {missing[:3]} not in the store")
        rows = np.asarray([row_of[image] for image in image_ids], dtype=np.int64)
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), PREDICT_BATCH):
                batch = torch.from_numpy(np.asarray(images[rows[start : start + PREDICT_BATCH]]))
                out.append(forward(model, to_model_input(batch)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    return outputs
