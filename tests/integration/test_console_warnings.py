"""Warnings of the data jobs (skipped files, small images) reach the console and the log."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image
from test_workflow import snakemake

from fewcells.data.demo import generate_demo

pytestmark = pytest.mark.slow


def test_skip_and_small_image_warnings_reach_the_console(tmp_path):
    data = tmp_path / "data"
    generate_demo(data, seed=1, n_per_class=4, n_duplicates=0)
    blast = next((data / "blast").glob("*.tif"))
    (data / "blast" / "broken.tif").write_bytes(b"")
    Image.open(blast).resize((8, 8)).save(data / "blast" / "thumb.tif")
    with (data / "labels.csv").open("a") as labels:
        labels.write("blast/broken.tif,blast\nblast/thumb.tif,blast\n")
    config = {
        "datasets": {
            "mine": {"kind": "csv", "source": {"path": str(data)}, "on_bad_image": "skip"}
        },
        "experiments": {"mine": {"dataset": "mine", "folds": {"k": 2, "n_val": 6, "sizes": [6]}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        tmp_path,
        "results/mine/store/index.csv",
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
    )
    console = result.stdout + result.stderr
    assert "skipping" in console and "broken.tif" in console
    assert "thumb.tif" in console and "far smaller than image.size" in console
    logs = tmp_path / "results" / "logs"
    assert "broken.tif" in (logs / "manifest" / "mine.log").read_text()
    assert "thumb.tif" in (logs / "mine" / "store.log").read_text()
