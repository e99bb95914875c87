"""Tests for the manifest stage on small generated data sets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewcells.data.manifest import (
    MANIFEST_COLUMNS,
    build_manifest,
    load_rgb,
    read_manifest,
    write_manifest,
)
from fewcells.errors import FewcellsError

DS_STORE_BYTES = b"\x00\x00\x00\x01Bud1" + bytes(200)


def write_image(path: Path, size=(12, 10), mode="RGB", seed=0) -> Path:
    """Write a small random image (size = width, height) with PIL."""
    rng = np.random.default_rng(seed)
    width, height = size
    channels = len(Image.new(mode, (1, 1)).getbands())
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Log:
    """Collects log lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def all_idb2(tmp_path: Path) -> Path:
    root = tmp_path / "ALL_IDB2" / "img"
    write_image(root / "Im002_1.tif", seed=2)
    write_image(root / "Im001_1.tif", size=(9, 7), seed=1)
    write_image(root / "Im131_0.tif", seed=3)
    (root / ".DS_Store").write_bytes(DS_STORE_BYTES)
    (root / "Thumbs.db").write_bytes(b"junk")
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture
def pbc(tmp_path: Path) -> Path:
    root = tmp_path / "PBC"
    write_image(root / "ig" / "MMY_1.jpg", seed=1)
    write_image(root / "ig" / "PMY_2.jpeg", seed=2)
    write_image(root / "neutrophil" / "SNE_3.png", seed=3)
    write_image(root / "neutrophil" / "BNE_4.tif", seed=4)
    write_image(root / "platelet" / "7.jpg", seed=5)
    (root / "neutrophil" / "LICENSE").write_text("CC BY 4.0")
    for metadata_dir in ("__MACOSX/ig", ".ipynb_checkpoints"):
        (root / metadata_dir).mkdir(parents=True)
        (root / metadata_dir / "._MMY_1.jpg").write_bytes(DS_STORE_BYTES)
    return root


@pytest.fixture
def aml(tmp_path: Path) -> Path:
    root = tmp_path / "AML"
    write_image(root / "IG" / "PMB_0013.tiff", size=(8, 8), mode="RGBA", seed=1)
    write_image(root / "MYB" / "MYO_0135.tiff", size=(8, 8), mode="RGBA", seed=2)
    write_image(root / "BAS" / "BAS_0001.tiff", size=(8, 8), mode="RGBA", seed=3)
    (root / "annotations.dat").write_text(
        "BAS/BAS_0001.tiff BAS nan nan\n"
        "BAS/BAS_0002.tiff BAS BAS BAS\n"
        "MYO/MYO_0135.tiff MYO nan nan\n"
        "PMB/PMB_0013.tiff PMB MYO MYO\n"
    )
    (root / "abbreviations.txt").write_text("BAS Basophil\n")
    return root


def test_all_idb2_labels_from_suffix_and_ignores_non_images(all_idb2: Path) -> None:
    df = build_manifest(all_idb2, "all_idb2")
    assert list(df.columns) == MANIFEST_COLUMNS
    assert df["image_id"].tolist() == ["Im001_1", "Im002_1", "Im131_0"]
    assert df["label"].tolist() == ["blast", "blast", "healthy"]
    first = df.iloc[0]
    assert (first["width"], first["height"], first["mode"]) == (9, 7, "RGB")
    assert first["path"] == str(all_idb2 / "Im001_1.tif")
    assert Path(first["path"]).is_absolute()
    expected_sha = hashlib.sha256((all_idb2 / "Im001_1.tif").read_bytes()).hexdigest()
    assert first["sha256"] == expected_sha


def test_all_idb2_name_not_matching_pattern(all_idb2: Path) -> None:
    write_image(all_idb2 / "Im003_2.tif")
    with pytest.raises(FewcellsError, match="Im003_2.tif"):
        build_manifest(all_idb2, "all_idb2")
    log = Log()
    df = build_manifest(all_idb2, "all_idb2", on_bad_image="skip", log=log)
    assert len(df) == 3
    assert any("Im003_2.tif" in line and "ImNNN_L" in line for line in log.lines)


