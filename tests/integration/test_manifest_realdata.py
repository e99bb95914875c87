"""Manifest stage on the real data sets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fewcells.data.manifest import build_manifest

pytestmark = pytest.mark.realdata


def shared_data() -> Path:
    """The real data folder: $FEWCELLS_SHARED_DATA, else the repository's sibling shared/data."""
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    folder = Path(os.environ.get("FEWCELLS_SHARED_DATA", default))
    if not folder.is_dir():
        pytest.skip(f"real data not available at {folder} (set FEWCELLS_SHARED_DATA)")
    return folder


def published_checksums(data: Path) -> dict[Path, str]:
    """SHA256SUMS of the shared data, as absolute path -> hex digest."""
    checksums = {}
    for line in (data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        checksums[(data / name).resolve()] = digest
    return checksums


def assert_checksums_match(df, data: Path) -> None:
    checksums = published_checksums(data)
    for path, digest in zip(df["path"], df["sha256"], strict=True):
        assert checksums[Path(path).resolve()] == digest, path


def test_all_idb2() -> None:
    data = shared_data()
    df = build_manifest(data / "ALL_IDB2" / "img", "all_idb2")
    assert len(df) == 260
    assert df["image_id"].is_unique
    assert df["label"].value_counts().to_dict() == {"blast": 130, "healthy": 130}
    suffix_label = df["image_id"].str[-1].map({"1": "blast", "0": "healthy"})
    assert (suffix_label == df["label"]).all()
    assert set(df["mode"]) == {"RGB"}
    assert df["width"].max() == 257 and df["height"].max() == 257
    assert_checksums_match(df, data)


def test_pbc_subset() -> None:
    data = shared_data()
    df = build_manifest(data / "PBC_subset", "pbc")
    assert len(df) == 3200
    classes = ["basophil", "eosinophil", "erythroblast", "ig"]
    classes += ["lymphocyte", "monocyte", "neutrophil", "platelet"]
    assert df["label"].value_counts().to_dict() == dict.fromkeys(classes, 400)
    assert set(df.loc[df["label"] == "ig", "subtype"]) == {"IG", "MY", "MMY", "PMY"}
    assert {"SNE", "BNE"} <= set(df.loc[df["label"] == "neutrophil", "subtype"])
    assert_checksums_match(df, data)


def test_aml_sample() -> None:
    data = shared_data()
    root = data / "AML_Cytomorphology_LMU_sample"
    df = build_manifest(root, "aml_tcia").set_index("image_id")
    assert len(df) == 45
    assert set(df["mode"]) == {"RGBA"}
    assert set(zip(df["width"], df["height"], strict=True)) == {(400, 400)}
    columns = ["label", "label_reannotation1", "label_reannotation2"]
    assert df.loc["IG/PMB_0013", columns].tolist() == ["PMB", "MYO", "MYO"]
    assert df.loc["ART/KSC_0001", columns].tolist() == ["KSC", "", ""]
    assert df.loc["MYB/MYO_0135", "label"] == "MYO"
    assert df.loc["ERY/EBO_0001", "label"] == "EBO"
    assert df.loc["NEU/NGS_0117", "label"] == "NGS"
    assert_checksums_match(df.reset_index(), data)
