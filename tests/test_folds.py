from __future__ import annotations

import pandas as pd
import pytest

from fewcells.data.folds import assign_folds, map_classes, training_set
from fewcells.errors import FewcellsError


def _kept(n_a=130, n_b=120, extra=0):
    ids = [f"a{i:03d}" for i in range(n_a)] + [f"b{i:03d}" for i in range(n_b)]
    labels = ["healthy"] * n_a + ["blast"] * n_b
    ids += [f"c{i:03d}" for i in range(extra)]
    labels += ["mono"] * extra
    return pd.DataFrame({"image_id": ids, "label": labels})


CLASSES = [{"name": "healthy", "labels": ["healthy"]}, {"name": "blast", "labels": ["blast"]}]
SIZES = list(range(10, 201, 10))


def test_paper_layout_every_image_tested_once():
    folds, names = assign_folds(_kept(), CLASSES, k=10, n_val=25, sizes=SIZES, seed=0)
    assert names == ["healthy", "blast"]
    test = folds[folds.role == "test"]
    assert test.image_id.is_unique and len(test) == 250
    per_fold = folds.groupby(["fold", "role"]).size().unstack()
    assert (per_fold["test"] == 25).all() and (per_fold["val"] == 25).all()
    assert (per_fold["pool"] == 200).all()
    for fold in range(10):
        roles = folds[folds.fold == fold].groupby("image_id").role.nunique()
        assert (roles == 1).all() and len(roles) == 250  # test, val, pool disjoint


def test_nested_and_balanced_sizes():
    folds, _ = assign_folds(_kept(), CLASSES, k=10, n_val=25, sizes=SIZES, seed=1)
    for fold in (0, 7):
        previous = set()
        for size in SIZES:
            train = training_set(folds, fold, size)
            ids = set(train.image_id)
            assert len(ids) == size and previous <= ids
            previous = ids
            counts = train.class_name.value_counts()
            if size <= 180:  # both classes still have images left in the pool
                assert abs(counts["healthy"] - counts["blast"]) <= 1


def test_same_seed_same_folds_other_seed_differs():
    a, _ = assign_folds(_kept(), CLASSES, k=10, n_val=25, sizes=SIZES, seed=3)
    b, _ = assign_folds(_kept(), CLASSES, k=10, n_val=25, sizes=SIZES, seed=3)
    c, _ = assign_folds(_kept(), CLASSES, k=10, n_val=25, sizes=SIZES, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_balanced_fixed_test_set():
    folds, _ = assign_folds(_kept(), CLASSES, k=4, n_val=20, sizes=[10], seed=0, test_size=60)
    tests = [set(folds[(folds.fold == f) & (folds.role == "test")].image_id) for f in range(4)]
    assert all(t == tests[0] for t in tests) and len(tests[0]) == 60
    counts = folds[(folds.fold == 0) & (folds.role == "test")].class_name.value_counts()
    assert counts["healthy"] == counts["blast"] == 30


def test_rest_class_and_targets():
    classes = [{"name": "other", "labels": ["*"]}, {"name": "blast", "labels": ["blast"]}]
    folds, names = assign_folds(_kept(extra=30), classes, k=5, n_val=10, sizes=[10], seed=0)
    assert names == ["other", "blast"]
    mono = folds[folds.label == "mono"]
    assert (mono.class_name == "other").all() and (mono.target == 0).all()
    assert (folds[folds.label == "blast"].target == 1).all()


def test_errors_name_the_key():
    with pytest.raises(FewcellsError, match="folds.sizes"):
        assign_folds(_kept(), CLASSES, k=10, n_val=25, sizes=[10, 201], seed=0)
    with pytest.raises(FewcellsError, match="classes"):
        assign_folds(
            _kept(),
            [{"name": "x", "labels": ["nope"]}, CLASSES[1]],
            k=10,
            n_val=5,
            sizes=[10],
            seed=0,
        )
    with pytest.raises(FewcellsError, match="folds.n_val"):
        assign_folds(_kept(extra=30), None, k=5, n_val=2, sizes=[10], seed=0)
    with pytest.raises(FewcellsError, match="folds.k"):
        assign_folds(_kept(n_b=5), CLASSES, k=10, n_val=5, sizes=[10], seed=0)


def test_map_classes_without_spec_uses_labels():
    mapped, names = map_classes(pd.Series(["b", "a", "b"]), None)
    assert names == ["a", "b"] and list(mapped) == ["b", "a", "b"]