def test_pbc_labels_from_folders_and_subtype(pbc: Path) -> None:
    df = build_manifest(pbc, "pbc")
    assert list(df.columns) == [*MANIFEST_COLUMNS, "subtype"]
    assert df["image_id"].tolist() == [
        "ig/MMY_1",
        "ig/PMY_2",
        "neutrophil/BNE_4",
        "neutrophil/SNE_3",
        "platelet/7",
    ]
    assert df["label"].tolist() == ["ig", "ig", "neutrophil", "neutrophil", "platelet"]
    assert df["subtype"].tolist() == ["MMY", "PMY", "BNE", "SNE", ""]


@pytest.mark.parametrize("misplaced", ["stray.jpg", "ig/nested/MY_5.jpg"])
def test_pbc_image_outside_class_folder(pbc: Path, misplaced: str) -> None:
    write_image(pbc / misplaced)
    with pytest.raises(FewcellsError, match=misplaced):
        build_manifest(pbc, "pbc")
    assert len(build_manifest(pbc, "pbc", on_bad_image="skip", log=Log())) == 5


def test_aml_matches_annotations_by_file_name(aml: Path) -> None:
    df = build_manifest(aml, "aml_tcia").set_index("image_id")
    assert list(df.columns) == [
        *MANIFEST_COLUMNS[1:],
        "label_reannotation1",
        "label_reannotation2",
    ]
    assert sorted(df.index) == ["BAS/BAS_0001", "IG/PMB_0013", "MYB/MYO_0135"]
    pmb = df.loc["IG/PMB_0013"]
    assert (pmb["label"], pmb["label_reannotation1"], pmb["label_reannotation2"]) == (
        "PMB",
        "MYO",
        "MYO",
    )
    assert df.loc["MYB/MYO_0135", "label"] == "MYO"
    assert df.loc["BAS/BAS_0001", "label_reannotation1"] == ""
    assert set(df["mode"]) == {"RGBA"}


def test_aml_image_without_annotation_row(aml: Path) -> None:
    write_image(aml / "MON" / "MON_0001.tiff", mode="RGBA")
    with pytest.raises(FewcellsError, match="MON_0001.tiff"):
        build_manifest(aml, "aml_tcia")
    log = Log()
    assert len(build_manifest(aml, "aml_tcia", on_bad_image="skip", log=log)) == 3
    assert any("MON_0001.tiff" in line for line in log.lines)


