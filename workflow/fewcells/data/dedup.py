"""Near-duplicate removal: perceptual-hash candidates, confirmed at the pixel level.

ALL-IDB2 duplicates are not all byte-identical: some are the same pixels cropped at a
shifted position, some the same cell photographed twice. A perceptual hash with a
Hamming-distance threshold finds candidate pairs; each candidate is then aligned by phase
correlation and accepted only if the overlapping pixels agree (grey-level correlation) and
share their fine structure (correlation of high-pass filtered images, which two different
cells of the same type do not).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter

from fewcells.contracts import PAIR_COLUMNS
from fewcells.data.manifest import load_rgb
from fewcells.errors import FewcellsError

HASHES = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "average_hash": imagehash.average_hash,
}
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DedupSettings:
    """Thresholds of the two stages; the defaults reproduce the paper's 250 ALL-IDB2 images."""

    hash: str = "phash"
    hash_size: int = 8
    max_distance: int = 10
    max_shift: int = 64
    min_overlap: float = 0.8
    min_correlation: float = 0.95
    min_highpass_correlation: float = 0.25

    @classmethod
    def from_config(cls, cfg: dict | None) -> DedupSettings:
        """Build from the `dedup` config section, naming an unknown key or hash."""
        if cfg is not None and not isinstance(cfg, dict):
            raise FewcellsError(f"dedup config: needs a mapping of settings, not {cfg!r}")
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise FewcellsError(f"unknown key(s) in dedup config: {sorted(unknown)}")
        for field in fields(cls):
            value = cfg.get(field.name, field.default)
            wanted, name = {
                "str": (str, "string"),
                "int": (int, "whole number"),
                "float": ((int, float), "number"),
            }[field.type]
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise FewcellsError(f"dedup.{field.name} must be a {name}, not {value!r}")
        settings = cls(**cfg)
        if settings.hash not in HASHES:
            raise FewcellsError(
                f"dedup.hash must be one of {sorted(HASHES)}, not {settings.hash!r}"
            )
        return settings


def _hash_bits(path: str, method: str, hash_size: int) -> np.ndarray:
    image = Image.fromarray(load_rgb(path))
    return np.packbits(HASHES[method](image, hash_size=hash_size).hash.ravel())


def compute_hashes(paths: list[str], settings: DedupSettings, workers: int = 1) -> np.ndarray:
    """Perceptual hashes as packed bits, one row per image (n, hash_size**2 / 8) uint8."""
    args = ([settings.hash] * len(paths), [settings.hash_size] * len(paths))
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_hash_bits, paths, *args, chunksize=64))
    else:
        rows = list(map(_hash_bits, paths, *args))
    return np.stack(rows) if rows else np.zeros((0, 1), np.uint8)


def candidate_pairs(
    hashes: np.ndarray, max_distance: int, chunk: int = 512
) -> Iterable[tuple[int, int, int]]:
    """Yield (i, j, distance) with i < j and Hamming distance <= max_distance.

    Compares blocks of `chunk` rows against the rest, so memory stays at chunk x n.
    """
    n = len(hashes)
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk]
        distances = np.bitwise_count(block[:, None, :] ^ hashes[None, start:, :]).sum(axis=2)
        rows, cols = np.nonzero(distances <= max_distance)
        for r, c in zip(rows, cols, strict=True):
            i, j = start + r, start + c
            if i < j:
                yield int(i), int(j), int(distances[r, c])


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ GREY_WEIGHTS


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def align(a: np.ndarray, b: np.ndarray, max_shift: int) -> tuple[int, int]:
    """Shift (dy, dx) by phase correlation: a[y, x] best matches b[y - dy, x - dx]."""
    height = max(a.shape[0], b.shape[0]) * 2
    width = max(a.shape[1], b.shape[1]) * 2
    padded_a = np.zeros((height, width), np.float32)
    padded_b = np.zeros((height, width), np.float32)
    padded_a[: a.shape[0], : a.shape[1]] = a - a.mean()
    padded_b[: b.shape[0], : b.shape[1]] = b - b.mean()
    cross = np.fft.rfft2(padded_a) * np.conj(np.fft.rfft2(padded_b))
    cross /= np.abs(cross) + 1e-9
    surface = np.fft.fftshift(np.fft.irfft2(cross, s=(height, width)))
    cy, cx = height // 2, width // 2
    m = max_shift
    window = surface[cy - m : cy + m + 1, cx - m : cx + m + 1]
    dy, dx = np.unravel_index(np.argmax(window), window.shape)
    return int(dy) - m, int(dx) - m


