"""Tests of fewcells.analysis.ensemble: soft voting by hand, metrics, tests and outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from fewcells.analysis import ensemble
from fewcells.errors import FewcellsError

CLASSES = ["healthy", "blast"]
TARGETS = [1, 1, 0, 0]
# Member p_blast of four test images (two blasts first). By hand:
#   A: blasts 0.9, 0.4 vs healthy 0.6, 0.2 -> 3 of 4 pairs ordered right, ROC-AUC 0.75
#   B: blasts 0.5, 0.8 vs healthy 0.2, 0.6 -> 3 of 4, ROC-AUC 0.75
#   mean: 0.7, 0.6 vs 0.4, 0.4 -> ROC-AUC 1; at p >= 0.5 every image right (accuracy 1),
#   while A gets 2 of 4 right (0.9 and 0.2; accuracy 0.5) and B 3 of 4 (accuracy 0.75).
P_BLAST = {"A": [0.9, 0.4, 0.6, 0.2], "B": [0.5, 0.8, 0.2, 0.6]}
ENSEMBLE_P_BLAST = [0.7, 0.6, 0.4, 0.4]


def member(name: str, folds=(0,), extra_size: int | None = None, shift: int = 0) -> pd.DataFrame:
    rows = []
    jobs = [(10, fold) for fold in folds] + ([(extra_size, 0)] if extra_size else [])
    for size, fold in jobs:
        for i, (target, p) in enumerate(zip(TARGETS, P_BLAST[name], strict=True)):
            image = f"f{fold}_img{i + shift}"
            for split in ("test", "val"):
                row = {"fold": fold, "size": size, "image_id": image, "target": target}
                row.update(split=split, p_healthy=1 - p, p_blast=p)
                rows.append(row)
    return pd.DataFrame(rows)


def test_soft_vote_matches_the_hand_computed_mean():
    voted = ensemble.soft_vote({"A": member("A"), "B": member("B", extra_size=20)}, CLASSES)
    assert voted["size"].unique().tolist() == [10]  # size 20 only in B: left out
    assert (voted["split"] == "test").all() and len(voted) == 4
    assert voted["p_blast"].tolist() == pytest.approx(ENSEMBLE_P_BLAST)
    assert (voted["p_healthy"] + voted["p_blast"]).tolist() == pytest.approx([1.0] * 4)


def test_ensemble_metrics_match_the_hand_computed_example():
    metrics = ensemble.model_metrics({"A": member("A"), "B": member("B")}, CLASSES, "binary")
    by_model = metrics.set_index("model")
    assert by_model.loc["A", "roc_auc"] == pytest.approx(0.75)
    assert by_model.loc["B", "roc_auc"] == pytest.approx(0.75)
    assert by_model.loc["ensemble", "roc_auc"] == pytest.approx(1.0)
    assert by_model.loc["ensemble", "accuracy"] == pytest.approx(1.0)
    assert by_model.loc["A", "accuracy"] == pytest.approx(0.5)
    assert by_model.loc["B", "accuracy"] == pytest.approx(0.75)


def test_multiclass_soft_vote_and_macro_f1():
    classes = ["x", "y", "z"]
    rows = {
        # A votes y for image 0 (truth x), B votes x strongly: the mean picks x.
        "A": [[0.3, 0.4, 0.3], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        "B": [[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
    }
    predictions = {
        name: pd.DataFrame(
            [
                {"fold": 0, "size": 6, "image_id": f"i{i}", "target": i, "split": "test"}
                | {f"p_{c}": p for c, p in zip(classes, probs, strict=True)}
                for i, probs in enumerate(table)
            ]
        )
        for name, table in rows.items()
    }
    metrics = ensemble.model_metrics(predictions, classes, "multiclass").set_index("model")
    # A: predictions y, y, z for truths x, y, z -> F1 x 0, y 2/3, z 1 -> macro 5/9
    assert metrics.loc["A", "macro_f1"] == pytest.approx(5 / 9)
    assert metrics.loc["B", "macro_f1"] == pytest.approx(1.0)
    assert metrics.loc["ensemble", "macro_f1"] == pytest.approx(1.0)


def test_members_with_different_test_images_are_refused():
    with pytest.raises(FewcellsError, match="different test images"):
        ensemble.soft_vote({"A": member("A"), "B": member("B", shift=1)}, CLASSES)
    with pytest.raises(FewcellsError, match="share no"):
        ensemble.soft_vote({"A": member("A"), "B": member("B", folds=(1,))}, CLASSES)


def _files(tmp_path, name: str, pred: pd.DataFrame) -> list:
    files = []
    for (size, fold), group in pred.groupby(["size", "fold"]):
        path = tmp_path / name / f"n{size}" / f"fold{fold}" / "predictions.csv"
        path.parent.mkdir(parents=True)
        group.to_csv(path, index=False)
        files.append(str(path))
    return files


def test_outputs_and_best_member_tests(tmp_path):
    folds = range(5)
    members = {name: _files(tmp_path, name, member(name, folds)) for name in ("A", "B")}
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": CLASSES, "task": "binary"}))
    out = tmp_path / "out"
    ensemble.ensemble_experiments(members, classes, out, title="ab")
    for name in ("predictions.csv", "metrics.csv", "summary.csv", "wilcoxon.csv"):
        assert (out / f"ensemble_{name}").stat().st_size > 0, name
    assert (out / "ensemble.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "ensemble_summary.csv").set_index("model")
    assert summary.loc["ensemble", "roc_auc_mean"] == pytest.approx(1.0)
    assert summary.loc["ensemble", "n_folds"] == 5
    tests = pd.read_csv(out / "ensemble_wilcoxon.csv").iloc[0]
    # every fold: ensemble 1.0, best member (A, first on the tie) 0.75 -> p = 2 / 2^5
    assert tests["experiment_a"] == "ensemble" and tests["experiment_b"] == "A"
    assert tests["mean_difference"] == pytest.approx(0.25)
    assert tests["p_value"] == pytest.approx(0.0625)
    assert "| 10 | A | 5 | +0.250 | 0.0625 |" in (out / "ensemble.md").read_text()


def test_cli_ensemble(tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": CLASSES, "task": "binary"}))
    command = [sys.executable, "-m", "fewcells.cli", "ensemble", "--classes", str(classes)]
    for name in ("A", "B"):
        command += ["--member", name, *_files(tmp_path, name, member(name, range(3)))]
    command += ["--out", str(tmp_path / "cli")]
    subprocess.run(command, check=True, capture_output=True)
    assert (tmp_path / "cli" / "ensemble.png").exists()
