"""Tests for fewcells.data.demo: the synthetic ALL-IDB2-like data set."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewcells.data import demo
from fewcells.data.demo import DEMO_CLASSES, DUPLICATE_KINDS, MASK_COLOURS, generate_demo
from fewcells.errors import FewcellsError

N_PER_CLASS = 4
N_DUPLICATES = 6
SIZE = 257


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo") / "data"
    labels = generate_demo(out, seed=3, n_per_class=N_PER_CLASS, n_duplicates=N_DUPLICATES)
    return out, labels


def image(root: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(root / path))


def mask(root: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(root / "masks" / Path(path).with_suffix(".png")).convert("RGB"))


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def grey(array: np.ndarray) -> np.ndarray:
    return array.astype(float).mean(axis=-1)


def linear_fit_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference left after matching b to a by brightness and contrast (b ~ alpha a + beta)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    alpha = (a @ b) / (a @ a)
    return float(np.sqrt(np.mean((b - alpha * a) ** 2)))


def overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The parts of a and b that show the same place when b[y, x] = a[y + dy, x + dx]."""
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    a, b = a[:h, :w], b[:h, :w]
    return (
        a[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)],
        b[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)],
    )


def test_files_labels_and_masks_are_consistent(demo_set):
    root, labels = demo_set
    assert labels.equals(pd.read_csv(root / "labels.csv"))
    assert list(labels.columns) == ["path", "label"]
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("*/*.tif")}
    assert on_disk == set(labels.path)
    assert len(labels) == N_PER_CLASS * len(DEMO_CLASSES) + N_DUPLICATES
    for path, label in labels.itertuples(index=False):
        assert re.fullmatch(rf"{label}/{label}_\d{{4}}\.tif", path)
        pixels = image(root, path)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert max(pixels.shape[:2]) == SIZE and min(pixels.shape[:2]) >= 0.75 * SIZE
        assert mask(root, path).shape == pixels.shape
    # nothing left behind next to the output folder
    assert [p.name for p in root.parent.iterdir()] == ["data"]


def test_file_numbers_do_not_give_duplicates_away(demo_set):
    root, labels = demo_set
    for _, paths in labels.groupby("label").path:
        numbers = sorted(int(re.search(r"_(\d{4})\.tif$", p).group(1)) for p in paths)
        assert numbers == list(range(len(paths)))
    duplicates = pd.read_csv(root / "planted_duplicates.csv")
    original_numbers = [int(p[-8:-4]) for p in duplicates.original]
    duplicate_numbers = [int(p[-8:-4]) for p in duplicates.duplicate]
    assert min(duplicate_numbers) < N_PER_CLASS  # not all after the originals
    assert any(d != o + 1 for o, d in zip(original_numbers, duplicate_numbers, strict=True))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kwargs = dict(n_per_class=2, image_size=96, n_duplicates=3)
    generate_demo(tmp_path / "a", seed=7, **kwargs)
    generate_demo(tmp_path / "b", seed=7, **kwargs)
    generate_demo(tmp_path / "c", seed=8, **kwargs)
    first, again, other = (file_hashes(tmp_path / name) for name in "abc")
    # 13 images, their masks, labels.csv, planted_duplicates.csv, the output marker
    assert len(first) == 2 * 13 + 3 and ".fewcells-output" in first
    assert first == again
    images = {h for p, h in first.items() if p.endswith(".tif")}
    other_images = {h for p, h in other.items() if p.endswith(".tif")}
    assert len(images) == 12  # only the one exact copy shares its bytes
    assert not images & other_images


def test_masks_use_the_three_colours_and_match_the_cells(demo_set):
    root, labels = demo_set
    colours = np.array(list(MASK_COLOURS.values()))
    nucleus_fraction: dict[str, list[float]] = {}
    for path, label in labels.itertuples(index=False):
        m = mask(root, path)
        assert (m[..., None, :] == colours).all(-1).any(-1).all(), path
        nucleus = (m == MASK_COLOURS["nucleus"]).all(-1)
        background = (m == MASK_COLOURS["background"]).all(-1)
        assert nucleus.any() and background.any()
        nucleus_fraction.setdefault(label, []).append(nucleus.mean())
        # the mask sits on the image: the stained nucleus is much darker than the background
        brightness = grey(image(root, path))
        assert brightness[nucleus].mean() < brightness[background].mean() - 40, path
    blast, lymphocyte = np.mean(nucleus_fraction["blast"]), np.mean(nucleus_fraction["lymphocyte"])
    assert blast > 1.5 * lymphocyte


def test_border_crops_are_smaller_on_one_side(demo_set):
    root, labels = demo_set
    shapes = [image(root, p).shape[:2] for p in labels.path]
    smaller = [s for s in shapes if s != (SIZE, SIZE)]
    assert len(smaller) == round(demo.BORDER_CROP_FRACTION * N_PER_CLASS * len(DEMO_CLASSES)) == 1
    assert all(SIZE in s for s in smaller)


