"""Transfer learning: pretraining on a source experiment, the two fine-tuning phases, and
the config keys model.pretrained, train.finetune and pretrain (no Snakemake here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_train import CLASSES, IMAGE_SIZE, make_store

from fewcells.config import validate_config
from fewcells.errors import FewcellsError
from fewcells.plan import model_job_config, pretrain_job_config, train_job_config
from fewcells.training.callbacks import EpochHistory
from fewcells.training.datamodule import CellDataModule
from fewcells.training.fit import fit_best, fit_head
from fewcells.training.module import BATCHNORM_TYPES, FINETUNE_PHASE, CellClassifier
from fewcells.training.pretrain import pretrain_split, run_pretraining
from fewcells.training.protocol import fill_train_defaults
from fewcells.training.run import run_training

SMALL = 48  # ResNet-18 input side for the phase tests
RESNET = {"name": "resnet18", "keep_blocks": 1}  # stem + layer1: convolutions and BatchNorm
PAPER = {"name": "paper_cnn", "hidden": 32}
FINETUNE = {"head_epochs": 2, "head_lr": 0.05, "freeze_batchnorm": True}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    store, folds, _ = make_store(tmp_path_factory.mktemp("small"), image_size=SMALL)
    data = CellDataModule(store, folds, 0, 8, batch_size=4, image_size=SMALL)
    data.setup("fit")
    return data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory):
    """A paper CNN pretrained on the whole dark/bright store (one epoch)."""
    out = tmp_path_factory.mktemp("pretrained") / "source"
    info = run_pretraining(
        dataset[0],
        None,
        {"max_epochs": 1, "patience": 1, "batch_size": 8, "optimizer": "adam"},
        PAPER,
        out,
        image_size=IMAGE_SIZE,
        val_fraction=0.2,
        split_seed=3,
    )
    return info, out


def resnet_module(**finetune) -> tuple[CellClassifier, dict]:
    cfg = fill_train_defaults(
        {"max_epochs": 2, "patience": 5, "lr": 0.05, "finetune": {**FINETUNE, **finetune}}
    )
    torch.manual_seed(0)
    return CellClassifier(RESNET, 2, SMALL, cfg, CLASSES, seed=0), cfg


def state(module: CellClassifier) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.model.state_dict().items()}


def batchnorm_keys(module: CellClassifier) -> set[str]:
    return {
        f"{name}.{key}"
        for name, layer in module.model.named_modules()
        if isinstance(layer, BATCHNORM_TYPES)
        for key in layer.state_dict()
    }


def record_batchnorm_modes(module: CellClassifier) -> list[bool]:
    """`training` of every BatchNorm layer at each of its forward calls."""
    modes: list[bool] = []
    for layer in module.model.modules():
        if isinstance(layer, BATCHNORM_TYPES):
            layer.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    return modes


def test_head_phase_changes_only_the_head(small_data, tmp_path):
    module, cfg = resnet_module()
    before = state(module)
    history = EpochHistory(0, 8)
    summary = fit_head(module, small_data, cfg, history, tmp_path)
    after = module.model.state_dict()
    assert any(k.endswith("running_mean") for k in after)  # the test sees BatchNorm statistics
    for key, value in after.items():
        if key.startswith("classifier."):
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key  # weights and running statistics
    assert [row["phase"] for row in history.rows] == ["head", "head"]
    assert [row["lr"] for row in history.rows] == [0.05, 0.05]
    assert summary["trainable_parameters"] == 64 * 2 + 2  # the 64-d embedding's head
    assert not list(tmp_path.iterdir())  # no checkpoint in the head phase


def test_finetune_phase_keeps_batchnorm_frozen_and_in_eval_mode(small_data, tmp_path):
    module, cfg = resnet_module()
    module.set_phase(FINETUNE_PHASE, freeze_batchnorm=True)
    before = state(module)
    frozen = batchnorm_keys(module)
    modes = record_batchnorm_modes(module)
    history = EpochHistory(0, 8)
    history.start_phase(FINETUNE_PHASE)
    fit_best(module, small_data, cfg, history, tmp_path)
    after = module.model.state_dict()
    assert frozen and {k for k in frozen if k.endswith("running_var")}
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    changed = {key for key in after if not torch.equal(after[key], before[key])}
    assert "backbone.conv1.weight" in changed and "classifier.weight" in changed
    assert changed.isdisjoint(frozen)
    assert modes and not any(modes)  # every BatchNorm call, training steps included
    for name, parameter in module.model.named_parameters():
        assert parameter.requires_grad == (f"{name}" not in frozen), name
    module.train()
    assert not any(m.training for m in module.model.modules() if isinstance(m, BATCHNORM_TYPES))
    assert module.frozen_batchnorm_layers() == 5  # bn1 and the four of layer1
    assert (tmp_path / "model.ckpt").is_file()


def test_without_freeze_batchnorm_the_statistics_move(small_data, tmp_path):
    module, cfg = resnet_module(freeze_batchnorm=False)
    module.set_phase(FINETUNE_PHASE, freeze_batchnorm=False)
    before = state(module)
    fit_best(module, small_data, {**cfg, "max_epochs": 1}, EpochHistory(0, 8), tmp_path)
    after = module.model.state_dict()
    assert not torch.equal(after["backbone.bn1.running_mean"], before["backbone.bn1.running_mean"])
    assert all(p.requires_grad for p in module.model.parameters())


def test_pretraining_writes_a_checkpoint_and_a_stratified_split(pretrained, dataset):
    info, out = pretrained
    assert sorted(p.name for p in out.iterdir()) == [
        ".fewcells-output",
        "classes.json",
        "history.csv",
        "model.ckpt",
        "split.csv",
        "train_info.json",
    ]
    assert list(out.parent.iterdir()) == [out]  # no temporaries left
    split = pd.read_csv(out / "split.csv")
    assert len(split) == 40 and split["image_id"].is_unique
    assert split.query("role == 'val'")["class_name"].value_counts().to_dict() == {
        "dark": 4,
        "bright": 4,
    }
    assert info["n_train_images"] == 32 and info["n_val_images"] == 8
    assert json.loads((out / "classes.json").read_text())["classes"] == ["bright", "dark"]
    assert json.loads((out / "train_info.json").read_text()) == info
    assert len(pd.read_csv(out / "history.csv")) == info["epochs_run"] == 1
    model = CellClassifier.from_checkpoint(out / "model.ckpt")
    assert model.hparams.class_names == ["bright", "dark"]


def test_pretrained_weights_land_in_the_network(pretrained):
    _, out = pretrained
    saved = torch.load(out / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    model_cfg = {**PAPER, "weights": str(out / "model.ckpt")}
    torch.manual_seed(0)
    three = CellClassifier(model_cfg, 3, IMAGE_SIZE)  # another class count: a new head
    torch.manual_seed(0)
    fresh = CellClassifier(PAPER, 3, IMAGE_SIZE)
    for key, value in three.model.state_dict().items():
        if key.startswith("classifier."):
            assert torch.equal(value, fresh.model.state_dict()[key]), key
        else:
            assert torch.equal(value, saved[f"model.{key}"]), key
            assert not torch.equal(value, fresh.model.state_dict()[key]), key
    two = CellClassifier(model_cfg, 2, IMAGE_SIZE)  # the same class count: the head too
    for key, value in two.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"]), key


def test_a_finetuned_job_records_both_phases(pretrained, dataset, tmp_path):
    _, out = pretrained
    model_cfg = {**PAPER, "weights": str(out / "model.ckpt")}
    train_cfg = {"max_epochs": 3, "patience": 5, "lr": 1e-4, "finetune": {"head_epochs": 2}}
    info = run_training(
        *dataset, 0, 8, train_cfg, model_cfg, tmp_path / "job", image_size=IMAGE_SIZE
    )
    history = pd.read_csv(tmp_path / "job" / "history.csv")
    assert history["phase"].tolist() == ["head"] * 2 + ["finetune"] * 3
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert history["lr"].tolist() == [0.01] * 2 + [1e-4] * 3
    tuned = history[history["phase"] == "finetune"]
    assert info["best_epoch"] == tuned.loc[tuned["val_loss"].idxmin(), "epoch"]
    assert info["epochs_run"] == 5 and info["weights"] == str(out / "model.ckpt")
    assert info["phases"]["head"] | {"seconds": 0} == {
        "epochs": 2,
        "lr": 0.01,
        "trainable_parameters": 66,
        "seconds": 0,
    }
    assert info["phases"]["finetune"]["epochs"] == 3
    assert info["phases"]["finetune"]["trainable_parameters"] == info["n_parameters"]
    assert CellClassifier.from_checkpoint(tmp_path / "job" / "model.ckpt").hparams.seed == 8


def test_pretrain_split_is_seeded_stratified_and_drops_unmapped_labels():
    index = pd.DataFrame(
        {
            "image_id": [f"im{i:02d}" for i in range(30)],
            "label": ["a"] * 10 + ["b"] * 10 + ["c"] * 10,
        }
    )
    classes = [{"name": "A", "labels": ["a"]}, {"name": "B", "labels": ["b"]}]
    with pytest.raises(FewcellsError, match="label"):
        pretrain_split(index, [*classes, {"name": "D", "labels": ["d"]}], val_fraction=0.2, seed=0)
    index = index[index["label"] != "c"].reset_index(drop=True)
    split, names = pretrain_split(index, classes, val_fraction=0.2, seed=1)
    assert names == ["A", "B"] and len(split) == 20
    assert split.query("role == 'val'")["class_name"].value_counts().to_dict() == {"A": 2, "B": 2}
    assert sorted(split.query("role == 'pool'")["rank"]) == list(range(16))
    again, _ = pretrain_split(index, classes, val_fraction=0.2, seed=1)
    other, _ = pretrain_split(index, classes, val_fraction=0.2, seed=2)
    assert split.equals(again) and not split.equals(other)
    with pytest.raises(FewcellsError, match="val_fraction"):
        pretrain_split(index, None, val_fraction=0.95, seed=0)
    with pytest.raises(FewcellsError, match="at least two images.*too few: \\['b'\\]"):
        pretrain_split(index.iloc[:11], None, val_fraction=0.2, seed=0)


# --------------------------------------------------------------------------- config


TINY_TRANSFER = Path(__file__).parent / "integration" / "configs" / "tiny_transfer.yaml"


def transfer_config() -> dict:
    return yaml.safe_load(TINY_TRANSFER.read_text())


def test_transfer_config_keys_and_what_the_jobs_read():
    config = validate_config(transfer_config())
    target = config["experiments"]["tiny_finetuned"]
    assert target["train"]["finetune"] == {
        "head_epochs": 1,
        "head_lr": 0.01,
        "freeze_batchnorm": True,
    }
    model = model_job_config(target, "results/pretrained")
    assert model["weights"] == "results/pretrained/tiny_source/model.ckpt"
    assert "pretrained" not in model
    scratch = config["experiments"]["tiny_scratch"]
    assert scratch["train"]["finetune"] is None and "finetune" not in train_job_config(scratch)
    assert model_job_config(scratch, "results/pretrained") == {
        "name": "paper_cnn",
        "hidden": 32,
        "weights": None,
        "freeze": 0,
        "keep_blocks": None,
        "init": None,
    }
    source = config["experiments"]["tiny_source"]
    protocol = pretrain_job_config(source)
    assert protocol["batch_size"] == 16 and protocol["max_epochs"] == 2
    assert protocol["optimizer"] == "adam" and "finetune" not in protocol
    assert source["pretrain"]["val_fraction"] == 0.2
    defaults = config["experiments"]["tiny_scratch"]["pretrain"]
    assert defaults["val_fraction"] == 0.1 and defaults["patience"] == 10


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda e: e["tiny_finetuned"]["model"].update(pretrained="nope"),
            "experiments.tiny_finetuned.model.pretrained: unknown source experiment 'nope'",
        ),
        (
            lambda e: e["tiny_finetuned"]["model"].update(pretrained="tiny_finetuned"),
            "experiments.tiny_finetuned.model.pretrained: .*on itself",
        ),
        (
            lambda e: e["tiny_source"].update(model={"name": "resnet18"}),
            "experiments.tiny_finetuned.model.pretrained: .*model.name 'resnet18'.*'paper_cnn'",
        ),
        (
            lambda e: e["tiny_source"].update(image={"size": 200}),
            "experiments.tiny_finetuned.model.pretrained: .*image.size 200.*257",
        ),
        (
            lambda e: e["tiny_source"].update(model={"pretrained": "tiny_scratch"}),
            "experiments.tiny_finetuned.model.pretrained: .*itself pretrained",
        ),
        (
            lambda e: e["tiny_finetuned"]["model"].update(weights="w.pth"),
            "experiments.tiny_finetuned.model.pretrained: .*not both",
        ),
        (
            lambda e: e["tiny_scratch"]["train"].update(finetune={}),
            "experiments.tiny_scratch.train.finetune: .*model.pretrained or model.weights",
        ),
        (
            lambda e: e["tiny_finetuned"]["train"]["finetune"].update(head_lr=0),
            "experiments.tiny_finetuned.train.finetune.head_lr",
        ),
        (
            lambda e: e["tiny_source"]["pretrain"].update(val_fraction=0.9),
            "experiments.tiny_source.pretrain.val_fraction",
        ),
    ],
)
def test_wrong_transfer_settings_name_the_key(edit, message):
    config = copy.deepcopy(transfer_config())
    edit(config["experiments"])
    with pytest.raises(FewcellsError, match=f"config key {message}"):
        validate_config(config)


def test_the_phases_need_no_pretrained_network_to_be_chosen():
    """set_phase(None) gives back every parameter as built (model.freeze kept)."""
    module = CellClassifier({**PAPER, "freeze": 2}, 2, IMAGE_SIZE)
    built = [p.requires_grad for p in module.model.parameters()]
    module.set_phase("head")
    assert [n for n, p in module.model.named_parameters() if p.requires_grad] == [
        "classifier.weight",
        "classifier.bias",
    ]
    module.set_phase(None)
    assert [p.requires_grad for p in module.model.parameters()] == built
    assert not all(built) and np.sum(built) == len(built) - 4


def test_evaluation_keeps_the_phase_column(tmp_path):
    from fewcells.analysis.readers import read_histories

    row = {"fold": 0, "size": 6, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.5}
    plain = pd.DataFrame([{**row, "epoch": e, "lr": 1e-3} for e in (1, 2)])
    tuned = plain.assign(fold=1, phase=["head", "finetune"])
    plain.to_csv(tmp_path / "a.csv", index=False)
    tuned.to_csv(tmp_path / "b.csv", index=False)
    history = read_histories([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert history["phase"].tolist()[2:] == ["head", "finetune"]
    assert history["phase"].iloc[:2].isna().all()
    assert "phase" not in read_histories([tmp_path / "a.csv"])
