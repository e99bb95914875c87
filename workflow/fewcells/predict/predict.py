"""Classify an image set with trained networks: one fold's network or the soft-voting
ensemble of every fold (and replicate) of a training size.

The images are streamed a batch at a time through every chosen network, so memory holds
one batch and the outputs (class probabilities per network are written to a memory-mapped
file), whatever the number of images. The ensemble's probabilities are the mean of its
networks' (soft voting); its `spread` is the standard deviation between the networks of the
probability of the predicted class (0 for a single network).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fewcells.atomic import atomic_path
from fewcells.errors import FewcellsError
from fewcells.plan import parse_run_name
from fewcells.predict.images import image_batches, image_table
from fewcells.provenance import provenance
from fewcells.training.models import to_model_input

log = logging.getLogger(__name__)

TRAIN_DIR = re.compile(r"n(?P<size>\d+)/(?P<run>fold\d+(_rep\d+)?)/?$")
BATCH_SIZE = 64
REST = "*"


@dataclass
class Network:
    """One trained network, from train/n<size>/fold<k>[_rep<r>]/model.ckpt."""

    size: int
    fold: int
    replicate: int
    directory: Path
    model: torch.nn.Module
    image_size: int
    fused_cpu_kernel: bool

    @property
    def run(self) -> str:
        return f"fold{self.fold}" if self.replicate == 0 else f"fold{self.fold}_rep{self.replicate}"


def parse_train_dir(directory: str | os.PathLike) -> tuple[int, int, int]:
    """(size, fold, replicate) of a training folder .../n<size>/fold<k>[_rep<r>]."""
    match = TRAIN_DIR.search(Path(directory).as_posix())
    if match is None:
        raise FewcellsError(
            f"{directory}: not a training folder (expected .../n<size>/fold<k>[_rep<r>])"
        )
    fold, replicate = parse_run_name(match["run"])
    return int(match["size"]), fold, replicate


def load_classifier(path: str | os.PathLike):
    """The CellClassifier of checkpoint PATH (a training's or a pretraining's model.ckpt),
    on the CPU."""
    from fewcells.training.module import CellClassifier

    path = Path(path)
    if not path.is_file():
        raise FewcellsError(f"{path}: no trained network (model.ckpt)")
    try:
        return CellClassifier.from_checkpoint(path, map_location="cpu")
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        raise FewcellsError(f"{path}: cannot load the network: {error}") from error


def load_network(directory: str | os.PathLike) -> Network:
    """The network of a training folder, in eval mode on the CPU; on a CPU the paper CNN's
    first blocks run as the compiled kernel where its training used it (train.fused_cpu_kernel)."""
    directory = Path(directory)
    size, fold, replicate = parse_train_dir(directory)
    module = load_classifier(directory / "model.ckpt")
    fused = bool(module.train_cfg["fused_cpu_kernel"])
    return Network(
        size=size,
        fold=fold,
        replicate=replicate,
        directory=directory,
        model=module.model.eval(),
        image_size=int(module.hparams.image_size),
        fused_cpu_kernel=fused,
    )


def vote_networks(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(networks, images, classes) probabilities -> the ensemble's (images, classes) mean and,
    per image, the standard deviation between networks (ddof 0) of the probability of the
    class the ensemble predicts."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 3 or probabilities.shape[0] < 1:
        raise FewcellsError(
            f"vote_networks: needs (networks, images, classes), got {probabilities.shape}"
        )
    mean = probabilities.mean(axis=0)
    predicted = mean.argmax(axis=1)
    chosen = probabilities[:, np.arange(mean.shape[0]), predicted]
    return mean, chosen.std(axis=0)


def map_labels(
    labels: pd.Series, classes: Sequence[dict] | None, class_names: Sequence[str]
) -> pd.Series:
    """Each image's class name from its label, or NA (no label, or one no class takes).

    `classes` maps labels to the experiment's classes as an experiment's `classes` does
    ({name, labels}, "*" the rest, unlabelled images included - so a folder of images of one
    class is [{name: <class>, labels: ["*"]}]; here a label may be absent from the set, and
    a class may be left out). Without it a label that is a class name is that class.
    """
    labels = labels.fillna("").astype(str)
    if not classes:
        known = set(class_names)
        return labels.where(labels.isin(known)).astype(object).where(labels != "", None)
    unknown = [entry["name"] for entry in classes if entry["name"] not in class_names]
    if unknown:
        raise FewcellsError(
            f"predict classes: class(es) {unknown} are not classes of the experiment "
            f"({list(class_names)})"
        )
    by_label, rest = {}, None
    for entry in classes:
        for label in entry["labels"]:
            if label == REST:
                rest = entry["name"]
            else:
                by_label[label] = entry["name"]
    mapped = labels.map(by_label).astype(object)
    if rest is not None:  # the rest takes unlabelled images too: "every image is a <rest>"
        return mapped.fillna(rest)
    return mapped.where(labels != "", None)


def _networks_table(networks: Sequence[Network]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": range(len(networks)),
            "size": [n.size for n in networks],
            "fold": [n.fold for n in networks],
            "replicate": [n.replicate for n in networks],
            "directory": [str(n.directory) for n in networks],
        }
    )


def predict_table(
    table: pd.DataFrame,
    networks: Sequence[Network],
    class_names: Sequence[str],
    *,
    fit: str,
    rescale: float = 1.0,
    batch_size: int = BATCH_SIZE,
    probabilities_path: Path,
) -> np.ndarray:
    """Every network's class probabilities of every image of `table` (its `path`s), written
    to `probabilities_path` as a memory-mapped (networks, images, classes) float32 array,
    which is returned. Images are read and fitted one batch at a time."""
    if not networks:
        raise FewcellsError("predict: no networks given")
    sizes = {n.image_size for n in networks}
    if len(sizes) != 1:
        raise FewcellsError(f"predict: the networks take different image sizes {sorted(sizes)}")
    image_size = sizes.pop()
    out = np.lib.format.open_memmap(
        probabilities_path,
        mode="w+",
        dtype=np.float32,
        shape=(len(networks), len(table), len(class_names)),
    )
    start = 0
    with torch.inference_mode():
        for batch in image_batches(
            list(table["path"]), image_size, fit, rescale=rescale, batch_size=batch_size
        ):
            x = to_model_input(torch.from_numpy(batch))
            for i, network in enumerate(networks):
                logits = network.model(x).float()
                if logits.shape[1] != len(class_names):
                    raise FewcellsError(
                        f"{network.directory}: the network has {logits.shape[1]} outputs, the "
                        f"experiment {len(class_names)} classes"
                    )
                out[i, start : start + len(batch)] = torch.softmax(logits, dim=1).numpy()
            start += len(batch)
    out.flush()
    return out


def prediction_rows(
    table: pd.DataFrame,
    networks: Sequence[Network],
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> pd.DataFrame:
    """predictions.csv: per training size and image the ensemble's (or the one network's)
    probabilities, predicted class, spread between networks and the number of networks."""
    frames = []
    for size in sorted({n.size for n in networks}):
        chosen = [i for i, n in enumerate(networks) if n.size == size]
        mean, spread = vote_networks(probabilities[chosen])
        frame = pd.DataFrame(
            {
                "size": size,
                "image_id": table["image_id"].to_numpy(),
                "path": table["path"].to_numpy(),
                "label": table["label"].to_numpy(),
                "class_name": table["class_name"].to_numpy(),
            }
        )
        for column, name in enumerate(class_names):
            frame[f"p_{name}"] = mean[:, column]
        frame["predicted"] = np.asarray(class_names, dtype=object)[mean.argmax(axis=1)]
        frame["certainty"] = mean.max(axis=1)
        frame["spread"] = spread
        frame["n_networks"] = len(chosen)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_prediction(
    *,
    train_dirs: Sequence[str | os.PathLike],
    classes_json: str | os.PathLike,
    images: dict,
    out_dir: str | os.PathLike,
    fit: str,
    rescale: float = 1.0,
    classes: Sequence[dict] | None = None,
    experiment: str = "",
    name: str = "",
    explain_settings: dict | None = None,
    sheet_images: int = 4,
    batch_size: int = BATCH_SIZE,
    threads: int = 1,
    dpi: int = 150,
) -> pd.DataFrame:
    """Classify the image set `images` with the networks of `train_dirs` and write to
    `out_dir`: predictions.csv, networks.csv, network_probabilities.npy, contact_sheet.png,
    external_metrics.csv, external.md, external_confusion.png and predict_info.json.
    Returns the predictions table."""
    from fewcells.contracts import read_classes
    from fewcells.predict import external, sheet

    started = time.perf_counter()
    torch.set_num_threads(threads)
    class_names, task = read_classes(classes_json)
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(out_dir.name + ".images")
    table = image_table(images, work_dir)
    table["class_name"] = map_labels(table["label"], classes, class_names)
    networks = [load_network(d) for d in train_dirs]
    networks.sort(key=lambda n: (n.size, n.fold, n.replicate))
    print(
        f"predict: {len(table)} images, {len(networks)} network(s) of size(s) "
        f"{sorted({n.size for n in networks})}; "
        f"{int(table['class_name'].notna().sum())} with a class",
        file=sys.stderr,
    )
    with atomic_path(out_dir, directory=True) as tmp:
        probabilities = predict_table(
            table,
            networks,
            class_names,
            fit=fit,
            rescale=rescale,
            batch_size=batch_size,
            probabilities_path=tmp / "network_probabilities.npy",
        )
        predictions = prediction_rows(table, networks, probabilities, class_names)
        predictions.to_csv(tmp / "predictions.csv", index=False)
        _networks_table(networks).to_csv(tmp / "networks.csv", index=False)
        predict_seconds = time.perf_counter() - started
        sheet.write_contact_sheet(
            predictions,
            networks,
            class_names,
            tmp / "contact_sheet.png",
            fit=fit,
            rescale=rescale,
            settings=explain_settings or {},
            per_group=sheet_images,
            title=f"{experiment} - {name}",
            dpi=dpi,
        )
        summary = external.write_external(
            predictions,
            networks,
            probabilities,
            class_names,
            task,
            tmp,
            experiment=experiment,
            name=name,
            dpi=dpi,
        )
        info = {
            "experiment": experiment,
            "name": name,
            "images": len(table),
            "images_with_class": int(table["class_name"].notna().sum()),
            "networks": len(networks),
            "sizes": sorted({n.size for n in networks}),
            "rescale": rescale,
            "fit": fit,
            "image_size": networks[0].image_size,
            "seconds": time.perf_counter() - started,
            "predict_seconds": predict_seconds,
            "images_per_second": len(table) * len(networks) / max(predict_seconds, 1e-9),
            "threads": torch.get_num_threads(),
            "external_validation": summary,
            **provenance(),
        }
        (tmp / "predict_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return predictions