def test_aml_annotations_override_and_missing(aml: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.dat"
    elsewhere.write_text(
        (aml / "annotations.dat").read_text().replace("PMB MYO MYO", "PMO nan UNC")
    )
    (aml / "annotations.dat").unlink()
    with pytest.raises(FewcellsError, match="annotations.dat"):
        build_manifest(aml, "aml_tcia")
    df = build_manifest(aml, "aml_tcia", annotations=str(elsewhere)).set_index("image_id")
    assert df.loc["IG/PMB_0013", ["label", "label_reannotation2"]].tolist() == ["PMO", "UNC"]


def test_aml_malformed_annotation_line(aml: Path) -> None:
    with (aml / "annotations.dat").open("a") as handle:
        handle.write("MON/MON_0001.tiff MON\n")
    with pytest.raises(FewcellsError, match="line 5"):
        build_manifest(aml, "aml_tcia")


def test_csv_layout_with_relative_absolute_and_extra_columns(tmp_path: Path) -> None:
    root = tmp_path / "cells"
    write_image(root / "a" / "x.png", seed=1)
    outside = write_image(tmp_path / "other" / "y.png", seed=2)
    pd.DataFrame(
        {"path": ["a/x.png", str(outside)], "label": ["blast", "healthy"], "patient": ["p1", "p2"]}
    ).to_csv(root / "labels.csv", index=False)
    df = build_manifest(root, "csv")
    assert list(df.columns) == [*MANIFEST_COLUMNS, "patient"]
    assert df["image_id"].tolist() == ["../other/y", "a/x"]
    assert df["label"].tolist() == ["healthy", "blast"]
    assert df["path"].tolist() == [str(outside), str(root / "a" / "x.png")]
    assert df["patient"].tolist() == ["p2", "p1"]


def test_csv_layout_errors(tmp_path: Path) -> None:
    root = tmp_path / "cells"
    write_image(root / "x.png")
    with pytest.raises(FewcellsError, match="labels.csv"):
        build_manifest(root, "csv")
    (root / "labels.csv").write_text("file,label\nx.png,blast\n")
    with pytest.raises(FewcellsError, match="labels.csv.*'path'"):
        build_manifest(root, "csv")
    (root / "mine.csv").write_text("path,class\nx.png,blast\n")
    with pytest.raises(FewcellsError, match="mine.csv.*'label'"):
        build_manifest(root, "csv", labels_csv="mine.csv")
    (root / "labels.csv").write_text("path,label\nx.png,blast\nmissing.png,healthy\n")
    with pytest.raises(FewcellsError, match="missing.png"):
        build_manifest(root, "csv")
    log = Log()
    df = build_manifest(root, "csv", on_bad_image="skip", log=log)
    assert df["image_id"].tolist() == ["x"]
    assert any("missing.png" in line for line in log.lines)


BAD_FILE_REASONS = {
    "truncated.jpg": "truncated",
    "ds_store.jpg": "not an image",
    "empty.jpg": "empty",
}


def write_bad_file(folder: Path, name: str) -> None:
    """Write one of: a truncated jpg, a .DS_Store renamed to .jpg, an empty .jpg."""
    if name == "truncated.jpg":
        truncate(write_image(folder / name, size=(64, 64)))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(DS_STORE_BYTES if name == "ds_store.jpg" else b"")


@pytest.mark.parametrize("name", sorted(BAD_FILE_REASONS))
def test_bad_image_raises_naming_file_and_reason(pbc: Path, name: str) -> None:
    write_bad_file(pbc / "monocyte", name)
    with pytest.raises(FewcellsError, match=rf"monocyte/{name}.*{BAD_FILE_REASONS[name]}"):
        build_manifest(pbc, "pbc")


def test_bad_images_skipped_with_warnings(pbc: Path) -> None:
    for name in BAD_FILE_REASONS:
        write_bad_file(pbc / "monocyte", name)
    truncate(write_image(pbc / "ig" / "IG_9.tif", size=(64, 64)))
    log = Log()
    df = build_manifest(pbc, "pbc", on_bad_image="skip", log=log)
    assert len(df) == 5
    for name, reason in {**BAD_FILE_REASONS, "IG_9.tif": "truncated"}.items():
        assert any(name in line and reason in line for line in log.lines), name
    assert "skipped 4 bad file(s)" in log.lines[-1]


def test_skip_logs_through_logging_by_default(pbc: Path, caplog) -> None:
    (pbc / "ig" / "bad.jpg").write_bytes(DS_STORE_BYTES)
    with caplog.at_level("WARNING"):
        build_manifest(pbc, "pbc", on_bad_image="skip")
    assert any("bad.jpg" in record.getMessage() for record in caplog.records)


def test_unknown_kind_and_policy(pbc: Path) -> None:
    with pytest.raises(FewcellsError, match="dataset.kind.*all_idb2.*pbc.*aml_tcia.*csv"):
        build_manifest(pbc, "imagenet")
    with pytest.raises(FewcellsError, match="dataset.on_bad_image"):
        build_manifest(pbc, "pbc", on_bad_image="ignore")


def test_empty_result_names_root_and_kind(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(FewcellsError, match=rf"{tmp_path}.*all_idb2"):
        build_manifest(tmp_path, "all_idb2")
    with pytest.raises(FewcellsError, match="not a directory"):
        build_manifest(tmp_path / "absent", "pbc")


def test_duplicate_image_id_is_an_error(pbc: Path) -> None:
    write_image(pbc / "ig" / "MMY_1.png")
    with pytest.raises(FewcellsError, match="ig/MMY_1"):
        build_manifest(pbc, "pbc")


def test_ordering_is_deterministic(tmp_path: Path) -> None:
    names = ["Im010_0.tif", "Im002_1.tif", "Im100_0.tif", "Im001_1.tif"]
    first, second = tmp_path / "one", tmp_path / "two"
    for name in names:
        write_image(first / name)
    for name in reversed(names):
        write_image(second / name)
    ids_first = build_manifest(first, "all_idb2")["image_id"].tolist()
    ids_second = build_manifest(second, "all_idb2")["image_id"].tolist()
    assert ids_first == ids_second == sorted(name.removesuffix(".tif") for name in names)


def test_write_and_read_round_trip(aml: Path, tmp_path: Path) -> None:
    df = build_manifest(aml, "aml_tcia")
    target = tmp_path / "out" / "manifest.csv"
    write_manifest(df, target)
    assert [p.name for p in target.parent.iterdir()] == ["manifest.csv"]
    pd.testing.assert_frame_equal(read_manifest(target), df)


def test_read_manifest_rejects_wrong_columns(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.csv"
    bad.write_text("image_id,path,label\na,/a.png,x\n")
    with pytest.raises(FewcellsError, match=r"manifest.csv.*width"):
        read_manifest(bad)
    with pytest.raises(FewcellsError, match="absent.csv"):
        read_manifest(tmp_path / "absent.csv")


def test_load_rgb_composites_alpha_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30, 255)  # opaque
    pixels[0, 1] = (10, 20, 30, 0)  # fully transparent -> white
    pixels[1, :] = (0, 0, 0, 128)  # half transparent black -> mid grey
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "rgba.tiff")
    rgb = load_rgb(tmp_path / "rgba.tiff")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert 125 <= rgb[1, 0, 0] <= 128


def test_load_rgb_grey_palette_and_16_bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 200]], dtype=np.uint8), mode="L").save(tmp_path / "l.png")
    assert load_rgb(tmp_path / "l.png").tolist() == [[[0, 0, 0], [200, 200, 200]]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").tolist() == [[[255, 0, 0], [0, 0, 255]]]

    palette.save(tmp_path / "p_transparent.png", transparency=1)
    assert load_rgb(tmp_path / "p_transparent.png")[0, 1].tolist() == [255, 255, 255]

    sixteen = np.array([[0, 65535, 257 * 100]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "i16.tif")
    assert load_rgb(tmp_path / "i16.tif")[0, :, 0].tolist() == [0, 255, 100]


def test_load_rgb_bad_file(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(DS_STORE_BYTES)
    with pytest.raises(FewcellsError, match="x.jpg"):
        load_rgb(tmp_path / "x.jpg")


def test_every_bad_image_is_reported_in_one_error(pbc: Path) -> None:
    for name in BAD_FILE_REASONS:
        write_bad_file(pbc / "monocyte", name)
    write_bad_file(pbc / "ig", "empty.jpg")
    with pytest.raises(FewcellsError) as error:
        build_manifest(pbc, "pbc")
    message = str(error.value)
    assert message.startswith(f"4 bad file(s) under {pbc}")
    for folder, name in [("monocyte", n) for n in BAD_FILE_REASONS] + [("ig", "empty.jpg")]:
        line = next(line for line in message.splitlines() if f"{folder}/{name}" in line)
        assert BAD_FILE_REASONS[name] in line
    assert "dataset.on_bad_image: skip" in message


def test_macos_resource_fork_files_are_skipped(all_idb2: Path, pbc: Path) -> None:
    # AppleDouble files: the image's name behind "._", holding Finder metadata, not pixels
    (all_idb2 / "._Im002_1.tif").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    (pbc / "ig" / "._MMY_1.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    assert len(build_manifest(all_idb2, "all_idb2")) == 3
    assert "ig/._MMY_1" not in set(build_manifest(pbc, "pbc")["image_id"])


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_tiff_is_called_truncated(tmp_path: Path, keep: float) -> None:
    path = write_image(tmp_path / "ig" / "MMY_1.tif", size=(64, 64))
    data = path.read_bytes()  # PIL writes a TIFF's directory last, so a cut one is unidentified
    path.write_bytes(data[: int(len(data) * keep)])
    write_image(tmp_path / "ig" / "MMY_2.tif")
    write_image(tmp_path / "neutrophil" / "SNE_3.png")
    with pytest.raises(FewcellsError, match=r"MMY_1.tif: [^\n]*truncated") as error:
        build_manifest(tmp_path, "pbc")
    assert "not an image" not in str(error.value)
