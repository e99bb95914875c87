from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewcells.data.dedup import DedupSettings, candidate_pairs, compare_images, find_duplicates
from fewcells.errors import FewcellsError


def _scene(seed: int, size: int = 300) -> np.ndarray:
    """A random smooth 'smear' with blobs: distinct scenes for distinct seeds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 220.0)
    for _ in range(25):
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(10, 40)]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image[inside] = rng.uniform(60, 200, 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write(tmp: Path, name: str, pixels: np.ndarray) -> str:
    path = tmp / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    rows = {}
    for seed in range(8):
        rows[f"im{seed}"] = _write(tmp_path, f"im{seed}", _scene(seed)[:257, :257])
    big = _scene(100)
    rows["orig"] = _write(tmp_path, "orig", big[:257, :257])
    rows["shifted"] = _write(tmp_path, "shifted", big[6:263, 3:260])
    rows["zcopy"] = _write(tmp_path, "zcopy", _scene(3)[:257, :257])
    noisy = big[:257, :257].astype(float) * 1.08 + np.random.default_rng(7).normal(
        0, 3, (257, 257, 3)
    )
    rows["retake"] = _write(tmp_path, "retake", np.clip(noisy, 0, 255).astype(np.uint8))
    return pd.DataFrame({"image_id": list(rows), "path": list(rows.values()), "label": "x"})


def test_finds_exact_shifted_and_retaken_duplicates(images):
    pairs, kept = find_duplicates(images, DedupSettings())
    removed = set(images["image_id"]) - set(kept["image_id"])
    assert removed == {"shifted", "retake", "zcopy"}
    assert len(kept) == len(images) - 3
    confirmed = pairs[pairs["confirmed"]]
    shifted = confirmed[(confirmed.image_a == "orig") & (confirmed.image_b == "shifted")].iloc[0]
    assert (shifted.shift_y, shifted.shift_x) == (6, 3)
    assert shifted.mean_abs_diff == pytest.approx(0.0)
    # every removed image is confirmed against a kept one
    for image in removed:
        partners = confirmed[(confirmed.image_b == image) & confirmed.image_a.isin(kept.image_id)]
        assert len(partners) >= 1


def test_distinct_scenes_are_not_confirmed(images):
    settings = DedupSettings(max_distance=64)  # every pair becomes a candidate
    pairs, _ = find_duplicates(images, settings)
    distinct = pairs[pairs.image_a.str.startswith("im") & pairs.image_b.str.startswith("im")]
    distinct = distinct[~((distinct.image_a == "im3") & (distinct.image_b == "zcopy"))]
    assert len(distinct) > 20
    assert not distinct["confirmed"].any()


def test_threshold_zero_keeps_only_hash_identical_candidates(images):
    pairs, kept = find_duplicates(images, DedupSettings(max_distance=0))
    assert set(pairs["hash_distance"]) <= {0}
    assert "zcopy" not in set(kept["image_id"])


def test_candidate_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    hashes[10] = hashes[200]
    hashes[11] = hashes[12]
    hashes[11, 0] ^= 1
    found = {(i, j) for i, j, _ in candidate_pairs(hashes, 6, chunk=37)}
    expected = {
        (i, j)
        for i in range(300)
        for j in range(i + 1, 300)
        if np.unpackbits(hashes[i] ^ hashes[j]).sum() <= 6
    }
    assert found == expected
    assert (10, 200) in found and (11, 12) in found


def test_compare_rejects_low_overlap():
    scene = _scene(5)
    measures = compare_images(scene[:100, :100], scene[150:250, 150:250], DedupSettings())
    assert measures["correlation"] == 0.0


def test_settings_name_bad_keys():
    with pytest.raises(FewcellsError, match="unknown key"):
        DedupSettings.from_config({"max_dist": 3})
    with pytest.raises(FewcellsError, match="dedup.hash"):
        DedupSettings.from_config({"hash": "md5"})


@pytest.mark.realdata
def test_all_idb2_keeps_250(real_data):
    from fewcells.data.manifest import build_manifest

    manifest = build_manifest(real_data / "ALL_IDB2" / "img", "all_idb2")
    pairs, kept = find_duplicates(manifest, DedupSettings(), workers=2)
    assert len(manifest) == 260
    assert len(kept) == 250
    removed = set(manifest.image_id) - set(kept.image_id)
    confirmed = pairs[pairs.confirmed]
    for image in removed:  # each removed image is a confirmed duplicate of a kept one
        assert confirmed[(confirmed.image_b == image) & confirmed.image_a.isin(kept.image_id)].size
    # the byte-identical pair and the shifted crops are among them
    assert {"Im257_0", "Im256_0", "Im258_0", "Im259_0", "Im260_0"} <= removed


def test_duplicates_with_different_labels_are_reported(images, caplog):
    images = images.copy()
    images.loc[images["image_id"] == "shifted", "label"] = "y"
    with caplog.at_level("WARNING"):
        pairs, _ = find_duplicates(images, DedupSettings())
    with_shifted = pairs["confirmed"] & (pairs["image_b"] == "shifted")
    assert pairs["label_conflict"].tolist() == with_shifted.tolist()
    conflicts = pairs[pairs["label_conflict"]]
    assert ["orig", "shifted", "x", "y"] in conflicts[
        ["image_a", "image_b", "label_a", "label_b"]
    ].values.tolist()
    message = next(r.getMessage() for r in caplog.records if "different labels" in r.getMessage())
    assert "orig.png (x)" in message and "shifted.png (y)" in message


def test_settings_name_wrong_types():
    with pytest.raises(FewcellsError, match="dedup.max_distance must be a whole number"):
        DedupSettings.from_config({"max_distance": "16"})
    with pytest.raises(FewcellsError, match="dedup config: needs a mapping"):
        DedupSettings.from_config([1, 2])
    assert DedupSettings.from_config({"min_overlap": 1}).min_overlap == 1
