"""The `fewcells` command: stages usable outside Snakemake, errors as one line, exit 2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pandas as pd
import pytest

from fewcells.cli import build_parser, main
from fewcells.data.manifest import KINDS


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
    assert summary["label_conflicts"] == 0
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


@pytest.fixture
def inputs(tmp_path):
    """Files for wrong-argument cases: a folder, a plain file, JSON files, CSVs, a manifest."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file.txt").write_text("hello\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text("{}")
    pd.DataFrame({"image_id": ["a"], "x": [1]}).to_csv(tmp_path / "nocols.csv", index=False)
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "classes.json").write_text('{"classes": ["a", "b"], "task": "binary"}')
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    manifest = {"image_id": "a", "path": image, "label": "x", "width": 8, "height": 8}
    pd.DataFrame([manifest | {"mode": "RGB", "sha256": "0"}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    return tmp_path


SPEC = '{"k": 2, "n_val": 2, "seed": 0}'
TRAIN = ["--fold", "0", "--size", "2", "--image-size", "8", "--out", "T/out"]
EXPLAIN = ["--fold", "0", "--sizes", "2", "--out", "T/out"]


# (argv with T = the inputs folder, what the one line must name)
WRONG_ARGUMENTS = {
    "dedup --out is a file": (["dedup", "T/manifest.csv", "--out", "T/file.txt"], "T/file.txt"),
    "dedup --settings bad JSON": (
        ["dedup", "T/manifest.csv", "--settings", "{bad", "--out", "T/out"],
        "--settings",
    ),
    "dedup --settings not an object": (
        ["dedup", "T/manifest.csv", "--settings", "[1]", "--out", "T/out"],
        "--settings",
    ),
    "dedup --settings wrong type": (
        ["dedup", "T/manifest.csv", "--settings", '{"max_distance": "x"}', "--out", "T/out"],
        "max_distance",
    ),
    "dedup missing input": (["dedup", "T/missing.csv", "--out", "T/out"], "T/missing.csv"),
    "folds --spec bad JSON": (["folds", "T/manifest.csv", "--spec", "{", "--out", "T/o"], "--spec"),
    "folds --spec lacks keys": (
        ["folds", "T/manifest.csv", "--spec", '{"k": 2}', "--out", "T/o"],
        "n_val",
    ),
    "folds --spec not an object": (
        ["folds", "T/manifest.csv", "--spec", "[2]", "--out", "T/o"],
        "--spec",
    ),
    "folds missing kept": (["folds", "T/missing.csv", "--spec", SPEC, "--out", "T/o"], "T/missing"),
    "folds folder as kept": (["folds", "T/folder", "--spec", SPEC, "--out", "T/o"], "T/folder"),
    "folds kept lacks columns": (
        ["folds", "T/nocols.csv", "--spec", SPEC, "--out", "T/o"],
        "T/nocols.csv",
    ),
    "store --image-size -5": (
        ["store", "T/manifest.csv", "--image-size", "-5", "--out", "T/o"],
        "--image-size",
    ),
    "store missing kept": (
        ["store", "T/missing.csv", "--image-size", "8", "--out", "T/o"],
        "T/missing.csv",
    ),
    "store folder as kept": (
        ["store", "T/folder", "--image-size", "8", "--out", "T/o"],
        "T/folder",
    ),
    "store kept lacks columns": (
        ["store", "T/nocols.csv", "--image-size", "8", "--out", "T/o"],
        "T/nocols.csv",
    ),
    "manifest missing source": (
        ["manifest", "T/missing.json", "--kind", "pbc", "--out", "T/m.csv"],
        "T/missing.json",
    ),
    "manifest folder as source": (
        ["manifest", "T/folder", "--kind", "pbc", "--out", "T/m.csv"],
        "T/folder",
    ),
    "manifest source bad JSON": (
        ["manifest", "T/bad.json", "--kind", "pbc", "--out", "T/m.csv"],
        "T/bad.json",
    ),
    "manifest source lacks root": (
        ["manifest", "T/empty.json", "--kind", "pbc", "--out", "T/m.csv"],
        "T/empty.json",
    ),
    "manifest unknown --kind": (
        ["manifest", "T/empty.json", "--kind", "imagenet", "--out", "T/m.csv"],
        "--kind",
    ),
    "train missing store": (
        ["train", "--store", "T/missing", "--folds", "T/folds", *TRAIN],
        "T/missing",
    ),
    "train missing folds": (
        ["train", "--store", "T/folder", "--folds", "T/missing", *TRAIN],
        "T/missing",
    ),
    "evaluate missing train folder": (
        ["evaluate", "T/missing", "--classes", "T/folds/classes.json", "--experiment", "e"]
        + ["--out", "T/out"],
        "T/missing",
    ),
    "evaluate folder as classes": (
        ["evaluate", "T/folder", "--classes", "T/folder", "--experiment", "e", "--out", "T/o"],
        "T/folder",
    ),
    "explain missing store": (
        ["explain", "--store", "T/missing", "--folds", "T/folds", "--train-root", "T/folder"]
        + EXPLAIN,
        "T/missing",
    ),
    "explain folder as folds": (
        ["explain", "--store", "T/folder", "--folds", "T/folder", "--train-root", "T/folder"]
        + EXPLAIN,
        "T/folder",
    ),
    "tsne missing classes": (
        ["tsne", "--train-root", "T/folder", "--classes", "T/missing.json", *EXPLAIN],
        "T/missing.json",
    ),
    "tsne folder as classes": (
        ["tsne", "--train-root", "T/folder", "--classes", "T/folder", *EXPLAIN],
        "T/folder",
    ),
    "tsne missing train root": (
        ["tsne", "--train-root", "T/missing", "--classes", "T/folds/classes.json", *EXPLAIN],
        "T/missing",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_ARGUMENTS))
def test_wrong_arguments_give_one_line_naming_them(inputs, capsys, case):
    argv, named = WRONG_ARGUMENTS[case]
    argv = [arg.replace("T/", f"{inputs}/") for arg in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fewcells {argv[0]}: error: "), err
    assert named.replace("T/", f"{inputs}/") in err and "Traceback" not in err


def test_dedup_of_a_folder_advises_its_own_flag(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "Im001_1.tif")
    (tmp_path / "Im002_0.tif").write_bytes(b"")
    (tmp_path / "Im003_0.tif").write_bytes(b"not an image")
    assert main(["dedup", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Im002_0.tif" in err and "Im003_0.tif" in err  # both, in one run
    assert "--on-bad-image skip" in err and "dataset.on_bad_image" not in err
    options = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "--on-bad-image" in options["dedup"]._option_string_actions
    argv = ["dedup", str(tmp_path), "--on-bad-image", "skip", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "dedup_summary.json").read_text())["images"] == 1


def _subparsers(parser):
    """(name, parser) of every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_option_has_help():
    missing = [
        f"fewcells {name} {action.option_strings or action.dest}"
        for name, sub in _subparsers(build_parser())
        for action in sub._actions
        if action.help is None and not isinstance(action, argparse._HelpAction)
    ]
    assert missing == []


def test_every_help_page_renders():
    """argparse expands % in help strings: a stray one breaks `--help`."""
    parser = build_parser()
    assert "compare-strategies" in parser.format_help()
    for name, sub in _subparsers(parser):
        assert sub.format_help(), name


def test_kind_lists_its_choices():
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if "--kind" in action.option_strings:
                assert set(KINDS) <= set(action.choices), name
                assert "all_idb2" in sub.format_help()
