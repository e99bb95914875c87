"""The predict stage: preprocessing parity with training, labels optional, soft voting,
bad images, set-aside images, and a whole prediction with its external validation."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fewcells.data.store import build_store, open_store
from fewcells.errors import FewcellsError
from fewcells.predict.images import image_batches, image_table, prepare_image, rescale_image
from fewcells.predict.predict import load_network, map_labels, run_prediction, vote_networks
from fewcells.predict.set_aside import set_aside_images, without_set_aside, write_set_aside
from fewcells.training.module import CellClassifier

SIZE = 190  # the paper CNN's smallest input: fast


def _cell(rng: np.random.Generator, shape=(210, 200)) -> np.ndarray:
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def write_images(root: Path, labels: dict[str, int], seed: int = 0) -> list[Path]:
    """PBC layout root/<label>/<label>_<i>.png, RGBA for every second image."""
    rng = np.random.default_rng(seed)
    paths = []
    for label, count in labels.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = Image.fromarray(_cell(rng, (200 + 7 * i, 180 + 5 * i)))
            if i % 2:
                image = image.convert("RGBA")
                image.putalpha(200)
            path = root / label / f"{label}_{i}.png"
            image.save(path)
            paths.append(path)
    return paths


def write_network(
    directory: Path, classes: list[str], seed: int, test_ids: list[str] | None = None
) -> Path:
    """A (random) trained network's folder: model.ckpt as training writes it, and a
    predictions.csv with test and validation rows."""
    directory.mkdir(parents=True)
    torch.manual_seed(seed)
    module = CellClassifier(
        {"name": "paper_cnn"}, len(classes), SIZE, {"fused_cpu_kernel": False}, classes, seed
    )
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        directory / "model.ckpt",
    )
    rng = np.random.default_rng(seed)
    ids = test_ids or [f"t{i}" for i in range(12)]
    rows = []
    for split in ("test", "val"):
        for i, image_id in enumerate(ids):
            p = rng.dirichlet(np.ones(len(classes)))
            rows.append(
                {"fold": int(directory.name.removeprefix("fold")), "size": 10, "replicate": 0,
                 "image_id": image_id,
                 "target": i % len(classes), "split": split,
                 **{f"p_{c}": p[k] for k, c in enumerate(classes)}}
            )  # fmt: skip
    pd.DataFrame(rows).to_csv(directory / "predictions.csv", index=False)
    return directory


def test_prediction_reads_images_exactly_as_the_training_store(tmp_path):
    paths = write_images(tmp_path / "img", {"a": 3, "b": 2})
    kept = pd.DataFrame(
        {"image_id": [f"i{i}" for i in range(len(paths))], "path": map(str, paths), "label": "a"}
    )
    for fit in ("pad", "resize"):
        build_store(kept, tmp_path / f"store_{fit}", SIZE, fit)
        stored, _ = open_store(tmp_path / f"store_{fit}")
        batches = list(image_batches([str(p) for p in paths], SIZE, fit, batch_size=2))
        assert [len(b) for b in batches] == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate(batches), stored)


def test_rescale_changes_the_pixel_size_before_the_fit(tmp_path):
    image = _cell(np.random.default_rng(1), (100, 80))
    assert rescale_image(image, 1.0) is image
    assert rescale_image(image, 2.0).shape == (200, 160, 3)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    assert prepare_image(str(path), SIZE, "pad", rescale=2.0).shape == (SIZE, SIZE, 3)


def test_soft_vote_is_the_mean_and_spread_the_sd_of_the_predicted_class():
    probabilities = np.array(
        [
            [[0.9, 0.1], [0.4, 0.6]],
            [[0.7, 0.3], [0.6, 0.4]],
            [[0.8, 0.2], [0.2, 0.8]],
        ]
    )
    mean, spread = vote_networks(probabilities)
    np.testing.assert_allclose(mean, [[0.8, 0.2], [0.4, 0.6]])
    # image 0: class 0 predicted, p = 0.9, 0.7, 0.8 -> population sd sqrt(2/300)
    # image 1: class 1 predicted, p = 0.6, 0.4, 0.8 -> sd sqrt(((0)^2+0.2^2+0.2^2)/3)
    np.testing.assert_allclose(spread, [np.sqrt(0.02 / 3), np.sqrt(0.08 / 3)])
    single_mean, single_spread = vote_networks(probabilities[:1])
    np.testing.assert_allclose(single_mean, probabilities[0])
    assert (single_spread == 0).all()


def test_labels_are_optional(tmp_path):
    write_images(tmp_path / "cells" / "sub", {"x": 3})
    folder = image_table({"kind": "folder", "source": {"path": str(tmp_path / "cells")}}, tmp_path)
    assert len(folder) == 3 and (folder["label"] == "").all()
    pd.DataFrame({"path": ["sub/x/x_0.png", "sub/x/x_1.png"]}).to_csv(
        tmp_path / "cells" / "list.csv", index=False
    )
    table = image_table(
        {"kind": "csv", "source": {"path": str(tmp_path / "cells")}, "labels_csv": "list.csv"},
        tmp_path,
    )
    assert len(table) == 2 and (table["label"] == "").all()
    names = ["healthy", "blast"]
    assert map_labels(table["label"], None, names).isna().all()
    everything = map_labels(table["label"], [{"name": "healthy", "labels": ["*"]}], names)
    assert list(everything) == ["healthy", "healthy"]


def test_labels_map_to_the_experiments_classes():
    labels = pd.Series(["ig", "lymphocyte", "", "neutrophil"])
    classes = [{"name": "normal", "labels": ["*"]}, {"name": "ig", "labels": ["ig"]}]
    assert list(map_labels(labels, classes, ["normal", "ig"])) == [
        "ig",
        "normal",
        "normal",
        "normal",
    ]
    only = [{"name": "ig", "labels": ["ig", "not_in_the_set"]}]
    assert list(map_labels(labels, only, ["normal", "ig"]).isna()) == [False, True, True, True]
    assert list(map_labels(labels, None, ["ig", "lymphocyte"]).fillna("-")) == [
        "ig",
        "lymphocyte",
        "-",
        "-",
    ]
    with pytest.raises(FewcellsError, match="not classes of the experiment"):
        map_labels(labels, [{"name": "blast", "labels": ["*"]}], ["normal", "ig"])


def test_bad_images_are_an_error_or_skipped(tmp_path):
    write_images(tmp_path / "set", {"a": 2, "b": 2})
    (tmp_path / "set" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    images = {"kind": "pbc", "source": {"path": str(tmp_path / "set")}}
    with pytest.raises(FewcellsError, match="broken.png"):
        image_table(images, tmp_path)
    table = image_table({**images, "on_bad_image": "skip"}, tmp_path)
    assert len(table) == 4 and not table["path"].str.contains("broken").any()


def test_set_aside_images_are_per_label_seeded_and_left_out_of_the_folds(tmp_path):
    kept = pd.DataFrame(
        {
            "image_id": [f"{c}/{i}" for c in "abc" for i in range(6)],
            "label": [c for c in "abc" for _ in range(6)],
            "path": [str(tmp_path / f"{c}{i}.png") for c in "abc" for i in range(6)],
        }
    )
    for path in kept["path"]:
        Path(path).write_bytes(b"x")
    aside = set_aside_images(kept, 2, seed=3)
    assert aside["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    pd.testing.assert_frame_equal(
        aside, set_aside_images(kept.sample(frac=1, random_state=1), 2, 3)
    )
    rest = without_set_aside(kept, 2, 3)
    assert len(rest) == 12 and not set(rest["image_id"]) & set(aside["image_id"])
    assert without_set_aside(kept, None, 3) is kept
    with pytest.raises(FewcellsError, match="that many images or fewer"):
        set_aside_images(kept, 6, 0)
    written = write_set_aside(kept, 2, 3, tmp_path / "aside")
    table = pd.read_csv(tmp_path / "aside" / "set_aside.csv")
    assert list(table["image_id"]) == list(written["image_id"])
    labels = pd.read_csv(tmp_path / "aside" / "images" / "labels.csv")
    assert all((tmp_path / "aside" / "images" / p).is_symlink() for p in labels["path"])


def test_a_prediction_with_an_ensemble_and_external_validation(tmp_path):
    classes = ["normal", "ig"]
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "classes.json").write_text(
        json.dumps({"classes": classes, "task": "binary"})
    )
    dirs = [write_network(tmp_path / "train" / "n10" / f"fold{k}", classes, k) for k in (0, 1)]
    write_images(tmp_path / "set", {"ig": 3, "lymphocyte": 3})
    out = tmp_path / "predict" / "ext"
    predictions = run_prediction(
        train_dirs=dirs,
        classes_json=tmp_path / "folds" / "classes.json",
        images={"kind": "pbc", "source": {"path": str(tmp_path / "set")}},
        out_dir=out,
        fit="resize",
        classes=[{"name": "normal", "labels": ["*"]}, {"name": "ig", "labels": ["ig"]}],
        experiment="toy",
        name="ext",
        sheet_images=2,
        batch_size=4,
    )
    assert len(predictions) == 6
    written = pd.read_csv(out / "predictions.csv")
    assert list(written.columns[:5]) == ["size", "image_id", "path", "label", "class_name"]
    assert {"p_normal", "p_ig", "predicted", "certainty", "spread", "n_networks"} <= set(
        written.columns
    )
    # the ensemble is the mean of the networks' own outputs on the prepared images
    networks = [load_network(d) for d in dirs]
    images = np.stack([prepare_image(p, SIZE, "resize") for p in written["path"]])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        each = np.stack([torch.softmax(n.model(x), 1).numpy() for n in networks])
    np.testing.assert_allclose(written[["p_normal", "p_ig"]], each.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(written["spread"], vote_networks(each)[1], atol=1e-6)
    stored = np.load(out / "network_probabilities.npy")
    np.testing.assert_allclose(stored, each, atol=1e-6)
    metrics = pd.read_csv(out / "external_metrics.csv")
    assert set(zip(metrics["set"], metrics["model"], strict=True)) == {
        ("internal", "network"),
        ("external", "network"),
        ("external", "ensemble"),
    }
    ensemble = metrics[metrics["model"] == "ensemble"].iloc[0]
    assert ensemble["n_positive"] == 3 and ensemble["n_negative"] == 3
    assert {"val_threshold", "val_sensitivity", "val_specificity", "positive_rate"} <= set(
        metrics.columns
    )
    text = (out / "external.md").read_text()
    assert "| ROC-AUC |" in text and "internal (test folds)" in text
    for name in ("contact_sheet.png", "external_confusion.png", "predict_info.json"):
        assert (out / name).stat().st_size > 0


def test_a_prediction_without_labels_writes_no_external_numbers(tmp_path):
    classes = ["healthy", "blast"]
    (tmp_path / "classes.json").write_text(json.dumps({"classes": classes, "task": "binary"}))
    directory = write_network(tmp_path / "train" / "n10" / "fold3", classes, 5)
    write_images(tmp_path / "cells", {"x": 3})
    out = tmp_path / "out"
    run_prediction(
        train_dirs=[directory],
        classes_json=tmp_path / "classes.json",
        images={"kind": "folder", "source": {"path": str(tmp_path / "cells")}},
        out_dir=out,
        fit="pad",
        sheet_images=1,
    )
    written = pd.read_csv(out / "predictions.csv")
    assert written["class_name"].isna().all() and (written["spread"] == 0).all()
    metrics = pd.read_csv(out / "external_metrics.csv")
    assert set(metrics["set"]) == {"internal"}
    assert "no external validation" in (out / "external.md").read_text()


def test_contact_sheet_names_keep_the_file_name():
    from fewcells.predict.sheet import short_name

    assert short_name("pbc/neutrophil/neutrophil_0007.jpg") == "neutrophil_0007.jpg"
    long = short_name("x/" + "a" * 20 + "_0123456789.tiff")
    assert len(long) == 24 and long.endswith("456789.tiff") and long.startswith("aaaa")
