"""Tests of fewcells.analysis.merged_classes: P_group = sum of class probabilities, its
ROC-AUC by hand."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from fewcells.analysis import merged_classes as merged
from fewcells.errors import FewcellsError

CLASSES = ["a", "b", "c"]
# Two folds of four test images. Group g = a + b.
#   fold 0: P_g = 0.8 (a), 0.4 (b) in the group; 0.6, 0.2 (c) outside:
#           pairs (in, out) ordered right: 0.8>0.6, 0.8>0.2, 0.4>0.2, not 0.4>0.6 -> AUC 3/4;
#           at P_g >= 0.5: sensitivity 1/2 (0.8 yes, 0.4 no), specificity 1/2 (0.2 yes).
#   fold 1: P_g = 0.8, 0.7 in; 0.3, 0.1 out -> AUC 1.
# Class b alone in fold 0 (p_b 0.3 for the b image vs 0.3, 0.4, 0.1) has AUC 1.5/3 = 0.5,
# so summing (not taking one class) is what the test checks.
ROWS = [
    # fold, image, target, p_a, p_b, p_c
    (0, "i1", 0, 0.5, 0.3, 0.2),
    (0, "i2", 1, 0.1, 0.3, 0.6),
    (0, "i3", 2, 0.2, 0.4, 0.4),
    (0, "i4", 2, 0.1, 0.1, 0.8),
    (1, "i5", 0, 0.6, 0.2, 0.2),
    (1, "i6", 2, 0.2, 0.1, 0.7),
    (1, "i7", 1, 0.2, 0.5, 0.3),
    (1, "i8", 2, 0.05, 0.05, 0.9),
]


def hand_predictions(size: int = 10) -> pd.DataFrame:
    table = pd.DataFrame(ROWS, columns=["fold", "image_id", "target", "p_a", "p_b", "p_c"])
    validation = table.assign(split="val", p_a=0.9, p_b=0.05, p_c=0.05)  # must be ignored
    table = pd.concat([table.assign(split="test"), validation], ignore_index=True)
    return table.assign(size=size)[["fold", "size", "image_id", "target", "split", *CLASSES_P]]


CLASSES_P = [f"p_{c}" for c in CLASSES]


def test_merged_auc_matches_the_hand_computed_example():
    metrics = merged.merged_metrics(hand_predictions(), CLASSES, {"g": ["a", "b"]})
    by_fold = metrics.set_index("fold")
    assert by_fold.loc[0, "roc_auc"] == pytest.approx(0.75)
    assert by_fold.loc[1, "roc_auc"] == pytest.approx(1.0)
    assert by_fold.loc[0, "sensitivity"] == pytest.approx(0.5)
    assert by_fold.loc[0, "specificity"] == pytest.approx(0.5)
    assert by_fold.loc[0, "n_positive"] == 2 and by_fold.loc[0, "n_test"] == 4
    single = merged.merged_metrics(hand_predictions(), CLASSES, {"b": ["b"]})
    assert single.set_index("fold").loc[0, "roc_auc"] == pytest.approx(0.5)
    summary = merged.merged_summary(metrics).iloc[0]
    assert summary["roc_auc_mean"] == pytest.approx(0.875)
    assert summary["roc_auc_sd"] == pytest.approx(math.sqrt(2 * 0.125**2))
    assert summary["n_folds"] == 2


def test_group_predictions_sum_the_members():
    table = merged.group_predictions(hand_predictions(), CLASSES, ["a", "b"])
    test = table[table["split"] == "test"].set_index("image_id")
    assert test.loc["i3", f"p_{merged.IN_GROUP}"] == pytest.approx(0.6)
    assert test.loc["i3", f"p_{merged.OUTSIDE}"] == pytest.approx(0.4)
    assert test["target"].tolist() == [1, 1, 0, 0, 1, 0, 1, 0]


def _write(tmp_path, pred: pd.DataFrame) -> tuple[list, object]:
    files = []
    for (size, fold), group in pred.groupby(["size", "fold"]):
        path = tmp_path / f"n{size}" / f"fold{fold}" / "predictions.csv"
        path.parent.mkdir(parents=True)
        group.to_csv(path, index=False)
        files.append(path)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": CLASSES, "task": "multiclass"}))
    return files, classes


def test_evaluate_merged_writes_tables_and_figure(tmp_path):
    pred = pd.concat([hand_predictions(10), hand_predictions(20)], ignore_index=True)
    files, classes = _write(tmp_path, pred)
    groups = {"g": ["a", "b"], "only_c": ["c"]}
    merged.evaluate_merged(files, classes, groups, tmp_path / "out", experiment="x")
    out = tmp_path / "out"
    for name in ("merged_metrics.csv", "merged_summary.csv", "merged_roc.csv", "merged.md"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "merged_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "merged_summary.csv")
    assert len(summary) == 4 and set(summary["group"]) == {"g", "only_c"}
    assert "0.875 ± 0.177" in (out / "merged.md").read_text()


def test_unknown_class_in_a_group_names_the_key(tmp_path):
    files, classes = _write(tmp_path, hand_predictions())
    with pytest.raises(FewcellsError, match=r"experiments\.x\.evaluate\.merged\.g: unknown class"):
        merged.evaluate_merged(files, classes, {"g": ["a", "zz"]}, tmp_path / "o", experiment="x")
    with pytest.raises(FewcellsError, match="takes every class"):
        merged.evaluate_merged(files, classes, {"g": CLASSES}, tmp_path / "o", experiment="x")
    assert not (tmp_path / "o").exists()
