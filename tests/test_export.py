"""Export: TorchScript and ONNX files that give the checkpoint's probabilities without
fewcells, and the model card's fields."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from test_predict import SIZE, write_network

from fewcells.predict.export import export_networks
from fewcells.predict.images import prepare_image
from fewcells.predict.predict import load_network

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

CLASSES = ["normal", "ig"]
# Reads the exported files with plain torch and onnxruntime only: no fewcells import.
WITHOUT_FEWCELLS = """
import sys, numpy as np, torch, onnxruntime
images = np.load(sys.argv[2])
model = torch.jit.load(sys.argv[1] + "/model.pt")
with torch.no_grad():
    script = model(torch.from_numpy(images)).numpy()
session = onnxruntime.InferenceSession(
    sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"]
)
onnx = session.run(None, {"images": images})[0]
assert "fewcells" not in sys.modules
np.save(sys.argv[3], np.stack([script, onnx]))
"""


@pytest.fixture
def real_images(real_data) -> np.ndarray:
    """Six real PBC cells, prepared as the networks see them (resize to SIZE)."""
    paths = sorted((real_data / "PBC_subset").glob("*/*.jpg"))[::500][:6]
    if len(paths) < 2:
        pytest.skip("PBC_subset images not found")
    return np.stack([prepare_image(str(p), SIZE, "resize") for p in paths])


def _checkpoint_probabilities(dirs, images) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return np.mean([torch.softmax(load_network(d).model(x), 1).numpy() for d in dirs], 0)


@pytest.mark.realdata
@pytest.mark.parametrize("n_networks", [1, 3])
def test_exported_files_give_the_checkpoints_probabilities(tmp_path, real_images, n_networks):
    dirs = [
        write_network(tmp_path / "train" / "n10" / f"fold{k}", CLASSES, k)
        for k in range(n_networks)
    ]
    (tmp_path / "classes.json").write_text(json.dumps({"classes": CLASSES, "task": "binary"}))
    export_networks(dirs, tmp_path / "classes.json", tmp_path / "out", experiment="x", fit="resize")
    np.save(tmp_path / "images.npy", real_images)
    subprocess.run(
        [sys.executable, "-c", WITHOUT_FEWCELLS, str(tmp_path / "out"),
         str(tmp_path / "images.npy"), str(tmp_path / "exported.npy")],
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    script, onnx = np.load(tmp_path / "exported.npy")
    expected = _checkpoint_probabilities(dirs, real_images)
    np.testing.assert_allclose(script, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx, expected, atol=1e-5, rtol=0)


def test_model_card_fields(tmp_path):
    dirs = [write_network(tmp_path / "train" / "n10" / f"fold{k}", CLASSES, k) for k in (0, 2)]
    (tmp_path / "classes.json").write_text(json.dumps({"classes": CLASSES, "task": "binary"}))
    pd.DataFrame({"image_id": ["a", "b", "c"], "path": "p"}).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    export_networks(
        dirs,
        tmp_path / "classes.json",
        tmp_path / "out",
        experiment="pbc_ig_binary",
        fit="resize",
        dataset="pbc",
        manifest=tmp_path / "manifest.csv",
    )
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["classes"] == CLASSES and card["positive_class"] == "ig"
    assert card["input"]["image_size"] == SIZE and card["input"]["fit"] == "resize"
    assert card["input"]["dtype"] == "uint8" and "255" in card["input"]["scaling"]
    data = card["training_data"]
    assert data["dataset"] == "pbc" and data["manifest_images"] == 3
    assert len(data["manifest_sha256"]) == 64
    assert data["n"] == [10] and data["folds"] == [0, 2]
    assert set(card["metrics"]["test_folds_mean"]) >= {"roc_auc", "sensitivity", "specificity"}
    assert len(card["metrics"]["per_network"]) == 2
    assert {"fewcells_version", "git_commit", "torch_version"} <= set(card["software"])
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "model.pt",
        "model.onnx",
        "model_card.json",
    }
