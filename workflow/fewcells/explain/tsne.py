"""tSNE of the last hidden layer (paper Fig. 5) and how well it separates the classes.

Points are one fold's test images plus the training-pool images the network did not see
(roles test and pool_unused in embeddings.npz). Separation is measured by the silhouette
score (hidden layer and tSNE map) and a leave-one-out k-nearest-neighbour accuracy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from openTSNE import TSNE
from sklearn.metrics import silhouette_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from fewcells.atomic import write_csv, write_png
from fewcells.contracts import EMBEDDING_KEYS, read_classes
from fewcells.errors import FewcellsError
from fewcells.explain import plots

log = logging.getLogger(__name__)

ROLES = ("test", "pool_unused")


def load_embeddings(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray]:
    """The test and unused-pool rows of an embeddings.npz: (image_id, role, target), (N, D)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in EMBEDDING_KEYS if k not in data.files]
            if missing:
                raise FewcellsError(f"{path}: missing array(s) {', '.join(missing)}")
            frame = pd.DataFrame({k: data[k] for k in ("image_id", "role", "target")})
            vectors = np.asarray(data["embedding"], dtype=np.float64)
    except (OSError, ValueError) as error:
        raise FewcellsError(f"{path}: cannot read embeddings: {error}") from error
    keep = frame["role"].isin(ROLES).to_numpy()
    if keep.sum() < 4:
        raise FewcellsError(f"{path}: only {keep.sum()} test/pool_unused images, tSNE needs 4")
    return frame[keep].reset_index(drop=True), vectors[keep]


def usable_perplexity(perplexity: float, n_points: int) -> float:
    """`perplexity`, lowered to (n - 1) / 3 where there are too few points for it."""
    return float(min(perplexity, (n_points - 1) / 3))


def tsne_2d(vectors: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """2-d openTSNE embedding (PCA initialisation, exact-seeded, one thread)."""
    spread = vectors.std(axis=0).sum()
    if spread == 0:  # a dead hidden layer: every point identical, nothing to lay out
        return np.zeros((len(vectors), 2))
    tsne = TSNE(
        n_components=2,
        perplexity=usable_perplexity(perplexity, len(vectors)),
        random_state=seed,
        n_jobs=1,
        initialization="pca",
        negative_gradient_method="bh",
        verbose=False,
    )
    return np.asarray(tsne.fit(vectors))


def separation(vectors: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """Silhouette score and leave-one-out k-NN accuracy of labelled points (NaN where
    undefined: fewer than two classes, or as many classes as points)."""
    n_labels = len(np.unique(targets))
    silhouette = (
        float(silhouette_score(vectors, targets))
        if 2 <= n_labels < len(targets) and np.ptp(vectors, axis=0).any()
        else float("nan")
    )
    neighbours = min(k, len(targets) - 1)
    predicted = cross_val_predict(
        KNeighborsClassifier(n_neighbors=neighbours), vectors, targets, cv=LeaveOneOut()
    )
    return {"silhouette": silhouette, "knn_accuracy": float(np.mean(predicted == targets))}


def tsne_fold(
    embedding_files: Mapping[int, str | os.PathLike],
    classes_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fold: int,
    experiment: str,
    perplexity: float = 30.0,
    seed: int = 0,
    knn: int = 5,
    dpi: int = 150,
) -> pd.DataFrame:
    """tSNE per training size of one fold; writes tsne_coordinates.csv, separation.csv,
    tsne.png and separation.png to out_dir and returns the separation table."""

    class_names, _ = read_classes(classes_json)
    out_dir = Path(out_dir)
    coordinates, rows = [], []
    for size in sorted(embedding_files):
        frame, vectors = load_embeddings(embedding_files[size])
        targets = frame["target"].to_numpy()
        mapped = tsne_2d(vectors, perplexity, seed)
        coordinates.append(frame.assign(size=size, tsne_1=mapped[:, 0], tsne_2=mapped[:, 1]))
        hidden, flat = separation(vectors, targets, knn), separation(mapped, targets, knn)
        rows.append(
            {
                "fold": fold,
                "size": size,
                "n_points": len(frame),
                "n_test": int((frame["role"] == "test").sum()),
                "perplexity": usable_perplexity(perplexity, len(frame)),
                "seed": seed,
                "knn_k": min(knn, len(frame) - 1),
                "silhouette_hidden": hidden["silhouette"],
                "silhouette_2d": flat["silhouette"],
                "knn_accuracy_hidden": hidden["knn_accuracy"],
                "knn_accuracy_2d": flat["knn_accuracy"],
            }
        )
        log.info("tsne: fold %d size %d: %s", fold, size, rows[-1])
    coordinates = pd.concat(coordinates, ignore_index=True)
    table = pd.DataFrame(rows)
    figures = {
        "tsne.png": plots.tsne_panels(
            coordinates, table, class_names, experiment=experiment, fold=fold
        ),
        "separation.png": plots.separation_plot(table, experiment=experiment, fold=fold),
    }
    write_csv(coordinates, out_dir / "tsne_coordinates.csv")
    write_csv(table, out_dir / "separation.csv")
    for name, figure in figures.items():
        write_png(figure, out_dir / name, dpi)
    return table
