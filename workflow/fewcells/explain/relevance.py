"""Relevance maps of trained networks (paper Fig. 4b) and where their relevance lies.

Saliency is |d logit / d input|, the maximum over colour channels. LRP uses zennit: by
default the paper's setting, the epsilon rule (epsilon = 1) on every conv and dense layer,
starting from the pre-softmax logit of the target class (the true class by default). The
share of positive LRP relevance inside the nucleus and inside the cell turns the paper's
"larger training sets focus on the nucleus" into a number per training size, for each of
several composites (by default the paper's rule and the box rule at the input layer, which
does not scale relevance by the pixel values as the epsilon rule does); nuclei come from a
stain-colour segmentation and, where they exist, from expert masks.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

from fewcells.atomic import write_csv, write_png
from fewcells.contracts import FOLD_COLUMNS, read_classes, read_table
from fewcells.data.store import open_store
from fewcells.errors import FewcellsError
from fewcells.training.models import TorchvisionNet, to_model_input

log = logging.getLogger(__name__)

COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box")
BATCH_SIZE = 16
DEFAULT_SETTINGS = {
    "composite": "epsilon",
    "share_composites": ["epsilon", "epsilon_gamma_box"],
    "epsilon": 1.0,
    "gamma": 0.25,
    "target": "true_class",
    "cells": None,
}
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".jpg")


# ----------------------------------------------------------------------------- attribution


def canonizers_for(model: torch.nn.Module) -> list[Canonizer]:
    """zennit canonizers that put `model` into the form LRP's rules assume.

    The paper CNN needs none. torchvision networks: BatchNorm merged into the convolution it
    follows (SequentialMergeBatchNorm), and for ResNet/ResNeXt also the residual sums made
    explicit modules so that relevance is split between the two branches (ResNetCanonizer).
    DenseNet's BatchNorm layers come before their convolutions and stay as they are.
    """
    if not isinstance(model, TorchvisionNet):
        return []
    if model.arch.startswith(("resnet", "resnext")):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def input_bounds(model: torch.nn.Module) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Lowest and highest value the first layer of `model` sees, for the box rule.

    Networks take pixels / 255, so [0, 1]. A TorchvisionNet normalises inside (x - mean) / std
    before its first convolution, so its bounds are those of pixels 0 and 1 after that, per
    channel (1, 3, 1, 1).
    """
    if isinstance(model, TorchvisionNet):
        return (0 - model.mean) / model.std, (1 - model.mean) / model.std
    return 0.0, 1.0


def make_composite(
    name: str,
    epsilon: float = 1.0,
    canonizers: list[Canonizer] | None = None,
    *,
    gamma: float = 0.25,
    bounds: tuple[float | torch.Tensor, float | torch.Tensor] = (0.0, 1.0),
) -> LayerMapComposite:
    """The zennit composite `name` (one of COMPOSITES) with the epsilon rule's `epsilon`.

    epsilon_gamma_box: the box (z^B) rule with `bounds` (see `input_bounds`) on the first
    convolution, the gamma rule with `gamma` on the other convolutions, epsilon on dense layers.
    """
    canonizers = canonizers or []
    if name == "epsilon":
        rule = Epsilon(epsilon=epsilon)
        return LayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, rule), (torch.nn.Linear, rule)],
            canonizers=canonizers,
        )
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
    if name == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canonizers)
    if name == "epsilon_gamma_box":
        low, high = bounds
        return EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, canonizers=canonizers
        )
    raise FewcellsError(
        f"explain.composite: unknown composite {name!r}; choose one of {COMPOSITES}"
    )


def describe_composite(name: str, epsilon: float, gamma: float) -> str:
    """A figure label of the composite `name`: which rule acts where, with its parameters."""
    labels = {
        "epsilon": f"ε rule (ε = {epsilon:g}) on every layer (the paper)",
        "epsilon_plus_flat": f"flat at the input, z⁺ on convolutions, ε = {epsilon:g} on dense",
        "epsilon_alpha2_beta1": f"α2β1 on convolutions, ε = {epsilon:g} on dense",
        "epsilon_gamma_box": (
            f"box rule at the input, γ = {gamma:g} on convolutions, ε = {epsilon:g} on dense"
        ),
    }
    return labels[name]


def _one_hot(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets, n_classes).float()


def lrp(
    model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, composite: LayerMapComposite
) -> tuple[np.ndarray, np.ndarray]:
    """LRP relevance (B, C, H, W) of the target logits, and those logits (B,).

    The output relevance is the pre-softmax logit of each image's target class.
    """
    model.eval()
    with Gradient(model=model, composite=composite) as attributor:
        logits, relevance = attributor(
            x.clone().requires_grad_(True),
            lambda out: out * _one_hot(targets, out.shape[1]),
        )
    chosen = logits.gather(1, targets[:, None])[:, 0]
    return relevance.detach().numpy(), chosen.detach().numpy()


