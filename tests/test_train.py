import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from fewcells.cli import main
from fewcells.errors import FewcellsError
from fewcells.training import run
from fewcells.training.datamodule import CellDataModule, balanced_positions
from fewcells.training.kernels import loader
from fewcells.training.models import MIN_IMAGE_SIZE, build_model
from fewcells.training.module import CellClassifier
from fewcells.training.protocol import DEFAULT_TRAIN_CONFIG, fill_train_defaults
from fewcells.training.run import run_training

IMAGE_SIZE = MIN_IMAGE_SIZE  # the smallest input the paper's six conv+pool blocks accept
CLASSES = ["dark", "bright"]
MODEL_CFG = {"name": "paper_cnn", "hidden": 32}
# Adam at a higher lr, no rotation: the dark/bright task is learnt in a few epochs.
LEARN_CFG = {
    "optimizer": "adam",
    "lr": 3e-3,
    "max_epochs": 10,
    "patience": 10,
    "augment": {"rotation": False},
}


def make_store(
    root: Path,
    n_per_class: int = 20,
    n_folds: int = 2,
    n_test: int = 4,
    n_val: int = 4,
    image_size: int = IMAGE_SIZE,
):
    """A tensor store, folds CSV and CLASSES.json (see the data contracts) of dark vs bright
    noisy images: per fold, n_test + n_val images balanced by class, the rest a pool ranked
    alternately by class."""
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], n_per_class)
    level = np.where(targets == 1, 170, 70)[:, None, None, None]
    noise = rng.normal(0, 20, (len(targets), image_size, image_size, 3))
    images = np.clip(level + noise, 0, 255).astype(np.uint8)
    store = root / "store"
    store.mkdir(parents=True)
    np.save(store / "images.npy", images)
    image_ids = [f"cell{i:03d}" for i in range(len(targets))]
    names = np.array(CLASSES)[targets]
    index = pd.DataFrame({"row": range(len(targets)), "image_id": image_ids, "label": names})
    index.to_csv(store / "index.csv", index=False)
    rows = []
    held_out = (n_test + n_val) // 2
    for fold in range(n_folds):
        by_class = [rng.permutation(np.flatnonzero(targets == c)) for c in (0, 1)]
        role = {}
        for members in by_class:
            role |= {i: ("test", -1) for i in members[: n_test // 2]}
            role |= {i: ("val", -1) for i in members[n_test // 2 : held_out]}
        pool = [i for pair in zip(*(m[held_out:] for m in by_class), strict=True) for i in pair]
        role |= {i: ("pool", rank) for rank, i in enumerate(pool)}
        for i, image_id in enumerate(image_ids):
            rows.append(
                {
                    "fold": fold,
                    "image_id": image_id,
                    "label": names[i],
                    "target": targets[i],
                    "class_name": names[i],
                    "role": role[i][0],
                    "rank": role[i][1],
                }
            )
    pd.DataFrame(rows).to_csv(root / "folds.csv", index=False)
    (root / "CLASSES.json").write_text(json.dumps({"classes": CLASSES, "task": "binary"}))
    return store, root / "folds.csv", root / "CLASSES.json"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def learnt(dataset, tmp_path_factory):
    """One training job (fold 1, 32 images), run from an empty working directory."""
    workdir = tmp_path_factory.mktemp("cwd")
    out_dir = workdir / "job"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        info = run_training(*dataset, 1, 32, LEARN_CFG, MODEL_CFG, out_dir, image_size=IMAGE_SIZE)
    return info, out_dir


def quick_run(dataset, out_dir, **cfg):
    train_cfg = {"max_epochs": 2, "patience": 5, **cfg}
    return run_training(*dataset, 0, 8, train_cfg, MODEL_CFG, out_dir, image_size=IMAGE_SIZE)


def test_job_writes_every_output(learnt):
    info, out_dir = learnt
    assert sorted(p.name for p in out_dir.iterdir()) == [
        ".fewcells-output",
        "embeddings.npz",
        "history.csv",
        "model.ckpt",
        "predictions.csv",
        "train_info.json",
    ]
    assert list(out_dir.parent.iterdir()) == [out_dir]  # no lightning_logs, no temp folders
    assert json.loads((out_dir / "train_info.json").read_text()) == info
    for key in ("epochs_run", "best_epoch", "seconds", "image_steps_per_second"):
        assert info[key] > 0
    assert info["best_val_loss"] >= 0
    assert info["replicate"] == 0 and info["collapsed"] is False and info["output_spread"] > 0.5
    for key in ("fewcells_version", "git_commit", "torch_version", "python_version", "cpu"):
        assert info[key]
    assert info["seed"] == DEFAULT_TRAIN_CONFIG["seed"] + 1000 * 1 + 32
    assert info["n_parameters"] == 5_674  # 7,210 minus the smaller flatten at 190 px
    assert info["device"] == "cpu" and info["threads"] == 1 and info["n_train_images"] == 32


def test_history_has_one_row_per_epoch(learnt):
    info, out_dir = learnt
    history = pd.read_csv(out_dir / "history.csv")
    assert list(history.columns) == [
        "fold",
        "size",
        "replicate",
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
    ]
    assert history["epoch"].tolist() == list(range(1, info["epochs_run"] + 1))
    assert (history[["fold", "size"]] == [1, 32]).all().all()
    assert (history["lr"] == LEARN_CFG["lr"]).all()
    best = history["val_loss"].idxmin()
    assert history.loc[best, "epoch"] == info["best_epoch"]
    assert history.loc[best, "val_loss"] == pytest.approx(info["best_val_loss"])


def test_predictions_cover_test_and_validation_images(learnt, dataset):
    _, out_dir = learnt
    predictions = pd.read_csv(out_dir / "predictions.csv")
    assert list(predictions.columns) == [
        "fold",
        "size",
        "replicate",
        "image_id",
        "target",
        "split",
        "p_dark",
        "p_bright",
    ]
    folds = pd.read_csv(dataset[1]).query("fold == 1")
    for split in ("test", "val"):
        expected = folds.loc[folds["role"] == split, ["image_id", "target"]]
        got = predictions.loc[predictions["split"] == split, ["image_id", "target"]]
        assert got.reset_index(drop=True).equals(expected.reset_index(drop=True))
    assert predictions.shape[0] == 8
    np.testing.assert_allclose(predictions[["p_dark", "p_bright"]].sum(axis=1), 1.0, atol=1e-6)


def test_separable_task_is_learnt(learnt):
    _, out_dir = learnt
    predictions = pd.read_csv(out_dir / "predictions.csv")
    predicted = (predictions["p_bright"] > 0.5).astype(int)
    assert (predicted == predictions["target"]).all()


def test_embeddings_cover_the_whole_fold(learnt, dataset):
    _, out_dir = learnt
    folds = pd.read_csv(dataset[1]).query("fold == 1")
    with np.load(out_dir / "embeddings.npz") as saved:
        assert saved["image_id"].tolist() == folds["image_id"].tolist()
        assert saved["target"].tolist() == folds["target"].tolist()
        assert saved["embedding"].shape == (len(folds), 32)
        assert saved["embedding"].dtype == np.float32 and (saved["embedding"] >= 0).all()
        roles = pd.Series(saved["role"]).value_counts().to_dict()
    assert roles == {"train": 32, "test": 4, "val": 4}


@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # inside Lightning's test loop
def test_checkpoint_reloads_the_best_model(learnt, dataset):
    _, out_dir = learnt
    model = CellClassifier.load_from_checkpoint(out_dir / "model.ckpt")
    assert model.hparams.class_names == CLASSES
    data = CellDataModule(*dataset[:2], fold=1, size=32)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(model, datamodule=data, verbose=False)
    assert metrics["test_accuracy"] == 1.0
    predictions = pd.read_csv(out_dir / "predictions.csv").query("split == 'test'")
    images, _ = next(iter(data.test_dataloader()))
    x = images.permute(0, 3, 1, 2) / 255
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1).numpy()
        embedding = model.model.embed(x).numpy()
    np.testing.assert_allclose(probabilities, predictions[["p_dark", "p_bright"]], atol=1e-5)
    with np.load(out_dir / "embeddings.npz") as saved:
        test_rows = [saved["image_id"].tolist().index(i) for i in predictions["image_id"]]
        np.testing.assert_allclose(saved["embedding"][test_rows], embedding, atol=1e-5)


def test_checkpoint_reloads_without_the_starting_weights_file(dataset, tmp_path):
    start = tmp_path / "start.pt"
    torch.save(build_model(MODEL_CFG, len(CLASSES), IMAGE_SIZE).state_dict(), start)
    model_cfg = {**MODEL_CFG, "weights": str(start)}
    run_training(
        *dataset, 0, 8, {"max_epochs": 1}, model_cfg, tmp_path / "tuned", image_size=IMAGE_SIZE
    )
    start.unlink()  # the user moved the starting weights away
    with pytest.raises(FewcellsError, match="start.pt"):
        CellClassifier.load_from_checkpoint(tmp_path / "tuned" / "model.ckpt")
    model = CellClassifier.from_checkpoint(tmp_path / "tuned" / "model.ckpt")
    assert model.hparams.model_cfg["weights"] is None
    saved = torch.load(tmp_path / "tuned" / "model.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(
        model.state_dict()["model.classifier.weight"], saved["model.classifier.weight"]
    )


def test_same_config_gives_identical_outputs(dataset, tmp_path):
    quick_run(dataset, tmp_path / "a", augment={"noise_std": 0.05})
    quick_run(dataset, tmp_path / "b", augment={"noise_std": 0.05})
    for name in ("predictions.csv", "history.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_train_folds_trains_each_fold_as_its_own_job_would(dataset, tmp_path):
    # fold 0 trains after fold 1 in the same process: nothing carries over between them
    store, folds_csv, classes_json = dataset
    fold_dir = tmp_path / "folds"
    fold_dir.mkdir()
    shutil.copy(folds_csv, fold_dir / "folds.csv")
    shutil.copy(classes_json, fold_dir / "classes.json")
    cfg = {"max_epochs": 2, "patience": 5}
    arguments = ["--store", str(store), "--folds", str(fold_dir), "--fold-ids", "1,0"]
    arguments += ["--sizes", "8", "--image-size", str(IMAGE_SIZE), "--out", str(tmp_path)]
    arguments += ["--train-config", json.dumps(cfg), "--model-config", json.dumps(MODEL_CFG)]
    assert main(["train-folds", *arguments]) == 0
    for fold in (0, 1):
        alone = tmp_path / f"alone{fold}"
        run_training(*dataset, fold, 8, cfg, MODEL_CFG, alone, image_size=IMAGE_SIZE)
        for name in ("predictions.csv", "history.csv"):
            assert (tmp_path / "n8" / f"fold{fold}" / name).read_bytes() == (
                alone / name
            ).read_bytes()


def test_early_stopping_when_validation_loss_cannot_improve(dataset, tmp_path, capsys):
    # lr 0: the weights never change, so val_loss never improves on epoch 1.
    info = quick_run(dataset, tmp_path / "job", lr=0.0, max_epochs=20, patience=1)
    assert info["epochs_run"] == 2 and info["best_epoch"] == 1
    assert len(pd.read_csv(tmp_path / "job" / "history.csv")) == 2
    progress = capsys.readouterr().err
    assert "fold 0 size 8: epoch 1 " in progress and "best val_loss" in progress


def test_failed_job_leaves_no_output_folder(dataset, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run, "write_outputs", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        quick_run(dataset, tmp_path / "job")
    assert list(tmp_path.iterdir()) == []


def test_unknown_optimizer_is_refused(dataset, tmp_path):
    with pytest.raises(FewcellsError, match="train.optimizer"):
        quick_run(dataset, tmp_path / "job", optimizer="adagrad")
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize(
    "name, settings",
    [("rmsprop", {"alpha": 0.8}), ("adam", {}), ("sgd", {"momentum": 0.7})],
)
def test_optimizers_from_config(name, settings):
    cfg = fill_train_defaults({"optimizer": name, "lr": 0.5, "rho": 0.8, "momentum": 0.7})
    module = CellClassifier(MODEL_CFG, 2, IMAGE_SIZE, cfg)
    optimizer = module.configure_optimizers()
    assert type(optimizer).__name__.lower() == name
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.5
    assert {key: group[key] for key in settings} == settings


@pytest.mark.parametrize(
    "accelerator, gpu_visible, builds",
    [("auto", False, True), ("cpu", True, True), ("auto", True, False), ("gpu", True, False)],
)
def test_cpu_kernels_are_built_only_for_training_on_the_cpu(
    monkeypatch, accelerator, gpu_visible, builds
):
    built = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_visible)
    monkeypatch.setattr(loader, "load_kernel", lambda: built.append(True))
    module = CellClassifier(
        MODEL_CFG, 2, IMAGE_SIZE, fill_train_defaults({"accelerator": accelerator})
    )
    assert bool(built) == builds
    assert module.model.fused_cpu_kernel  # still used wherever an input is on the CPU


def test_fill_train_defaults_merges_defaults():
    cfg = fill_train_defaults({"lr": 0.1, "augment": {"noise_std": 0.2}})
    assert cfg["lr"] == 0.1 and cfg["optimizer"] == "rmsprop" and cfg["batch_size"] == 5
    assert cfg["augment"] == {**DEFAULT_TRAIN_CONFIG["augment"], "noise_std": 0.2}


def test_datamodule_splits_and_batches(dataset):
    data = CellDataModule(*dataset[:2], fold=0, size=6, batch_size=4, seed=7)
    data.setup("fit")
    roles = data.fold_frame["role"].value_counts().to_dict()
    assert roles == {"train": 6, "pool_unused": 26, "test": 4, "val": 4}
    batches = list(data.train_dataloader())
    assert [len(targets) for _, targets in batches] == [4, 2]
    images, targets = batches[0]
    assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == torch.uint8
    assert targets.dtype == torch.int64
    again = [t.tolist() for _, t in data.train_dataloader()]
    fresh = CellDataModule(*dataset[:2], fold=0, size=6, batch_size=4, seed=7)
    fresh.setup("fit")
    assert [t.tolist() for _, t in fresh.train_dataloader()] == [t.tolist() for _, t in batches]
    assert sorted(sum(again, [])) == [0, 0, 0, 1, 1, 1]
    predicted = torch.cat([targets for _, targets in data.predict_dataloader()])
    assert predicted.tolist() == data.fold_frame["target"].tolist()


def test_balancing_oversamples_every_class_to_the_same_count(dataset):
    positions = balanced_positions(np.array([0, 1, 1, 2, 2, 2, 2]), per_class=3)
    assert np.bincount(np.array([0, 1, 1, 2, 2, 2, 2])[positions]).tolist() == [4, 4, 4]
    assert sorted(set(positions.tolist())) == list(range(7))
    data = CellDataModule(*dataset[:2], fold=0, size=6, balance_to=10)
    data.setup("fit")
    targets = torch.cat([t for _, t in data.train_dataloader()])
    assert np.bincount(targets.numpy()).tolist() == [10, 10]


def test_training_set_with_one_class_is_refused(dataset, tmp_path):
    with pytest.raises(FewcellsError, match="fold 0, size 1.*two classes"):
        run_training(*dataset, 0, 1, {}, MODEL_CFG, tmp_path / "job", image_size=IMAGE_SIZE)
    assert not (tmp_path / "job").exists()


def test_bad_inputs_name_the_file(dataset, tmp_path):
    store, folds, classes = dataset
    with pytest.raises(FewcellsError, match="images.npy.*image_size 257"):
        run_training(store, folds, classes, 0, 8, {}, MODEL_CFG, tmp_path / "a", image_size=257)
    with pytest.raises(
        FewcellsError, match="folds.sizes: training size 99 .*pool \\(32 images\\) of fold 0"
    ):
        run_training(
            store, folds, classes, 0, 99, {}, MODEL_CFG, tmp_path / "b", image_size=IMAGE_SIZE
        )
    broken = tmp_path / "folds.csv"
    pd.read_csv(folds).drop(columns="rank").to_csv(broken, index=False)
    with pytest.raises(FewcellsError, match="missing column.*rank"):
        run_training(
            store, broken, classes, 0, 8, {}, MODEL_CFG, tmp_path / "c", image_size=IMAGE_SIZE
        )
    one_class = tmp_path / "CLASSES.json"
    one_class.write_text(json.dumps({"classes": ["dark"]}))
    with pytest.raises(FewcellsError, match="CLASSES.json"):
        run_training(
            store, folds, one_class, 0, 8, {}, MODEL_CFG, tmp_path / "d", image_size=IMAGE_SIZE
        )
