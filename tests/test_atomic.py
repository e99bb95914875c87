"""Atomic outputs: folders fewcells did not write are never replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fewcells.atomic import OUTPUT_MARKER, atomic_path, remove_stale_temporaries
from fewcells.cli import main
from fewcells.errors import FewcellsError


def write_folder(target: Path, text: str) -> None:
    with atomic_path(target, directory=True) as tmp:
        (tmp / "result.txt").write_text(text)


def test_a_folder_output_carries_the_marker_and_replaces_an_earlier_output(tmp_path):
    target = tmp_path / "out"
    write_folder(target, "first")
    assert (target / OUTPUT_MARKER).is_file()
    write_folder(target, "second")
    assert (target / "result.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing set aside is left


def test_an_empty_folder_is_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    write_folder(tmp_path / "out", "new")
    assert (tmp_path / "out" / "result.txt").read_text() == "new"


def test_a_folder_with_the_users_files_is_refused_and_kept(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(FewcellsError, match=rf"{target}.*not written by fewcells"):
        write_folder(target, "new")
    assert sorted(p.name for p in target.iterdir()) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_file_is_not_replaced_by_a_folder(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(FewcellsError, match="not a folder"):
        write_folder(tmp_path / "out", "new")
    assert (tmp_path / "out").read_text() == "a file"


@pytest.mark.parametrize("where", [".", "..", "/", "~"])
def test_the_working_directory_its_parents_root_and_home_are_refused(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (work / OUTPUT_MARKER).write_text("")  # refused even when it looks like an output
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / OUTPUT_MARKER).write_text("")
    with pytest.raises(FewcellsError, match="refusing to replace"):
        write_folder(Path(os.path.expanduser(where)), "new")
    assert (work / OUTPUT_MARKER).exists() and (tmp_path / "home" / OUTPUT_MARKER).exists()


def test_stale_temporaries_and_their_empty_target_are_removed(tmp_path):
    train = tmp_path / "n6"
    (train / ".fold0.tmp-abc").mkdir(parents=True)
    (train / ".fold0.tmp-abc" / "epoch=3.ckpt").write_text("partial")
    (train / "fold0").mkdir()  # made by Snakemake for the killed job's outputs
    (train / "fold1").mkdir()  # no temporary beside it: not ours to remove
    remove_stale_temporaries(train / "fold0")
    assert sorted(p.name for p in train.iterdir()) == ["fold1"]


def test_store_cli_refuses_an_out_folder_with_the_users_files(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    kept = tmp_path / "kept.csv"
    pd.DataFrame([{"image_id": "a", "path": str(tmp_path / "a.png"), "label": "x"}]).to_csv(
        kept, index=False
    )
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["store", str(kept), "--image-size", "8", "--out", str(out)]) == 2
    assert "not written by fewcells" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["store", str(kept), "--image-size", "8", "--out", str(tmp_path / "s")]) == 0
    assert main(["store", str(kept), "--image-size", "8", "--out", str(tmp_path / "s")]) == 0