def saliency(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """|d logit_target / d input|, maximum over channels: (B, H, W)."""
    model.eval()
    x = x.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, targets[:, None]).sum().backward()
    return x.grad.abs().amax(dim=1).numpy()


# ----------------------------------------------------------------------------- masks


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of `values`."""
    hist, edges = np.histogram(np.ravel(values), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)
    above = below[-1] - below
    mass_below = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass_below[-1] * below / below[-1] - mass_below) ** 2 / (below * above)
    between[~np.isfinite(between)] = -1
    return float(centres[np.argmax(between)])


def _central_component(mask: np.ndarray) -> np.ndarray:
    """The connected component with the best size x closeness-to-centre score."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    ids = np.arange(1, count + 1)
    sizes = ndimage.sum(mask, labels, ids)
    centres = np.array(ndimage.center_of_mass(mask, labels, ids))
    half = np.array(mask.shape) / 2
    distance = np.hypot(*((centres - half) / half).T)
    return labels == ids[np.argmax(sizes * np.exp(-((distance / 0.5) ** 2)))]


def nucleus_mask(image: np.ndarray) -> np.ndarray:
    """Automatic nucleus mask of a centred stained cell, uint8 (H, W, 3) -> bool (H, W).

    The nucleus is dark purple: blue in excess of red plus darkness in green. Otsu's
    threshold on that (smoothed) feature, an opening, the largest component near the
    centre, a closing and hole filling.
    """
    rgb = image.astype(np.float32)
    feature = ndimage.gaussian_filter(rgb[..., 2] - rgb[..., 0] + 255 - rgb[..., 1], 1.0)
    mask = ndimage.binary_opening(feature > otsu_threshold(feature), iterations=2)
    mask = _central_component(mask)
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=3))