def test_planted_duplicates_listed_with_kinds(demo_set):
    root, labels = demo_set
    duplicates = pd.read_csv(root / "planted_duplicates.csv")
    assert list(duplicates.columns) == ["original", "duplicate", "kind"]
    assert len(duplicates) == N_DUPLICATES
    assert duplicates.kind.value_counts().to_dict() == dict.fromkeys(DUPLICATE_KINDS, 2)
    label_of = dict(zip(labels.path, labels.label, strict=True))
    for row in duplicates.itertuples():
        assert label_of[row.original] == label_of[row.duplicate]
    assert len(set(duplicates.original) | set(duplicates.duplicate)) == 2 * N_DUPLICATES


def test_exact_duplicates_are_byte_copies(demo_set):
    root, _ = demo_set
    duplicates = pd.read_csv(root / "planted_duplicates.csv")
    for row in duplicates[duplicates.kind == "exact"].itertuples():
        assert (root / row.original).read_bytes() == (root / row.duplicate).read_bytes()


def test_shifted_duplicates_are_the_same_pixels_at_an_offset(demo_set):
    root, _ = demo_set
    duplicates = pd.read_csv(root / "planted_duplicates.csv")
    for row in duplicates[duplicates.kind == "shifted"].itertuples():
        original, duplicate = image(root, row.original), image(root, row.duplicate)
        assert not np.array_equal(original, duplicate)
        patch = duplicate[110:140, 110:140]  # find it in the original, then check the overlap
        offsets = [
            (dy, dx)
            for dy, dx in itertools.product(range(-10, 11), repeat=2)
            if np.array_equal(patch, original[110 + dy : 140 + dy, 110 + dx : 140 + dx])
            and np.array_equal(*overlap(original, duplicate, dy, dx))
        ]
        assert len(offsets) == 1, row
        dy, dx = offsets[0]
        assert 3 <= max(abs(dy), abs(dx)) <= 5
        assert np.array_equal(*overlap(mask(root, row.original), mask(root, row.duplicate), dy, dx))


def test_rephotographed_duplicates_match_up_to_brightness_and_noise(demo_set):
    root, labels = demo_set
    duplicates = pd.read_csv(root / "planted_duplicates.csv")
    for row in duplicates[duplicates.kind == "rephotographed"].itertuples():
        original, duplicate = grey(image(root, row.original)), grey(image(root, row.duplicate))
        assert not np.array_equal(original, duplicate)
        best = min(
            linear_fit_residual(*overlap(original, duplicate, dy, dx))
            for dy, dx in itertools.product(range(-3, 4), repeat=2)
        )
        assert best < 5, row


def test_non_duplicates_are_different_scenes(demo_set):
    root, labels = demo_set
    duplicates = pd.read_csv(root / "planted_duplicates.csv")
    planted = {
        frozenset(pair) for pair in zip(duplicates.original, duplicates.duplicate, strict=True)
    }
    pictures = {p: grey(image(root, p)) for p in labels.path}
    for a, b in itertools.combinations(labels.path, 2):
        if frozenset((a, b)) not in planted:
            assert linear_fit_residual(*overlap(pictures[a], pictures[b], 0, 0)) > 8, (a, b)


def test_counts_per_class_from_a_dict(tmp_path):
    labels = generate_demo(
        tmp_path / "d", n_per_class={"lymphocyte": 3, "blast": 2}, image_size=64, n_duplicates=0
    )
    assert labels.label.value_counts().to_dict() == {"lymphocyte": 3, "blast": 2}
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        ".fewcells-output",
        "blast",
        "labels.csv",
        "lymphocyte",
        "masks",
        "planted_duplicates.csv",
    ]
    assert pd.read_csv(tmp_path / "d" / "planted_duplicates.csv").empty


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    photograph = demo.photograph

    def failing_photograph(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("camera broke")
        return photograph(*args, **kwargs)

    monkeypatch.setattr(demo, "photograph", failing_photograph)
    with pytest.raises(RuntimeError, match="camera broke"):
        generate_demo(tmp_path / "out", n_per_class=2, image_size=64, n_duplicates=0)
    assert len(calls) == 4
    assert list(tmp_path.iterdir()) == []


def test_regenerating_replaces_a_previous_demo(tmp_path):
    generate_demo(tmp_path / "out", seed=1, n_per_class=1, image_size=64, n_duplicates=0)
    labels = generate_demo(tmp_path / "out", seed=2, n_per_class=2, image_size=64, n_duplicates=1)
    assert len(pd.read_csv(tmp_path / "out" / "labels.csv")) == len(labels) == 11


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["blast", "platelet"]}, "platelet"),
        ({"classes": ["blast", "blast"]}, "twice"),
        ({"n_per_class": {"blast": 2}, "classes": ["blast", "monocyte"]}, "monocyte"),
        ({"n_per_class": 0}, "n_per_class"),
        ({"n_per_class": 1, "n_duplicates": 6}, "n_duplicates"),
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_reported(tmp_path, kwargs, message):
    with pytest.raises(FewcellsError, match=message):
        generate_demo(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(FewcellsError, match="not a demo data set"):
        generate_demo(tmp_path / "mine", n_per_class=1, image_size=64, n_duplicates=0)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
