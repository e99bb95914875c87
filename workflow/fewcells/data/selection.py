"""Which images of a fold's training pool an annotator labels first: selection strategies.

`random` is the nested class-balanced order of fewcells.data.folds. The other strategies
reorder the pool without ever reading the label of an image that is not yet selected: the
labels they may use come from an `Annotator`, which answers only for selected images (as an
expert labels the cells put in front of them) and records every question.

- diverse: greedy k-center (farthest-first) in a label-free feature space, so the first n
  images cover the pool. The first image is the one closest to the pool's mean feature.
- uncertain: active learning in rounds; the first round is the random order's first images
  (the same seed set as the random strategy), each later round adds the images that the
  previous round's network is least sure about (entropy or margin of its probabilities).

With `balanced`, each pick is made among the candidates whose guessed class is the class
with the fewest selected images: the guess is the label of the nearest selected image
(diverse) or the previous network's prediction (uncertain); never an unselected label. Where
no candidate is guessed to be of that class, the pick is made among all candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from fewcells.errors import FewcellsError
from fewcells.plan import fold_ids, fold_split

STRATEGIES = ("random", "diverse", "uncertain")
SCORES = ("entropy", "margin")
# selection.csv: one row per selected image, in the order it was selected.
SELECTION_COLUMNS = ["fold", "round", "image_id", "score", "reason"]


class Annotator:
    """Labels of selected images only: label(i) answers for i once i is selected, else
    refuses. `asked` lists every image asked about (a test's evidence)."""

    def __init__(self, labels: Sequence):
        self._labels = list(labels)
        self.selected: set[int] = set()
        self.asked: list[int] = []

    def select(self, index: int) -> None:
        self.selected.add(int(index))

    def label(self, index: int):
        if index not in self.selected:
            raise FewcellsError(f"selection asked for the label of unselected image {index}")
        self.asked.append(int(index))
        return self._labels[index]


def image_features(images: np.ndarray) -> np.ndarray:
    """Label-free colour and texture statistics of (N, H, W, 3) uint8 images: per channel the
    mean, standard deviation, 10th/50th/90th percentile of the intensity and the mean
    absolute horizontal and vertical gradient (see `standardise`)."""
    rows = []
    for image in images:
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        flat = pixels.reshape(-1, pixels.shape[-1])
        gradient_x = np.abs(np.diff(pixels, axis=1)).mean(axis=(0, 1))
        gradient_y = np.abs(np.diff(pixels, axis=0)).mean(axis=(0, 1))
        rows.append(
            np.concatenate(
                [
                    flat.mean(axis=0),
                    flat.std(axis=0),
                    np.percentile(flat, [10, 50, 90], axis=0).ravel(),
                    gradient_x,
                    gradient_y,
                ]
            )
        )
    return np.asarray(rows, dtype=np.float64)


def standardise(features: np.ndarray) -> np.ndarray:
    """Each feature centred and scaled to unit standard deviation over the rows (a constant
    feature is only centred), so that no statistic dominates the distances."""
    features = np.asarray(features, dtype=np.float64)
    spread = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def closest_to_mean(features: np.ndarray) -> int:
    """The image whose features are closest to the mean feature (first of ties)."""
    return int(np.argmin(((features - features.mean(axis=0)) ** 2).sum(axis=1)))


def _guessed_targets(
    candidates: np.ndarray, guesses: np.ndarray | None, counts: dict, n_classes: int
) -> np.ndarray:
    """Candidates guessed to be of the class with the fewest selected images (all where
    none is, or where there are no guesses)."""
    if guesses is None:
        return candidates
    order = sorted(range(n_classes), key=lambda c: (counts.get(c, 0), c))
    for wanted in order:
        chosen = candidates[guesses[candidates] == wanted]
        if len(chosen):
            return chosen
    return candidates


def k_center(
    features: np.ndarray,
    n: int | None = None,
    first: Sequence[int] = (),
    annotator: Annotator | None = None,
    n_classes: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy farthest-first order of the rows of `features` (all rows, or the first n).

    Starts from `first` (default: the row closest to the mean), then repeatedly takes the row
    farthest (Euclidean) from every selected row; ties go to the lowest row. Returns (order,
    distance of each pick to the nearest earlier pick; inf for the starting rows). With an
    `annotator` (balanced), the pick is the farthest among the candidates whose nearest
    selected row's label is the least represented class.
    """
    features = np.asarray(features, dtype=np.float64)
    total = len(features)
    n = total if n is None else min(n, total)
    order = [int(i) for i in first] or [closest_to_mean(features)]
    distances = [np.inf] * len(order)
    nearest_dist = np.full(total, np.inf)
    nearest_row = np.zeros(total, dtype=int)
    for row in order:
        _update_nearest(features, row, nearest_dist, nearest_row)
    labels = {}
    for row in order:
        if annotator is not None:
            annotator.select(row)
            labels[row] = annotator.label(row)
    while len(order) < n:
        candidates = np.flatnonzero(nearest_dist >= 0)
        if annotator is not None:
            guesses = np.full(total, -1)
            guesses[candidates] = [labels[nearest_row[c]] for c in candidates]
            counts = pd.Series(list(labels.values())).value_counts().to_dict()
            candidates = _guessed_targets(candidates, guesses, counts, n_classes)
        pick = int(candidates[np.argmax(nearest_dist[candidates])])
        distances.append(float(nearest_dist[pick]))
        order.append(pick)
        _update_nearest(features, pick, nearest_dist, nearest_row)
        if annotator is not None:
            annotator.select(pick)
            labels[pick] = annotator.label(pick)
    return np.asarray(order[:n], dtype=int), np.asarray(distances[:n])


def _update_nearest(features, row, nearest_dist, nearest_row) -> None:
    distance = np.sqrt(((features - features[row]) ** 2).sum(axis=1))
    closer = distance < nearest_dist
    nearest_dist[closer] = distance[closer]
    nearest_row[closer] = row
    nearest_dist[row] = -1.0  # selected: never a candidate again


def uncertainty(probabilities: np.ndarray, score: str = "entropy") -> np.ndarray:
    """Per image, how unsure the network is: the entropy of its class probabilities (nats),
    or 1 minus the margin between its two most probable classes; higher is less sure."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    if score == "entropy":
        return -(p * np.log(p)).sum(axis=1)
    if score == "margin":
        top = np.sort(p, axis=1)
        return 1.0 - (top[:, -1] - top[:, -2])
    raise FewcellsError(f"selection.score must be one of {SCORES}, not {score!r}")


def most_uncertain(
    scores: np.ndarray,
    n: int,
    guesses: np.ndarray | None = None,
    selected_counts: dict | None = None,
    n_classes: int = 0,
) -> np.ndarray:
    """Positions of the n highest scores (ties: lowest position first). With `guesses`
    (balanced), one at a time among the candidates guessed to be of the least selected
    class, counting each pick as its guessed class."""
    scores = np.asarray(scores, dtype=np.float64)
    ranking = np.lexsort((np.arange(len(scores)), -scores))
    if guesses is None:
        return ranking[:n]
    counts = dict(selected_counts or {})
    picks: list[int] = []
    remaining = ranking
    while len(picks) < min(n, len(scores)):
        chosen = _guessed_targets(remaining, guesses, counts, n_classes)
        pick = int(chosen[0])  # remaining is ranked, so the first of chosen is the most unsure
        picks.append(pick)
        counts[int(guesses[pick])] = counts.get(int(guesses[pick]), 0) + 1
        remaining = remaining[remaining != pick]
    return np.asarray(picks, dtype=int)


def reorder_pool(fold_rows: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    """One fold's folds.csv rows with the pool ranked `first` (image ids, in order), then the
    other pool images in their previous order."""
    pool = fold_rows[fold_rows["role"] == "pool"].sort_values("rank")
    missing = set(first) - set(pool["image_id"])
    if missing:
        raise FewcellsError(f"selection: image(s) {sorted(missing)[:3]} are not in the pool")
    position = {image: i for i, image in enumerate(first)}
    rest = pool.loc[~pool["image_id"].isin(position), "image_id"].tolist()
    rank = {image: i for i, image in enumerate([*first, *rest])}
    out = fold_rows.copy()
    is_pool = out["role"] == "pool"
    out.loc[is_pool, "rank"] = out.loc[is_pool, "image_id"].map(rank).astype(int)
    return out


def diverse_fold(
    fold_rows: pd.DataFrame,
    features: Callable[[list[str]], np.ndarray],
    balanced: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One fold's rows with the pool in farthest-first order of `features(image ids)`, and
    its selection.csv rows (round = rank, score = distance to the nearest earlier pick)."""
    pool = fold_rows[fold_rows["role"] == "pool"].sort_values("image_id")
    ids = pool["image_id"].tolist()
    annotator = Annotator(pool["target"].tolist()) if balanced else None
    n_classes = int(fold_rows["target"].max()) + 1
    order, distances = k_center(features(ids), annotator=annotator, n_classes=n_classes)
    chosen = [ids[i] for i in order]
    reasons = ["closest to the pool's mean"] + ["farthest from the selected"] * (len(order) - 1)
    table = pd.DataFrame(
        {
            "fold": int(fold_rows["fold"].iloc[0]),
            "round": np.arange(len(order)),
            "image_id": chosen,
            "score": np.where(np.isfinite(distances), distances, np.nan),
            "reason": reasons,
        }
    )
    return reorder_pool(fold_rows, chosen), table[SELECTION_COLUMNS]


def class_mix(folds: pd.DataFrame, sizes: Sequence[int]) -> pd.DataFrame:
    """Per training size, fold and class, the number of training images of that class (the
    first `size` of the pool order)."""
    pool = folds[folds["role"] == "pool"]
    rows = [
        pool[pool["rank"] < size]
        .groupby(["fold", "class_name"])
        .size()
        .rename("n_images")
        .reset_index()
        .assign(size=size)
        for size in sizes
    ]
    return pd.concat(rows, ignore_index=True)[["size", "fold", "class_name", "n_images"]]


def check_selection(key: str, experiment: dict, experiments: dict) -> None:
    """A validated experiment's folds.selection fits its training: uncertain trains one job
    per (size, fold), as a round needs the previous round's network; network features name
    a fitting experiment (check_features)."""
    strategy = experiment["folds"]["selection"]["strategy"]
    engine = experiment["train"]["engine"]
    if experiment["folds"]["selection"].get("diversity", 0) and strategy != "uncertain":
        raise FewcellsError(
            f"config key {key}.folds.selection: diversity mixes k-center into uncertain; "
            f"{strategy} takes none"
        )
    if strategy == "uncertain" and engine != "per_fold":
        raise FewcellsError(
            f"config key {key}.folds.selection: uncertain needs train.engine per_fold (each "
            f"round trains on what the previous round's network chose), not {engine}"
        )
    check_features(key, experiment, experiments)


def check_features(key: str, experiment: dict, experiments: dict) -> None:
    """folds.selection.features (diverse only): {experiment, size} names another experiment
    with the same dataset, classes, split and image size that trains that size on every fold
    this one trains, and whose own order does not come from network features (no chains);
    {pretrained} names an experiment on another dataset (its pretraining saw no label of
    this pool) with the same image size (check_pretrained_features)."""
    features = experiment["folds"]["selection"].get("features", "stats")
    if features == "stats":
        return
    where = f"config key {key}.folds.selection.features"
    strategy = experiment["folds"]["selection"]["strategy"]
    if strategy != "diverse":
        raise FewcellsError(f"{where}: network features order a diverse selection, not {strategy}")
    if "pretrained" in features:
        check_pretrained_features(where, experiment, features["pretrained"], experiments)
        return
    name, size = features["experiment"], features["size"]
    if name not in experiments or name == key.rsplit(".", 1)[-1]:
        raise FewcellsError(
            f"{where}: {name!r} is not another experiment (experiments: {sorted(experiments)})"
        )
    source = experiments[name]
    for what, value in (
        ("dataset", lambda e: e["dataset"]),
        ("classes", lambda e: e.get("classes")),
        ("folds (other than sizes/run_folds/selection)", fold_split),
        ("image.size", lambda e: e["image"]["size"]),
    ):
        if value(source) != value(experiment):
            raise FewcellsError(
                f"{where}: {name!r} has {what} {value(source)!r}, this experiment "
                f"{value(experiment)!r}; the network must come from the same folds"
            )
    if source["folds"]["selection"].get("features", "stats") != "stats":
        raise FewcellsError(f"{where}: {name!r} itself uses network features (no chains)")
    if size not in source["folds"]["sizes"]:
        raise FewcellsError(f"{where}: {name!r} trains no size {size} ({source['folds']['sizes']})")
    missing = sorted(set(fold_ids(experiment)) - set(fold_ids(source)))
    if missing:
        raise FewcellsError(f"{where}: {name!r} trains no network for fold(s) {missing}")


def check_pretrained_features(where: str, experiment: dict, name: str, experiments: dict) -> None:
    """The pretraining of experiment NAME (results/pretrained/<name>) may embed EXPERIMENT's
    pool: another dataset (it was trained on the labels of all its images) and the same
    image.size (the network's input)."""
    if name not in experiments:
        raise FewcellsError(
            f"{where}: pretrained {name!r} is not an experiment "
            f"(experiments: {sorted(experiments)})"
        )
    source = experiments[name]
    if source["dataset"] == experiment["dataset"]:
        raise FewcellsError(
            f"{where}: pretrained {name!r} is trained on all of dataset {source['dataset']!r}, "
            "this experiment's own, so it has seen the labels of unselected pool images; "
            "name an experiment on another dataset"
        )
    if source["image"]["size"] != experiment["image"]["size"]:
        raise FewcellsError(
            f"{where}: pretrained {name!r} has image.size {source['image']['size']}, this "
            f"experiment {experiment['image']['size']}; the network must take this store's images"
        )