def cell_mask(image: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Automatic whole-cell mask: red-channel darkness (nucleus and cytoplasm absorb red, red
    cells and background little) above Otsu's threshold of the non-nuclear pixels, the
    components touching the nucleus, closed and filled."""
    darkness = ndimage.gaussian_filter(255 - image[..., 0].astype(np.float32), 1.5)
    outside = darkness[~nucleus] if (~nucleus).any() else darkness
    mask = ndimage.binary_opening(darkness > otsu_threshold(outside), iterations=2) | nucleus
    labels, _ = ndimage.label(mask)
    touching = np.unique(labels[nucleus])
    mask = np.isin(labels, touching[touching > 0])
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=3))


def read_expert_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus, cell) bool masks from an ALL-IDB2-style mask: nucleus (0,255,255),
    cytoplasm (0,0,255), background (255,255,255)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except OSError as error:
        raise FewcellsError(f"{path}: cannot read the expert mask: {error}") from error
    red_low, green_high, blue_high = rgb[..., 0] < 128, rgb[..., 1] >= 128, rgb[..., 2] >= 128
    nucleus = red_low & green_high & blue_high
    return nucleus, nucleus | (red_low & ~green_high & blue_high)


def find_mask(masks_dir: Path, image_id: str) -> Path:
    """The mask file of `image_id` in `masks_dir` (same relative name, any image suffix)."""
    for suffix in MASK_EXTENSIONS:
        path = masks_dir / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise FewcellsError(
        f"{masks_dir}: no expert mask for image {image_id!r} "
        f"(looked for {image_id}{{{','.join(MASK_EXTENSIONS)}}})"
    )


def fit_mask(mask: np.ndarray, size: int, fit: str) -> np.ndarray:
    """A bool mask brought to the store's (size, size) the way `store.fit_image` fits images."""
    from fewcells.data.store import fit_image

    if fit == "resize":
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (size, size), Image.Resampling.NEAREST
        )
        return np.asarray(resized) > 127
    return fit_image(mask[..., None], size, fit)[..., 0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two bool masks (1 when both are empty)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def positive_share(relevance: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance of a (H, W) map that falls inside `mask` (NaN if none)."""
    positive = np.clip(relevance, 0, None)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else float("nan")


def region_shares(relevance: np.ndarray, masks: dict) -> dict[str, float]:
    """Share of positive relevance of a (H, W) map inside the nucleus and the cell, and their
    area fractions, per mask source of `masks` ({source: (nucleus, cell)})."""
    shares = {}
    for source, (nucleus, cell) in masks.items():
        shares[f"share_nucleus_{source}"] = positive_share(relevance, nucleus)
        shares[f"share_cell_{source}"] = positive_share(relevance, cell)
        shares[f"nucleus_area_{source}"] = nucleus.mean()
        shares[f"cell_area_{source}"] = cell.mean()
    return shares


# ----------------------------------------------------------------------------- one fold


def _load_network(path: Path) -> torch.nn.Module:
    from fewcells.training.module import CellClassifier

    if not path.is_file():
        raise FewcellsError(f"{path}: no trained network (model.ckpt) for explain")
    try:
        return CellClassifier.from_checkpoint(path, map_location="cpu").model.eval()
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        raise FewcellsError(f"{path}: cannot load the network: {error}") from error


def fold_images(store_dir: Path, folds_csv: Path, fold: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The memory-mapped store and the fold's rows (image_id, target, class_name, role,
    store_row), sorted by image_id."""
    images, index = open_store(store_dir)
    folds = read_table(folds_csv, FOLD_COLUMNS)
    frame = folds[folds["fold"] == fold].sort_values("image_id", ignore_index=True)
    if frame.empty:
        raise FewcellsError(f"{folds_csv}: no rows for fold {fold}")
    rows = dict(zip(index["image_id"].astype(str), index["row"], strict=True))
    missing = sorted(set(frame["image_id"].astype(str)) - set(rows))
    if missing:
        raise FewcellsError(
            f"{store_dir / 'index.csv'}: image_id(s) of {folds_csv} missing: {missing[:3]}"
        )
    frame["store_row"] = frame["image_id"].astype(str).map(rows)
    return images, frame


def example_cells(frame: pd.DataFrame, cells: Sequence[str] | None) -> pd.DataFrame:
    """The configured image ids (any of the fold's images), or the first test image (by id)
    of each class in target order."""
    if cells:
        unknown = [c for c in cells if c not in set(frame["image_id"])]
        if unknown:
            raise FewcellsError(
                f"config key explain.cells: image_id(s) {unknown} are not in the "
                f"fold (e.g. {frame['image_id'].iloc[0]!r})"
            )
        return frame.set_index("image_id").loc[list(cells)].reset_index()
    test = frame[frame["role"] == "test"].sort_values(["target", "image_id"])
    return test.groupby("target", sort=True).head(1).reset_index(drop=True)


def _masks(image: np.ndarray, image_id: str, masks_dir: Path | None, fit: str) -> dict:
    """Automatic (and expert, where a mask folder is given) nucleus and cell masks."""
    nucleus = nucleus_mask(image)
    masks = {"auto": (nucleus, cell_mask(image, nucleus))}
    if masks_dir is not None:
        expert = read_expert_mask(find_mask(masks_dir, image_id))
        masks["expert"] = tuple(fit_mask(m, image.shape[0], fit) for m in expert)
    return masks


def mask_table(image_ids: Sequence[str], masks: dict[str, dict]) -> pd.DataFrame:
    """Per image: area fractions of the nucleus and cell masks, and Dice auto vs expert."""
    rows = []
    for image_id in image_ids:
        row = {"image_id": image_id}
        for source, (nucleus, cell) in masks[image_id].items():
            row[f"nucleus_area_{source}"] = nucleus.mean()
            row[f"cell_area_{source}"] = cell.mean()
        if "expert" in masks[image_id]:
            (auto_n, auto_c), (exp_n, exp_c) = masks[image_id]["auto"], masks[image_id]["expert"]
            row["dice_nucleus"], row["dice_cell"] = dice(auto_n, exp_n), dice(auto_c, exp_c)
        rows.append(row)
    return pd.DataFrame(rows)


def relevance_summary(shares: pd.DataFrame) -> pd.DataFrame:
    """Per composite, size, region and mask source: mean, s.d. and count of the
    positive-relevance share over images, the mean area fraction of that region over the same
    images (the share of uniform relevance) and the enrichment mean / area_mean (1: the region
    gets no more relevance than its area)."""
    rows = []
    for (composite, size), group in shares.groupby(["composite", "size"], sort=False):
        for column in [c for c in shares.columns if c.startswith("share_")]:
            _, region, source = column.split("_")
            values = group[column].dropna()
            area = group.loc[values.index, f"{region}_area_{source}"].mean()
            rows.append(
                {
                    "composite": composite,
                    "size": size,
                    "region": region,
                    "mask": source,
                    "mean": values.mean(),
                    "sd": values.std(ddof=1) if len(values) > 1 else float("nan"),
                    "median": values.median(),
                    "n_images": len(values),
                    "area_mean": area,
                    "enrichment": values.mean() / area if area > 0 else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def explain_fold(
    store_dir: str | os.PathLike,
    folds_dir: str | os.PathLike,
    fold: int,
    train_root: str | os.PathLike,
    sizes: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    settings: dict,
    experiment: str,
    masks_dir: str | os.PathLike | None = None,
    fit: str = "pad",
    dpi: int = 150,
) -> pd.DataFrame:
    """Relevance maps, relevance shares and their figures for the networks of one fold.

    Writes to out_dir: relevance_maps.png (LRP with settings["composite"]),
    relevance_shares.csv (per composite, size and test image), relevance_summary.csv (per
    composite and size), relevance_shares.png and masks.csv (mask areas, Dice). Shares are
    computed for settings["share_composites"] and the drawn composite. Returns the summary.
    """
    from fewcells.explain import plots as plots_explain

    settings = {**DEFAULT_SETTINGS, **settings}
    store_dir, folds_dir, out_dir = Path(store_dir), Path(folds_dir), Path(out_dir)
    masks_dir = Path(masks_dir) if masks_dir else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise FewcellsError(f"datasets.<name>.masks: {masks_dir} is not a folder")
    class_names, _ = read_classes(folds_dir / "classes.json")
    images, frame = fold_images(store_dir, folds_dir / "folds.csv", fold)
    test = frame[frame["role"] == "test"].reset_index(drop=True)
    examples = example_cells(frame, settings.get("cells"))
    wanted = pd.concat([test, examples]).drop_duplicates("image_id")
    pixels = {
        i: np.asarray(images[r])
        for i, r in zip(wanted["image_id"], wanted["store_row"], strict=True)
    }
    masks = {i: _masks(pixels[i], i, masks_dir, fit) for i in wanted["image_id"]}
    use_predicted = settings["target"] == "predicted"
    drawn = settings["composite"]
    composites = list(dict.fromkeys([*settings["share_composites"], drawn]))
    labels = {
        name: describe_composite(name, settings["epsilon"], settings["gamma"])
        for name in composites
    }
    share_rows = {name: [] for name in composites}
    maps = {}
    for size in sizes:
        model = _load_network(Path(train_root) / f"n{size}" / f"fold{fold}" / "model.ckpt")
        rules = {
            name: make_composite(
                name,
                settings["epsilon"],
                canonizers_for(model),
                gamma=settings["gamma"],
                bounds=input_bounds(model),
            )
            for name in composites
        }
        for start in range(0, len(wanted), BATCH_SIZE):
            part = wanted.iloc[start : start + BATCH_SIZE]
            batch = np.stack([pixels[i] for i in part["image_id"]])
            x = to_model_input(torch.from_numpy(batch))
            with torch.no_grad():
                predicted = model(x).argmax(dim=1)
            targets = predicted if use_predicted else torch.tensor(part["target"].to_numpy())
            is_example = part["image_id"].isin(examples["image_id"]).to_numpy()
            is_test = (part["role"] == "test").to_numpy()
            for name, composite in rules.items():
                relevance, logits = lrp(model, x, targets, composite)
                relevance = relevance.sum(axis=1)
                if name == drawn and is_example.any():
                    grads = saliency(model, x[is_example], targets[is_example])
                    for image_id, grad, rel, pred in zip(
                        part["image_id"][is_example],
                        grads,
                        relevance[is_example],
                        predicted[is_example],
                        strict=True,
                    ):
                        maps[(image_id, size)] = (grad, rel, class_names[int(pred)])
                for j in np.flatnonzero(is_test):
                    row = part.iloc[j]
                    share_rows[name].append(
                        {
                            "fold": fold,
                            "composite": name,
                            "size": size,
                            "image_id": row["image_id"],
                            "class_name": row["class_name"],
                            "target": int(targets[j]),
                            "predicted": class_names[int(predicted[j])],
                            "logit": float(logits[j]),
                            "relevance_sum": float(relevance[j].sum()),
                            **region_shares(relevance[j], masks[row["image_id"]]),
                        }
                    )
        log.info(
            "explain: fold %d size %d: %d test images, composites %s",
            fold,
            size,
            len(test),
            ", ".join(composites),
        )
    shares = pd.DataFrame([row for name in composites for row in share_rows[name]])
    summary = relevance_summary(shares)
    summary.insert(0, "fold", fold)
    summary["target_logit"] = settings["target"]
    figures = {
        "relevance_maps.png": plots_explain.relevance_maps(
            [
                plots_explain.Example(
                    image_id=row.image_id,
                    class_name=row.class_name,
                    image=pixels[row.image_id],
                    masks={s: m[0] for s, m in masks[row.image_id].items()},
                    maps={size: maps[(row.image_id, size)] for size in sizes},
                )
                for row in examples.itertuples()
            ],
            sizes,
            experiment=experiment,
            fold=fold,
            target=settings["target"],
            lrp_label=labels[drawn],
        ),
        "relevance_shares.png": plots_explain.relevance_shares(
            summary, experiment=experiment, fold=fold, labels=labels
        ),
    }
    write_csv(shares, out_dir / "relevance_shares.csv")
    write_csv(summary, out_dir / "relevance_summary.csv")
    write_csv(mask_table(list(test["image_id"]), masks), out_dir / "masks.csv")
    for name, figure in figures.items():
        write_png(figure, out_dir / name, dpi)
    return summary
