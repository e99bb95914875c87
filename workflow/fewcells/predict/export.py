"""Export a trained network, or the soft-voting ensemble of a training size's networks,
for use without fewcells: TorchScript (model.pt), ONNX (model.onnx) and model_card.json.

Both files take what the tensor store holds: uint8 RGB images (B, size, size, 3), fitted
to image.size as image.fit says, and return class probabilities (B, classes): the scaling
(pixels / 255), the network(s) and the softmax (and the ensemble's mean) are inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fewcells.atomic import atomic_path
from fewcells.data.fetch import sha256_file
from fewcells.errors import FewcellsError
from fewcells.provenance import provenance

ONNX_OPSET = 17
EXPORT_FILES = ("model.pt", "model.onnx", "model_card.json")


class StoredImagesClassifier(nn.Module):
    """uint8 (B, H, W, 3) images -> mean softmax probabilities of `models` (B, classes)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        total = torch.softmax(self.members[0](x), dim=1)
        for member in self.members[1:]:
            total = total + torch.softmax(member(x), dim=1)
        return total / len(self.members)


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporters' deprecation chatter (torch.jit and the TorchScript-based ONNX
    exporter, which needs no extra package and exports these networks exactly)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        yield


def exportable(networks: Sequence) -> StoredImagesClassifier:
    """The networks (fewcells.predict.predict.Network) as one module on plain PyTorch
    layers (the compiled CPU kernel cannot be exported), in eval mode."""
    models = []
    for network in networks:
        model = network.model.eval()
        if hasattr(model, "fused_cpu_kernel"):
            model.fused_cpu_kernel = False
        models.append(model)
    return StoredImagesClassifier(models).eval()


def export_files(module: nn.Module, image_size: int, out_dir: Path) -> None:
    """model.pt (traced TorchScript) and model.onnx (batch dimension dynamic) in out_dir."""
    example = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(out_dir / "model.pt"))
        torch.onnx.export(
            module,
            (example,),
            str(out_dir / "model.onnx"),
            dynamo=False,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def network_metrics(networks: Sequence, class_names: Sequence[str], task: str) -> dict:
    """The internal test metrics of the networks (mean over them, and per network)."""
    from fewcells.analysis.metrics import binary_metrics, multiclass_metrics
    from fewcells.analysis.readers import read_predictions

    pred = read_predictions([n.directory / "predictions.csv" for n in networks], class_names)
    if task == "binary":
        metrics = binary_metrics(pred, class_names[1])
    else:
        metrics = multiclass_metrics(pred, class_names)
    numeric = [c for c in metrics.columns if c not in ("size", "fold", "replicate")]
    return {
        "test_folds_mean": {c: _plain(metrics[c].mean()) for c in numeric},
        "per_network": [
            {k: _plain(v) if isinstance(v, float) else int(v) for k, v in row.items()}
            for row in metrics.to_dict("records")
        ],
    }


def _plain(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def model_card(
    networks: Sequence,
    class_names: Sequence[str],
    task: str,
    *,
    experiment: str,
    fit: str,
    dataset: str,
    manifest: str | os.PathLike | None,
) -> dict:
    """model_card.json: classes, input, training data, metrics, what produced it."""
    manifest_sha = sha256_file(manifest) if manifest and Path(manifest).is_file() else None
    n_images = None
    if manifest_sha is not None:
        n_images = len(pd.read_csv(manifest, usecols=["image_id"]))
    image_size = networks[0].image_size
    return {
        "format": "fewcells model card 1",
        "experiment": experiment,
        "task": task,
        "classes": list(class_names),
        "positive_class": class_names[1] if task == "binary" else None,
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": ["batch", image_size, image_size, 3],
            "layout": "NHWC, RGB (transparency composited on white, 16-bit scaled to 8-bit)",
            "image_size": image_size,
            "fit": fit,
            "fit_meaning": (
                "pad: centred, edge pixels repeated where smaller, centre cropped where larger"
                if fit == "pad"
                else "resize: bilinear resize to image_size x image_size"
            ),
            "scaling": "pixels / 255 inside the model (no mean/std outside)",
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(class_names)],
            "meaning": "softmax class probabilities"
            + (f", mean over {len(networks)} networks (soft voting)" if len(networks) > 1 else ""),
        },
        "training_data": {
            "dataset": dataset,
            "manifest_sha256": manifest_sha,
            "manifest_images": n_images,
            "n": sorted({n.size for n in networks}),
            "folds": sorted({n.fold for n in networks}),
            "networks": [
                {"size": n.size, "fold": n.fold, "replicate": n.replicate} for n in networks
            ],
        },
        "metrics": network_metrics(networks, class_names, task),
        "software": provenance(),
    }


def export_networks(
    train_dirs: Sequence[str | os.PathLike],
    classes_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    experiment: str,
    fit: str,
    dataset: str = "",
    manifest: str | os.PathLike | None = None,
) -> dict:
    """Write model.pt, model.onnx and model_card.json of the networks of `train_dirs`
    (one: that network; several: their soft-voting ensemble) to `out_dir`, atomically.
    Returns the model card."""
    from fewcells.contracts import read_classes
    from fewcells.predict.predict import load_network

    class_names, task = read_classes(classes_json)
    networks = sorted(
        (load_network(d) for d in train_dirs), key=lambda n: (n.size, n.fold, n.replicate)
    )
    if not networks:
        raise FewcellsError("export: no networks given")
    if len({n.image_size for n in networks}) != 1:
        raise FewcellsError("export: the networks take different image sizes")
    card = model_card(
        networks,
        class_names,
        task,
        experiment=experiment,
        fit=fit,
        dataset=dataset,
        manifest=manifest,
    )
    with atomic_path(out_dir, directory=True) as tmp:
        export_files(exportable(networks), networks[0].image_size, tmp)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def exported_probabilities(out_dir: str | os.PathLike, images: np.ndarray) -> dict:
    """Probabilities of uint8 (B, H, W, 3) `images` from each exported file, read the way a
    user without fewcells reads them (torch.jit.load, onnxruntime)."""
    import onnxruntime

    out_dir = Path(out_dir)
    with _quiet_export():
        scripted = torch.jit.load(str(out_dir / "model.pt"))
    with torch.no_grad():
        torchscript = scripted(torch.from_numpy(images)).numpy()
    session = onnxruntime.InferenceSession(
        str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx,) = session.run(None, {"images": images})
    return {"torchscript": torchscript, "onnx": onnx}
