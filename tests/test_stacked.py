"""The stacked engines give the per-fold engine's results, network by network."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import update_config
from test_train import IMAGE_SIZE, MODEL_CFG, make_store

from fewcells.config import validate_config
from fewcells.errors import FewcellsError
from fewcells.training.models import build_model
from fewcells.training.module import CellClassifier
from fewcells.training.run import run_training
from fewcells.training.stacked import StackedNetworks, StackState, run_stacked_training

# RMSprop as in the paper, with rotation and flips: every part of the protocol is exercised.
PARITY_CFG = {
    "optimizer": "rmsprop",
    "lr": 1e-3,
    "max_epochs": 4,
    "patience": 2,
    "accelerator": "cpu",  # bitwise-comparable kernels; on a GPU TF32 convolutions differ by ~1e-3
}
OUTPUTS = ("model.ckpt", "history.csv", "predictions.csv", "embeddings.npz", "train_info.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data"), n_folds=3)


@pytest.fixture(scope="module")
def both_engines(dataset, tmp_path_factory):
    """Size 8 on folds 0-2, trained by the per-fold engine and by the stacked engine."""
    root = tmp_path_factory.mktemp("engines")
    per_fold = [
        run_training(
            *dataset,
            fold,
            8,
            PARITY_CFG,
            MODEL_CFG,
            root / f"per_fold/fold{fold}",
            image_size=IMAGE_SIZE,
        )
        for fold in range(3)
    ]
    stacked = run_stacked_training(
        *dataset, [0, 1, 2], [8], PARITY_CFG, MODEL_CFG, root / "stacked", image_size=IMAGE_SIZE
    )
    return root, per_fold, stacked


@pytest.fixture(scope="module")
def sweep(dataset, tmp_path_factory):
    """Sizes 4 and 12 on folds 0 and 1 (batch 5: epochs of one and of three steps, the last
    batch short), trained per fold and as one stack (train.engine stacked_sweep). Both with
    PyTorch's layers: the compiled CPU kernels round differently, and RMSprop's first steps
    amplify rounding in networks that are still at chance."""
    root = tmp_path_factory.mktemp("sweep")
    cfg = {**PARITY_CFG, "max_epochs": 6, "patience": 1, "fused_cpu_kernel": False}
    per_fold = {
        (fold, size): run_training(
            *dataset,
            fold,
            size,
            cfg,
            MODEL_CFG,
            root / f"per_fold/n{size}/fold{fold}",
            image_size=IMAGE_SIZE,
        )
        for size in (4, 12)
        for fold in (0, 1)
    }
    stacked = run_stacked_training(
        *dataset,
        [0, 1],
        [4, 12],
        cfg,
        MODEL_CFG,
        root / "stacked",
        image_size=IMAGE_SIZE,
        engine="stacked_sweep",
    )
    return root, per_fold, stacked


def networks(n: int) -> list[torch.nn.Module]:
    result = []
    for seed in range(n):
        torch.manual_seed(seed)
        result.append(build_model(MODEL_CFG, 2, IMAGE_SIZE))
    return result


def test_stacked_forward_and_gradients_match_each_network():
    nets = networks(3)
    stacked = StackedNetworks(nets)
    x = torch.rand(3, 4, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = stacked(x)
    out.square().sum().backward()
    for k, net in enumerate(nets):
        reference = net(x[k])
        torch.testing.assert_close(out[k], reference, rtol=1e-5, atol=1e-6)
        reference.square().sum().backward()
        for name, param in zip(stacked.names, stacked.stacked, strict=True):
            torch.testing.assert_close(
                param.grad[k], net.get_parameter(name).grad, rtol=1e-4, atol=1e-7
            )


def test_stacked_networks_refuse_other_architectures():
    resnets = [build_model({"name": "resnet18"}, 2, 64) for _ in range(2)]
    with pytest.raises(FewcellsError, match="paper CNN only, not TorchvisionNet.*per_fold"):
        StackedNetworks(resnets)


def test_early_stopping_bookkeeping_per_network():
    stacked = StackedNetworks(networks(3))
    state = StackState(stacked, patience=2, max_epochs=4)
    # (positions whose epoch ended, their val losses); network 2 has epochs twice as long.
    ends = [([0, 1], (1.0, 1.0)), ([0, 1, 2], (0.5, 2.0, 1.0)), ([0, 1], (0.6, 2.0))]
    ends += [([0, 1, 2], (0.4, 0.1, 0.5)), ([0, 1], (0.3, 0.1))]
    epochs = [0, 0, 0]
    for step, (positions, losses) in enumerate(ends, start=1):
        with torch.no_grad():
            for param in stacked.stacked:
                param.fill_(step)
        for p in positions:
            epochs[p] += 1
        state.update(
            stacked,
            torch.tensor(positions),
            torch.tensor([epochs[p] for p in positions]),
            torch.tensor(losses),
        )
    # Network 0 improves at epochs 1, 2, 4 and stops at max_epochs (the 5th end is ignored);
    # network 1 improves only at 1 and stops after epoch 3; network 2 improves at its 1 and 2.
    assert state.best_epoch.tolist() == [4, 1, 2]
    assert state.stop_epoch.tolist() == [4, 3, 2]
    assert state.active.tolist() == [False, False, True]
    assert {float(best[0].flatten()[0]) for best in state.best_params} == {4.0}
    assert {float(best[1].flatten()[0]) for best in state.best_params} == {1.0}
    assert {float(best[2].flatten()[0]) for best in state.best_params} == {4.0}
    state.keep(torch.tensor([2]))
    assert state.best_epoch.tolist() == [2] and state.active.tolist() == [True]


def test_stacked_engine_writes_the_per_fold_outputs(both_engines):
    root, _, stacked = both_engines
    for fold in range(3):
        assert sorted(p.name for p in (root / f"stacked/n8/fold{fold}").iterdir()) == sorted(
            (*OUTPUTS, ".fewcells-output")
        )
        info = json.loads((root / f"stacked/n8/fold{fold}/train_info.json").read_text())
        assert info["engine"] == "stacked" and info["fold"] == fold and info["size"] == 8
    assert [info["fold"] for info in stacked] == [0, 1, 2]


def assert_same_training(one: dict, many: dict, one_dir: Path, many_dir: Path) -> None:
    """The per-fold engine's training `one` and a stacked engine's `many` agree: epochs, best
    epoch, and (up to summation order) losses and predictions."""
    assert (one["epochs_run"], one["best_epoch"]) == (many["epochs_run"], many["best_epoch"])
    assert many["best_val_loss"] == pytest.approx(one["best_val_loss"], rel=1e-3, abs=1e-4)
    for name in ("history.csv", "predictions.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(one_dir / name), pd.read_csv(many_dir / name), rtol=1e-3, atol=1e-4
        )


def test_stacked_engine_matches_the_per_fold_engine(both_engines):
    """Same initial weights, batches and augmentation draws: the same training, fold by fold,
    up to the summation order of the vectorised convolutions."""
    root, per_fold, stacked = both_engines
    for fold, (one, many) in enumerate(zip(per_fold, stacked, strict=True)):
        assert_same_training(
            one, many, root / f"per_fold/fold{fold}", root / f"stacked/n8/fold{fold}"
        )


def test_sweep_stack_matches_the_per_fold_engine(sweep):
    """Networks of different training sizes in one stack: each keeps its own epochs (one or
    three steps, short last batches) and its own early stopping."""
    root, per_fold, stacked = sweep
    assert [(i["size"], i["fold"]) for i in stacked] == [(4, 0), (4, 1), (12, 0), (12, 1)]
    for many in stacked:
        key = many["fold"], many["size"]
        assert many["engine"] == "stacked_sweep" and many["networks_in_job"] == 4
        where = f"n{many['size']}/fold{many['fold']}"
        assert_same_training(
            per_fold[key], many, root / "per_fold" / where, root / "stacked" / where
        )
    # the protocol ran: some stopped early, others at max_epochs, at different epochs
    assert len({i["epochs_run"] for i in stacked}) > 1


def test_stacked_checkpoint_reloads_as_a_classifier(both_engines, dataset):
    root, _, _ = both_engines
    module = CellClassifier.from_checkpoint(root / "stacked/n8/fold1/model.ckpt")
    embeddings = np.load(root / "stacked/n8/fold1/embeddings.npz")
    images = np.load(dataset[0] / "images.npy")
    index = pd.read_csv(dataset[0] / "index.csv").set_index("image_id")["row"]
    rows = index.loc[embeddings["image_id"][:5]].to_numpy()
    with torch.no_grad():
        x = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255
        embedding = module.model.embed(x)
    np.testing.assert_allclose(embedding.numpy(), embeddings["embedding"][:5], rtol=1e-4, atol=1e-5)


def test_stacked_engine_trains_uneven_training_sets_as_the_per_fold_engine(dataset, tmp_path):
    """balance_to pads fold 1 (6 + 2 images) to 12 but fold 0 (4 + 4) to 8."""
    store, folds_csv, classes = dataset
    folds = pd.read_csv(folds_csv)
    pool = (folds["fold"] == 1) & (folds["role"] == "pool")
    folds.loc[pool, "target"] = np.where(folds.loc[pool, "rank"] < 6, 0, 1)
    uneven = tmp_path / "folds.csv"
    folds.to_csv(uneven, index=False)
    cfg = {**PARITY_CFG, "balance_to": 2, "max_epochs": 2}
    stacked = run_stacked_training(
        store, uneven, classes, [0, 1], [8], cfg, MODEL_CFG, tmp_path / "out", image_size=IMAGE_SIZE
    )
    for many in stacked:
        fold = many["fold"]
        one = run_training(
            store,
            uneven,
            classes,
            fold,
            8,
            cfg,
            MODEL_CFG,
            tmp_path / f"one{fold}",
            image_size=IMAGE_SIZE,
        )
        assert_same_training(one, many, tmp_path / f"one{fold}", tmp_path / f"out/n8/fold{fold}")


@pytest.mark.parametrize("engine", ["stacked", "stacked_sweep"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"name": "resnet18"}}, "BatchNorm"),
        ({"train": {"precision": "bf16-mixed"}}, "32-true"),
    ],
)
def test_config_refuses_what_the_stacked_engines_cannot_train(engine, change, message):
    config = yaml.safe_load((Path(__file__).parents[1] / "config/config.yaml").read_text())
    update_config(config, {"experiments": {"demo_binary": {"train": {"engine": engine}}}})
    update_config(config, {"experiments": {"demo_binary": change}})
    with pytest.raises(FewcellsError, match=rf"demo_binary\.train\.engine: '{engine}'.*{message}"):
        validate_config(config)
