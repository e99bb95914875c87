"""Files added to, removed from or rewritten in a `path:` source folder rerun the manifest;
new modification times alone (a copy of the folder) do not."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml
from test_workflow import snakemake

from fewcells.data.demo import generate_demo

pytestmark = pytest.mark.slow


def test_a_changed_source_folder_reruns_the_manifest(tmp_path):
    data = tmp_path / "data"
    generate_demo(data, seed=1, n_per_class=4, n_duplicates=0)
    config = {
        "datasets": {"mine": {"kind": "csv", "source": {"path": str(data)}}},
        "experiments": {"mine": {"dataset": "mine", "folds": {"k": 2, "n_val": 6, "sizes": [6]}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ("--configfile", str(tmp_path / "config.yaml"))
    target = "results/datasets/mine/manifest.csv"
    snakemake(tmp_path, target, "--cores", "1", *args)

    def planned_jobs(*_):
        output = snakemake(tmp_path, target, "-n", *args).stdout
        return (
            {} if "Nothing to be done" in output else {"manifest": output.count("rule manifest:")}
        )

    assert planned_jobs() == {}
    extra = data / "blast" / "extra.tif"
    shutil.copyfile(next((data / "blast").glob("*.tif")), extra)
    assert planned_jobs() == {"manifest": 1}
    extra.unlink()
    assert planned_jobs() == {}
    later = 2_000_000_000 * 10**9
    for image in data.rglob("*"):
        os.utime(image, ns=(later, later))
    assert planned_jobs() == {}
    image = next((data / "lymphocyte").glob("*.tif"))
    content = bytearray(image.read_bytes())
    content[-1] ^= 0xFF
    image.write_bytes(bytes(content))
    assert planned_jobs() == {"manifest": 1}