def compare_images(a: np.ndarray, b: np.ndarray, settings: DedupSettings) -> dict:
    """Align two RGB images and measure how well the overlapping pixels agree."""
    grey_a, grey_b = _grey(a), _grey(b)
    dy, dx = align(grey_a, grey_b, settings.max_shift)
    ya, xa, yb, xb = max(0, dy), max(0, dx), max(0, -dy), max(0, -dx)
    h = min(grey_a.shape[0] - ya, grey_b.shape[0] - yb)
    w = min(grey_a.shape[1] - xa, grey_b.shape[1] - xb)
    overlap = max(h, 0) * max(w, 0) / min(grey_a.size, grey_b.size)
    result = {"shift_y": dy, "shift_x": dx, "overlap": overlap}
    if overlap < settings.min_overlap:
        return result | {"correlation": 0.0, "highpass_correlation": 0.0, "mean_abs_diff": np.nan}
    crop_a = np.s_[ya : ya + h, xa : xa + w]
    crop_b = np.s_[yb : yb + h, xb : xb + w]
    highpass_a = grey_a - gaussian_filter(grey_a, 3)
    highpass_b = grey_b - gaussian_filter(grey_b, 3)
    return result | {
        "correlation": _correlation(grey_a[crop_a], grey_b[crop_b]),
        "highpass_correlation": _correlation(highpass_a[crop_a], highpass_b[crop_b]),
        "mean_abs_diff": float(np.abs(a[crop_a].astype(np.float32) - b[crop_b]).mean()),
    }


def _is_confirmed(measures: dict, settings: DedupSettings) -> bool:
    return (
        measures["overlap"] >= settings.min_overlap
        and measures["correlation"] >= settings.min_correlation
        and measures["highpass_correlation"] >= settings.min_highpass_correlation
    )


def find_duplicates(
    manifest: pd.DataFrame, settings: DedupSettings, workers: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (pairs, kept): every candidate pair with its measures, and the kept images.

    Images are visited in image_id order; one is removed when it forms a confirmed pair
    with an image already kept, so every removed image is a confirmed duplicate of a
    kept one and no two kept images form a confirmed pair. A confirmed pair whose images
    carry different labels is marked `label_conflict` and named in a warning: one of the
    labels is wrong, and the kept image's label is the one used.
    """
    manifest = manifest.sort_values("image_id").reset_index(drop=True)
    paths = manifest["path"].astype(str).tolist()
    ids = manifest["image_id"].astype(str).tolist()
    labels = manifest["label"].astype(str).tolist()
    hashes = compute_hashes(paths, settings, workers)
    records = []
    for i, j, distance in candidate_pairs(hashes, settings.max_distance):
        measures = compare_images(load_rgb(paths[i]), load_rgb(paths[j]), settings)
        confirmed = _is_confirmed(measures, settings)
        records.append(
            {"image_a": ids[i], "image_b": ids[j], "hash_distance": distance}
            | measures
            | {"confirmed": confirmed, "label_a": labels[i], "label_b": labels[j]}
            | {"label_conflict": confirmed and labels[i] != labels[j]}
        )
        if records[-1]["label_conflict"]:
            _LOG.warning(
                "duplicate images with different labels: %s (%s) and %s (%s)",
                paths[i],
                labels[i],
                paths[j],
                labels[j],
            )
    pairs = pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
    partners: dict[str, set[str]] = {}
    for a, b in pairs.loc[pairs["confirmed"], ["image_a", "image_b"]].itertuples(index=False):
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    kept_ids: set[str] = set()
    duplicate_of: dict[str, str] = {}
    for image_id in ids:
        kept_partner = sorted(partners.get(image_id, set()) & kept_ids)
        if kept_partner:
            duplicate_of[image_id] = kept_partner[0]
        else:
            kept_ids.add(image_id)
    pairs["removed"] = pairs["image_b"].map(duplicate_of).eq(pairs["image_a"])
    kept = manifest[manifest["image_id"].isin(kept_ids)].reset_index(drop=True)
    return pairs, kept
