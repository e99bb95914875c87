"""Snakemake runs of the predict entries: adding one trains nothing; set-aside images."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow

SHIFTED = {
    "name": "shifted",
    "experiment": "tiny_binary",
    "size": [6, 12],
    "images": {
        "kind": "demo",
        "demo": {"seed": 2, "n_per_class": 3, "colour_shift": [1.1, 0.9, 1]},
    },
    "sheet_images": 2,
}


def _config(predict=None, set_aside=None) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    experiment = config["experiments"]["tiny_binary"]
    experiment["folds"]["run_folds"] = [0]
    experiment["explain"] = {"sizes": [12]}
    experiment["tsne"] = {"sizes": [12]}
    experiment["plots"] = {"dpi": 60}
    if set_aside:
        experiment["folds"]["set_aside"] = set_aside
    if predict:
        config["predict"] = predict
    return config


def _write(workdir: Path, name: str, config: dict) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("predict")
    snakemake(workdir, "--cores", "2", "--configfile", _write(workdir, "c.yaml", _config()))
    return workdir


def test_adding_a_predict_entry_trains_nothing(trained):
    config = _write(trained, "predict.yaml", _config(predict=[SHIFTED]))
    assert set(planned_jobs(trained, "--configfile", config)) - {"all"} == {"predict"}
    snakemake(trained, "--cores", "2", "--configfile", config)
    out = trained / "results" / "tiny_binary" / "predict" / "shifted"
    predictions = pd.read_csv(out / "predictions.csv")
    assert sorted(predictions["size"].unique()) == [6, 12]
    assert len(predictions) == 2 * 5 * 3  # sizes x demo classes x images per class
    assert (predictions["n_networks"] == 1).all()  # run_folds [0]: one network per size
    metrics = pd.read_csv(out / "external_metrics.csv")
    assert {"internal", "external"} == set(metrics["set"])
    assert "| ROC-AUC |" in (out / "external.md").read_text()
    info = json.loads((out / "predict_info.json").read_text())
    assert info["images"] == 15 and info["networks"] == 2
    assert set(planned_jobs(trained, "--configfile", config)) == set()


def test_set_aside_images_are_never_in_a_fold_and_are_predicted(tmp_path):
    entry = {
        "name": "aside",
        "experiment": "tiny_binary",
        "images": {"kind": "csv", "source": {"path": "results/tiny_binary/set_aside/images"}},
        "sheet_images": 1,
    }
    config = _write(tmp_path, "c.yaml", _config(predict=[entry], set_aside=2))
    snakemake(tmp_path, "--cores", "2", "--configfile", config)
    results = tmp_path / "results" / "tiny_binary"
    aside = pd.read_csv(results / "set_aside" / "set_aside.csv")
    assert aside["label"].value_counts().to_dict() == dict.fromkeys(
        ["blast", "eosinophil", "lymphocyte", "monocyte", "neutrophil"], 2
    )
    folds = pd.read_csv(results / "folds" / "folds.csv")
    assert not set(folds["image_id"]) & set(aside["image_id"])
    predictions = pd.read_csv(results / "predict" / "aside" / "predictions.csv")
    assert len(predictions) == len(aside)
    assert predictions["class_name"].notna().all()
