"""The files a training writes: history.csv, predictions.csv, embeddings.npz and
train_info.json (with the costs and provenance of the training); model.ckpt is the
checkpoint Lightning (or the stacked engine) saves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from fewcells.contracts import PREDICTION_COLUMNS, is_collapsed, output_spread
from fewcells.provenance import provenance
from fewcells.training.callbacks import EpochHistory
from fewcells.training.datamodule import CellDataModule
from fewcells.training.kernels import loader
from fewcells.training.memory import peak_rss_mb
from fewcells.training.module import CellClassifier


def write_outputs(
    tmp: Path,
    data: CellDataModule,
    predictions: list[dict[str, torch.Tensor]],
    class_names: list[str],
    history: EpochHistory,
) -> dict:
    """history.csv, predictions.csv (test + val rows) and embeddings.npz into `tmp`. Returns
    train_info's output fields: the spread of the test and validation outputs and whether
    they are constant (`collapsed`)."""
    frame = data.fold_frame
    probabilities = torch.cat([batch["probabilities"] for batch in predictions]).cpu().numpy()
    embeddings = torch.cat([batch["embedding"] for batch in predictions]).cpu().numpy()
    history.save(tmp / "history.csv")
    table = pd.DataFrame(
        {
            "fold": data.fold,
            "size": data.size,
            "replicate": history.replicate,
            "image_id": frame["image_id"],
            "target": frame["target"],
            "split": frame["role"],
        },
        columns=PREDICTION_COLUMNS,
    )
    for column, name in enumerate(class_names):
        table[f"p_{name}"] = probabilities[:, column]
    tested = table[table["split"].isin(["test", "val"])]
    tested = tested.sort_values("split", key=lambda s: s.map({"test": 0, "val": 1}), kind="stable")
    tested.to_csv(tmp / "predictions.csv", index=False)
    np.savez(
        tmp / "embeddings.npz",
        image_id=frame["image_id"].to_numpy(dtype=str),
        role=frame["role"].to_numpy(dtype=str),
        target=frame["target"].to_numpy(dtype=np.int64),
        embedding=embeddings.astype(np.float32),
    )
    spread = output_spread(probabilities[table["split"].isin(["test", "val"]).to_numpy()])
    return {"output_spread": spread, "collapsed": is_collapsed(spread)}


def device_name(device: torch.device) -> str:
    """The device a training ran on, with the GPU's name."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def cpu_kernel_used(module: CellClassifier, device: torch.device) -> str:
    """How the augmentation's rotation (and the paper CNN's first three blocks) ran: the compiled
    CPU kernels or PyTorch's layers."""
    if not module.train_cfg["fused_cpu_kernel"] or device.type != "cpu":
        return "pytorch"
    kernel, how = loader.load_kernel()
    return how if kernel is not None else f"pytorch: fused kernel {how}"


def run_costs(
    module: CellClassifier,
    data: CellDataModule,
    history: EpochHistory,
    trainer: L.Trainer,
    started: float,
    fit_seconds: float,
    seed: int,
) -> dict:
    """train_info's cost and provenance fields of a finished fit (training and pretraining)."""
    device = trainer.strategy.root_device
    return {
        "seconds": time.perf_counter() - started,
        "fit_seconds": fit_seconds,
        "image_steps_per_second": len(data.splits["train"]) * len(history.rows) / fit_seconds,
        "cpu_kernel": cpu_kernel_used(module, device),
        **process_costs(device, seed, module.model),
    }


def process_costs(device: torch.device, seed: int, network: torch.nn.Module) -> dict:
    """train_info's fields that every engine records: the device, threads, seed, the network's
    size, the process's peak memory and what produced the training (provenance)."""
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "n_parameters": sum(p.numel() for p in network.parameters()),
        "peak_rss_mb": peak_rss_mb(),
        **provenance(),
    }


def write_train_info(info: dict, folder: Path) -> None:
    """FOLDER/train_info.json (indented, keys sorted)."""
    (folder / "train_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
