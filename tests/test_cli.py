"""The `fewcells` command: stages usable outside Snakemake, errors as one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from fewcells.cli import main


def test_demo_to_folds_pipeline(tmp_path):
    data = tmp_path / "data"
    assert (
        main(
            [
                "fetch",
                "--dataset",
                json.dumps({"kind": "demo", "demo": {"seed": 1, "n_per_class": 6}}),
                "--out",
                str(data),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "manifest",
                str(data / "source.json"),
                "--kind",
                "demo",
                "--out",
                str(data / "manifest.csv"),
            ]
        )
        == 0
    )
    manifest = pd.read_csv(data / "manifest.csv")
    assert len(manifest) == 5 * 6 + 10
    assert main(["dedup", str(data / "manifest.csv"), "--out", str(data / "dedup")]) == 0
    summary = json.loads((data / "dedup" / "dedup_summary.json").read_text())
    assert summary["removed"] == 10 and summary["kept"] == 30
    spec = {"k": 3, "n_val": 5, "sizes": [5, 10], "seed": 0, "test_size": None, "classes": None}
    assert (
        main(
            [
                "folds",
                str(data / "dedup" / "kept.csv"),
                "--spec",
                json.dumps(spec),
                "--out",
                str(tmp_path / "folds"),
            ]
        )
        == 0
    )
    classes = json.loads((tmp_path / "folds" / "classes.json").read_text())
    assert classes["task"] == "multiclass" and len(classes["classes"]) == 5
    assert (
        main(
            [
                "store",
                str(data / "dedup" / "kept.csv"),
                "--image-size",
                "65",
                "--out",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    assert (tmp_path / "store" / "images.npy").stat().st_size > 30 * 65 * 65 * 3


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(
        [
            "fetch",
            "--dataset",
            json.dumps({"kind": "all_idb2", "source": {"path": str(missing)}}),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "out" / "source.json").exists()


def test_folds_size_too_large_names_key(tmp_path, capsys):
    kept = tmp_path / "kept.csv"
    pd.DataFrame(
        {"image_id": [f"i{n}" for n in range(40)], "label": ["a", "b"] * 20, "path": "x"}
    ).to_csv(kept, index=False)
    spec = {"k": 4, "n_val": 5, "sizes": [10, 99], "seed": 0, "classes": None}
    assert main(["folds", str(kept), "--spec", json.dumps(spec), "--out", str(tmp_path / "f")]) == 2
    assert "folds.sizes" in capsys.readouterr().err
    assert not (tmp_path / "f" / "folds.csv").exists()


@pytest.mark.parametrize("command", [["--help"], ["dedup", "--help"]])
def test_console_script_installed(command):
    result = subprocess.run(
        [sys.executable, "-m", "fewcells.cli", *command], capture_output=True, text=True, check=True
    )
    assert "usage" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["fetch", "--dataset", "{}", "--out", "OUT"],
        ["folds", "MISSING.csv", "--spec", '{"k": 2, "n_val": 2, "seed": 0}', "--out", "OUT"],
        ["dedup", "MISSING.csv", "--out", "OUT"],
    ],
)
def test_ordinary_mistakes_give_one_line_and_status_2(tmp_path, capsys, argv):
    argv = [arg.replace("OUT", str(tmp_path / "out")) for arg in argv]
    argv = [arg.replace("MISSING", str(tmp_path / "missing")) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fewcells {argv[0]}: error: ")


def test_store_image_size_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["store", "kept.csv", "--image-size", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--image-size: must be at least 1" in capsys.readouterr().err
