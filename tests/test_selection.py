"""Selection strategies: k-center on hand-made points, uncertainty, no unselected labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fewcells.data.active import first_round, next_round
from fewcells.data.folds import assign_folds
from fewcells.data.selection import (
    Annotator,
    class_mix,
    diverse_fold,
    image_features,
    k_center,
    most_uncertain,
    standardise,
    uncertainty,
)
from fewcells.errors import FewcellsError


def test_k_center_on_hand_made_points():
    # A centre point, then the four corners of a square and one point near a corner.
    points = np.array([[0, 0], [10, 10], [-10, 10], [10, -10], [-10, -10], [9, 9.5]], float)
    order, distances = k_center(points)
    assert order[0] == 0  # closest to the mean (which is near the origin)
    assert set(order[1:5]) == {1, 2, 3, 4}  # the corners before the near-duplicate
    assert order[5] == 5
    assert np.isinf(distances[0]) and distances[5] == pytest.approx(np.hypot(1, 0.5))
    assert np.all(np.diff(distances[1:]) <= 1e-12)  # farthest-first: non-increasing


def test_k_center_starts_from_given_rows_and_stops_at_n():
    points = np.array([[0.0], [1.0], [5.0], [10.0]])
    order, _ = k_center(points, n=3, first=[3])
    assert order.tolist() == [3, 0, 2]


def test_annotator_refuses_unselected_labels():
    annotator = Annotator(["a", "b"])
    with pytest.raises(FewcellsError, match="unselected"):
        annotator.label(0)
    annotator.select(1)
    assert annotator.label(1) == "b"


def test_balanced_k_center_asks_only_selected_labels():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 3))
    labels = rng.integers(0, 2, size=30)
    annotator = Annotator(labels)
    order, _ = k_center(points, annotator=annotator, n_classes=2)
    assert sorted(order.tolist()) == list(range(30))
    assert set(annotator.asked) <= annotator.selected


def _pool_folds(seed=0, n=60):
    rng = np.random.default_rng(seed)
    kept = pd.DataFrame(
        {"image_id": [f"img{i:03d}" for i in range(n)], "label": rng.choice(["a", "b"], size=n)}
    )
    folds, _ = assign_folds(kept, None, k=2, n_val=4, seed=seed)
    return folds


def _permute_unselected(rows, selected, seed):
    """rows with the targets/class names of the pool images outside `selected` permuted."""
    rows = rows.copy()
    other = (rows["role"] == "pool") & ~rows["image_id"].isin(selected)
    permutation = np.random.default_rng(seed).permutation(other.sum())
    for column in ("target", "class_name", "label"):
        rows.loc[other, column] = rows.loc[other, column].to_numpy()[permutation]
    return rows


@pytest.mark.parametrize("balanced", [False, True])
def test_diverse_ignores_labels_of_unselected_images(balanced):
    rows = _pool_folds()
    rows = rows[rows["fold"] == 0]
    rng = np.random.default_rng(1)
    table = {image: rng.normal(size=4) for image in rows["image_id"]}

    def features(ids):
        return standardise(np.array([table[i] for i in ids]))

    ordered, picks = diverse_fold(rows, features, balanced=balanced)
    first = picks["image_id"].iloc[:10].tolist()
    # labels of images outside the first 10 picks do not change those picks
    permuted = _permute_unselected(rows, first, seed=2)
    _, again = diverse_fold(permuted, features, balanced=balanced)
    assert again["image_id"].iloc[:10].tolist() == first
    assert diverse_fold(rows, features, balanced=balanced)[1].equals(picks)  # deterministic
    pool = ordered[ordered["role"] == "pool"].sort_values("rank")
    assert pool["image_id"].tolist() == picks["image_id"].tolist()
    assert ordered[ordered["role"] != "pool"].equals(rows[rows["role"] != "pool"])


def test_uncertainty_scores():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])
    entropy = uncertainty(p, "entropy")
    assert entropy[0] == pytest.approx(np.log(2)) and entropy[0] > entropy[1] > entropy[2]
    assert uncertainty(p, "margin").tolist() == pytest.approx([1.0, 0.2, 0.0])
    with pytest.raises(FewcellsError):
        uncertainty(p, "variance")


def test_most_uncertain_balanced_takes_the_least_selected_guess():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    guesses = np.array([0, 0, 0, 1])
    assert most_uncertain(scores, 2).tolist() == [0, 1]
    picked = most_uncertain(scores, 2, guesses, {0: 3, 1: 1}, 2)
    assert picked.tolist() == [3, 0]


def _fake_network(ids):
    """Probabilities from a hash of the image id: a network that never sees labels."""
    values = np.array([(sum(map(ord, i)) * 37 % 100) / 100 for i in ids])
    return np.stack([values, 1 - values], axis=1)


@pytest.mark.parametrize("balanced", [False, True])
def test_uncertain_rounds_ignore_unselected_labels_and_are_deterministic(balanced):
    folds = _pool_folds()
    rows, start = first_round(folds, 0, 10)
    assert start["reason"].eq("start (random order)").all() and len(start) == 10
    args = dict(probabilities=_fake_network, score="entropy", balanced=balanced)
    after, picks = next_round(rows, 10, 16, 1, **args)
    assert len(picks) == 6 and set(picks["image_id"]).isdisjoint(start["image_id"])
    pool = after[after["role"] == "pool"].sort_values("rank")
    assert pool["image_id"].iloc[:16].tolist() == [*start["image_id"], *picks["image_id"]]
    permuted = _permute_unselected(rows, start["image_id"], seed=3)
    _, again = next_round(permuted, 10, 16, 1, **args)
    assert again.equals(picks)
    assert next_round(rows, 10, 16, 1, **args)[1].equals(picks)


def test_class_mix_counts_the_first_images():
    folds = _pool_folds()
    mix = class_mix(folds, [10, 20])
    assert set(mix.columns) == {"size", "fold", "class_name", "n_images"}
    assert mix.groupby(["size", "fold"])["n_images"].sum().unique().tolist() == [10, 20]


def test_image_features_are_label_free_statistics():
    images = np.random.default_rng(0).integers(0, 255, size=(5, 8, 8, 3), dtype=np.uint8)
    features = image_features(images)
    assert features.shape == (5, 3 * 7)
    assert np.allclose(standardise(features).mean(axis=0), 0)


def test_uncertain_with_diversity_spreads_the_step_over_the_shortlist():
    from fewcells.data.active import shortlist_size

    assert [shortlist_size(3, 50, d) for d in (0.0, 0.5, 0.75)] == [3, 6, 12]
    assert shortlist_size(3, 4, 0.5) == 4
    with pytest.raises(FewcellsError):
        shortlist_size(3, 50, 1.0)
    folds = _pool_folds()
    rows, start = first_round(folds, 0, 10)
    pool = rows[rows["role"] == "pool"].sort_values("rank")
    candidates = pool["image_id"].iloc[10:].tolist()
    ranking = most_uncertain(uncertainty(_fake_network(candidates)), len(candidates))
    top = [candidates[i] for i in ranking[:4]]
    rng = np.random.default_rng(0)
    # the two most uncertain are duplicates far out; the 3rd and 4th elsewhere; the rest
    # (selected images included) near the origin
    place = {top[0]: [12, 12], top[1]: [12, 12], top[2]: [-10, 10], top[3]: [0, -10]}
    table = {i: np.array(place.get(i, rng.normal(scale=0.1, size=2))) for i in pool["image_id"]}

    def features(ids):
        return np.array([table[i] for i in ids], dtype=float)

    args = dict(probabilities=_fake_network, score="entropy")
    _, plain = next_round(rows, 10, 12, 1, **args)
    assert plain["image_id"].tolist() == top[:2]
    _, mixed = next_round(rows, 10, 12, 1, diversity=0.5, features=features, **args)
    assert mixed["image_id"].tolist() == [top[0], top[2]]
    assert mixed["reason"].str.endswith("spread out").all()
    permuted = _permute_unselected(rows, start["image_id"], seed=4)
    _, again = next_round(permuted, 10, 12, 1, diversity=0.5, features=features, **args)
    assert again.equals(mixed)
    with pytest.raises(FewcellsError, match="features"):
        next_round(rows, 10, 12, 1, diversity=0.5, **args)


NETWORK_FEATURES = {"strategy": "diverse", "features": {"experiment": "tiny_random", "size": 6}}


def _network_case(tmp_path, folds=(0, 1)):
    """A dark/bright store with two folds and a random paper CNN per fold at n = 6."""
    from test_predict import write_network
    from test_train import CLASSES, make_store

    make_store(tmp_path, n_per_class=8)
    store = [tmp_path / "store" / "images.npy", tmp_path / "store" / "index.csv"]
    train = tmp_path / "train" / "n6"
    ckpts = [write_network(train / f"fold{k}", CLASSES, seed=k) / "model.ckpt" for k in folds]
    return pd.read_csv(tmp_path / "folds.csv"), store, ckpts


def _diverse(tmp_path, folds, selection, files, name):
    from fewcells.cli.selection_commands import apply_folds_selection

    out = tmp_path / name
    out.mkdir()
    ordered = apply_folds_selection(folds, {"selection": selection}, files, out)
    return ordered, pd.read_csv(out / "selection.csv")


def test_diverse_orders_the_pool_by_the_networks_hidden_layer(tmp_path):
    import torch

    from fewcells.data.store import open_store
    from fewcells.predict.predict import load_network
    from fewcells.training.models import to_model_input

    folds, store, ckpts = _network_case(tmp_path)
    _, picks = _diverse(tmp_path, folds, NETWORK_FEATURES, [*store, *ckpts], "net")
    images, index = open_store(tmp_path / "store")
    row = dict(zip(index["image_id"], index["row"], strict=True))
    for fold, ckpt in enumerate(ckpts):
        pool = sorted(folds[(folds["fold"] == fold) & (folds["role"] == "pool")]["image_id"])
        batch = torch.from_numpy(images[[row[image] for image in pool]])
        with torch.no_grad():
            hidden = load_network(ckpt.parent).model.embed(to_model_input(batch)).numpy()
        assert hidden.std(axis=0).max() > 0  # the hidden layer tells the images apart
        order, _ = k_center(hidden)
        assert picks[picks["fold"] == fold]["image_id"].tolist() == [pool[i] for i in order]
    _, stats = _diverse(tmp_path, folds, {"strategy": "diverse"}, store, "stats")
    assert stats["image_id"].tolist() != picks["image_id"].tolist()
    _, again = _diverse(tmp_path, folds, NETWORK_FEATURES, [*store, *ckpts], "again")
    assert again.equals(picks)  # deterministic


@pytest.mark.parametrize("balanced", [False, True])
def test_network_features_ignore_labels_of_unselected_images(tmp_path, balanced):
    folds, store, ckpts = _network_case(tmp_path, folds=(0,))
    folds = folds[folds["fold"] == 0]
    selection = {**NETWORK_FEATURES, "balanced": balanced}
    _, picks = _diverse(tmp_path, folds, selection, [*store, *ckpts], "net")
    first = picks["image_id"].iloc[:6].tolist()
    permuted = _permute_unselected(folds, first, seed=3)
    _, again = _diverse(tmp_path, permuted, selection, [*store, *ckpts], "permuted")
    assert again["image_id"].iloc[:6].tolist() == first


def test_a_fold_without_a_network_keeps_the_random_order(tmp_path):
    folds, store, ckpts = _network_case(tmp_path, folds=(0,))
    ordered, picks = _diverse(tmp_path, folds, NETWORK_FEATURES, [*store, *ckpts], "net")
    assert set(picks["fold"]) == {0}
    assert ordered[ordered["fold"] == 1].equals(folds[folds["fold"] == 1])


def test_network_features_need_the_named_networks(tmp_path):
    folds, store, ckpts = _network_case(tmp_path, folds=(0,))
    wrong_size = {**NETWORK_FEATURES, "features": {"experiment": "tiny_random", "size": 9}}
    with pytest.raises(FewcellsError, match="replicate 0 of size 9"):
        _diverse(tmp_path, folds, wrong_size, [*store, *ckpts], "a")
    with pytest.raises(FewcellsError, match="needs the networks"):
        _diverse(tmp_path, folds, NETWORK_FEATURES, store, "b")
    with pytest.raises(FewcellsError, match="features is stats"):
        _diverse(tmp_path, folds, {"strategy": "diverse"}, [*store, *ckpts], "c")


def test_diverse_orders_every_fold_by_a_pretrained_networks_hidden_layer(tmp_path):
    from test_predict import write_network

    from fewcells.data.active import network_embeddings

    def pretrained(name, classes, seed):
        """A pretraining's folder: model.ckpt alone (written as a training writes it)."""
        folder = tmp_path / "pretrained" / name
        folder.mkdir(parents=True)
        trained = write_network(tmp_path / f"{name}_training" / "fold0", classes, seed)
        (trained / "model.ckpt").rename(folder / "model.ckpt")
        return folder

    folds, store, _ = _network_case(tmp_path, folds=())
    source = pretrained("source", ["a", "b", "c"], seed=7)
    selection = {"strategy": "diverse", "features": {"pretrained": "source"}}
    _, picks = _diverse(tmp_path, folds, selection, [*store, source / "model.ckpt"], "pre")
    embeddings = network_embeddings(source, tmp_path / "store")
    for fold in (0, 1):
        pool = sorted(folds[(folds["fold"] == fold) & (folds["role"] == "pool")]["image_id"])
        order, _ = k_center(embeddings(pool))
        assert picks[picks["fold"] == fold]["image_id"].tolist() == [pool[i] for i in order]
    other = pretrained("other", ["a", "b"], seed=8)
    two = [*store, source / "model.ckpt", other / "model.ckpt"]
    with pytest.raises(FewcellsError, match="takes one pretrained network, not 2"):
        _diverse(tmp_path, folds, selection, two, "two")
