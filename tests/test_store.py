from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewcells.data.store import build_store, fit_image, open_store
from fewcells.errors import FewcellsError


def test_fit_pad_repeats_edges_and_crops_centre():
    image = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)
    padded = fit_image(image, 6, "pad")
    assert padded.shape == (6, 6, 3)
    np.testing.assert_array_equal(padded[1:4, 1:5], image)
    np.testing.assert_array_equal(padded[0, 1:5], image[0])  # edge row repeated
    np.testing.assert_array_equal(padded[:, 0], padded[:, 1])
    big = np.random.default_rng(0).integers(0, 255, (10, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_image(big, 4, "pad"), big[3:7, 3:7])
    assert fit_image(big, 7, "resize").shape == (7, 7, 3)
    with pytest.raises(FewcellsError, match="store.fit"):
        fit_image(big, 4, "stretch")


def test_build_and_open_store(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, shape in enumerate([(20, 20), (18, 20), (20, 20)]):
        pixels = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        path = tmp_path / f"im{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image_id": f"im{i}", "path": str(path), "label": "x"})
    out = tmp_path / "store"
    build_store(pd.DataFrame(rows[::-1]), out, 20, "pad")
    images, index = open_store(out)
    assert images.shape == (3, 20, 20, 3) and images.dtype == np.uint8
    assert list(index.image_id) == ["im0", "im1", "im2"]
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(rows[0]["path"])))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_store_leaves_nothing(tmp_path):
    bad = pd.DataFrame([{"image_id": "x", "path": str(tmp_path / "missing.png"), "label": "x"}])
    with pytest.raises(FewcellsError):
        build_store(bad, tmp_path / "store", 20)
    assert list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    kept = pd.DataFrame([{"image_id": "a", "path": str(tmp_path / "a.png"), "label": "x"}])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 10))
    with pytest.raises(FewcellsError, match=r"store .*: needs 1 MiB, only 0 MiB free"):
        build_store(kept, tmp_path / "store", 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize("fit", ["pad", "resize"])
def test_far_smaller_images_are_named_and_counted(tmp_path, caplog, fit):
    rng = np.random.default_rng(0)
    rows = []
    for name, side in [("big", 60), ("half", 30), ("small", 29), ("tiny", 10)]:
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (side, 64, 3), dtype=np.uint8)).save(path)
        rows.append({"image_id": name, "path": str(path), "label": "x"})
    with caplog.at_level("WARNING"):
        build_store(pd.DataFrame(rows), tmp_path / "store", 60, fit)
    messages = [record.getMessage() for record in caplog.records]
    for name in ("small", "tiny"):  # a side below half of 60 px
        assert any(f"{name}.png" in m and "far smaller than image.size 60" in m for m in messages)
    assert not any("big.png" in m or "half.png" in m for m in messages)
    info = json.loads((tmp_path / "store" / "store_info.json").read_text())
    assert info["small_images"] == 2 and info["small_image_ids"] == ["small", "tiny"]
