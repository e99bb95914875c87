"""tSNE of the hidden layer and class separation (fewcells.explain.tsne)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fewcells.errors import FewcellsError
from fewcells.explain import tsne as embedding


def _clusters(n_per_class: int = 20, gap: float = 6.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = np.repeat([0, 1], n_per_class)
    vectors = rng.normal(size=(2 * n_per_class, 32)) + gap * targets[:, None]
    return vectors, targets


def test_tsne_is_deterministic_with_a_fixed_seed():
    vectors, _ = _clusters()
    first = embedding.tsne_2d(vectors, perplexity=30, seed=3)
    again = embedding.tsne_2d(vectors, perplexity=30, seed=3)
    other = embedding.tsne_2d(vectors, perplexity=5, seed=3)
    assert first.shape == (40, 2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_perplexity_is_clipped_to_what_n_allows():
    assert embedding.usable_perplexity(30, 40) == 13
    assert embedding.usable_perplexity(5, 40) == 5


def test_separation_tells_separated_from_mixed_classes():
    vectors, targets = _clusters()
    apart = embedding.separation(vectors, targets, k=5)
    assert apart["silhouette"] > 0.5 and apart["knn_accuracy"] == 1.0
    mixed = embedding.separation(*_clusters(gap=0.0), k=5)
    assert mixed["silhouette"] < 0.1 and mixed["knn_accuracy"] < 0.8


def test_a_dead_hidden_layer_gives_nan_silhouette_and_a_flat_map():
    vectors = np.zeros((12, 32))
    targets = np.repeat([0, 1], 6)
    assert np.isnan(embedding.separation(vectors, targets, k=5)["silhouette"])
    assert (embedding.tsne_2d(vectors, 30, 0) == 0).all()


def _write_embeddings(path, n=30, seed=0):
    vectors, targets = _clusters(n // 2, seed=seed)
    roles = np.array(["test", "pool_unused", "train"] * (n // 3))
    np.savez(
        path,
        image_id=np.array([f"im{i}" for i in range(n)]),
        role=roles,
        target=targets,
        embedding=vectors.astype(np.float32),
    )


def test_tsne_fold_writes_tables_and_figures(tmp_path):
    files = {}
    for size in (10, 20):
        files[size] = tmp_path / f"n{size}.npz"
        _write_embeddings(files[size], seed=size)
    classes = tmp_path / "classes.json"
    classes.write_text('{"classes": ["other", "blast"], "task": "binary"}')
    table = embedding.tsne_fold(
        files, classes, tmp_path / "out", fold=0, experiment="x", perplexity=30
    )
    assert list(table["size"]) == [10, 20] and (table["n_points"] == 20).all()
    assert table["perplexity"].tolist() == pytest.approx([19 / 3] * 2)
    coordinates = pd.read_csv(tmp_path / "out" / "tsne_coordinates.csv")
    assert set(coordinates["role"]) == {"test", "pool_unused"} and len(coordinates) == 40
    for name in ("separation.csv", "tsne.png", "separation.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_missing_array_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", image_id=np.array(["a"]))
    with pytest.raises(FewcellsError, match="bad.npz: missing array.*role"):
        embedding.load_embeddings(tmp_path / "bad.npz")
