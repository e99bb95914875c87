"""Nucleus and cell masks of a stained cell (automatic, and from expert mask files) and the
share of a relevance map inside them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from fewcells.data.store import fit_image
from fewcells.errors import FewcellsError

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".jpg")


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


def image_masks(image: np.ndarray, image_id: str, masks_dir: Path | None, fit: str) -> dict:
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
