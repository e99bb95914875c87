from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from fewcells.config import check_config_file, validate_config
from fewcells.errors import FewcellsError
from fewcells.plan import fold_ids, parse_run_name, run_name, train_job_config

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_configs_are_valid():
    for path in sorted((REPO / "config").glob("*.yaml")):
        config = validate_config(yaml.safe_load(path.read_text()))
        assert config["run"], path


def test_shipped_subsets_are_valid_on_their_base_config():
    """config/subsets/BASE_*.yaml overlays config/BASE.yaml (--configfile BASE SUBSET)."""
    bases = {path.stem: path for path in (REPO / "config").glob("*.yaml")}
    subsets = sorted((REPO / "config" / "subsets").glob("*.yaml"))
    assert subsets
    for path in subsets:
        base = max((name for name in bases if path.stem.startswith(f"{name}_")), key=len)
        config = yaml.safe_load(bases[base].read_text())
        original = validate_config(config)
        update_config(config, yaml.safe_load(path.read_text()))
        assert validate_config(config) != original, path


def test_defaults_are_the_paper_protocol():
    config = validate_config(DEMO)
    train = config["experiments"]["demo_multiclass"]["train"]
    assert train["batch_size"] == 5 and train["rho"] == 0.9
    assert train["augment"] == {
        "flips": True,
        "rotation": True,
        "noise_std": 0.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "rotation_sampling": "bilinear",
    }
    assert train["replicates"] == 1 and train["replicate_sizes"] is None
    assert config["experiments"]["demo_binary"]["model"]["init"] is None  # keras for paper_cnn
    assert config["datasets"]["demo"]["dedup"]["max_distance"] == 10
    protocol = train_job_config(config["experiments"]["demo_binary"])
    assert "mem_mb" not in protocol and "replicates" not in protocol
    assert fold_ids(config["experiments"]["demo_multiclass"]) == [0, 1]
    assert fold_ids(config["experiments"]["demo_binary"]) == [0, 1, 2]
    assert "dedup" not in DEMO["datasets"]["demo"]  # the input is not modified


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            lambda c: c["experiments"]["demo_binary"]["folds"].update(sizes=[-5]),
            "experiments.demo_binary.folds.sizes[0]",
        ),
        (
            lambda c: c["experiments"]["demo_binary"]["train"].update(lr="fast"),
            "experiments.demo_binary.train.lr",
        ),
        (
            lambda c: c["experiments"]["demo_binary"]["train"].update(patiense=3),
            "experiments.demo_binary.train",
        ),
        (lambda c: c["datasets"]["demo"].update(kind="dicom"), "datasets.demo.kind"),
        (
            lambda c: c["experiments"]["demo_binary"]["folds"].update(sizes=[10, 500]),
            "experiments.demo_binary.folds.sizes",
        ),
        (
            lambda c: c["experiments"]["demo_binary"].update(dataset="nope"),
            "experiments.demo_binary.dataset",
        ),
        (lambda c: c.update(run=["missing"]), "run"),
        (lambda c: c.update(results=""), "results"),
        (lambda c: c.update(results="/"), "results"),
        (
            lambda c: c["experiments"]["demo_binary"]["classes"].append(
                {"name": "blast", "labels": ["lymphocyte"]}
            ),
            "experiments.demo_binary.classes",
        ),
        (
            lambda c: c["experiments"]["demo_binary"]["classes"][0].update(labels=["blast"]),
            "experiments.demo_binary.classes",
        ),
        (
            lambda c: c["experiments"]["demo_binary"]["folds"].update(n_val=1),
            "experiments.demo_binary.folds.n_val",
        ),
        (
            lambda c: c["experiments"]["demo_binary"]["folds"].update(n_val=190),
            "experiments.demo_binary.folds.n_val",
        ),
        (
            lambda c: c["experiments"]["demo_binary"]["folds"].update(k=41),
            "experiments.demo_binary.folds.k",
        ),
        (
            lambda c: c["experiments"]["demo_binary"].update(plots={"roc_sizes": [10, 20]}),
            "experiments.demo_binary.plots.roc_sizes",
        ),
        (lambda c: c["datasets"].update(real={"kind": "pbc"}), "datasets.real"),
        (
            lambda c: c["datasets"].update(
                real={"kind": "pbc", "source": {"url": "https://x/a.zip", "sha256": "12"}}
            ),
            "datasets.real.source.sha256",
        ),
    ],
)
def test_bad_values_name_the_key(edit, key):
    config = copy.deepcopy(DEMO)
    edit(config)
    with pytest.raises(FewcellsError) as error:
        validate_config(config)
    assert f"config key {key}" in str(error.value)


@pytest.mark.parametrize("name", ["datasets", "comparisons", "logs", "pretrained"])
def test_experiment_named_like_a_results_folder_is_refused(name):
    config = copy.deepcopy(DEMO)
    config["experiments"][name] = config["experiments"].pop("demo_binary")
    config["run"] = [name]
    with pytest.raises(FewcellsError, match=f"experiments.{name}: .*results folder"):
        validate_config(config)


def _with_merged(groups: dict, classes: list[str] | None = None) -> dict:
    config = copy.deepcopy(DEMO)
    experiment = config["experiments"]["demo_multiclass"]
    if classes:
        experiment["classes"] = [{"name": name, "labels": [name]} for name in classes]
    experiment["evaluate"] = {"merged": groups}
    return config


FIVE = ["blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil"]


def test_merged_groups_are_validated_against_the_classes():
    config = validate_config(_with_merged({"blastish": ["blast", "monocyte"]}, FIVE))
    merged = config["experiments"]["demo_multiclass"]["evaluate"]["merged"]
    assert merged == {"blastish": ["blast", "monocyte"]}
    assert validate_config(DEMO)["experiments"]["demo_binary"]["evaluate"] == {"merged": {}}
    # without configured classes the names come from the data: checked by the evaluation
    validate_config(_with_merged({"g": ["anything"]}))


@pytest.mark.parametrize(
    ("groups", "classes", "key", "message"),
    [
        ({"blast": ["blast", "myeloblast"]}, FIVE, "merged.blast", "unknown class(es) ['myel"),
        ({"all": FIVE}, FIVE, "merged.all", "takes every class"),
        ({"blast": []}, FIVE, "merged.blast", "should be non-empty"),
        ({"bad name": ["blast"]}, FIVE, "merged", "does not match"),
    ],
)
def test_bad_merged_groups_name_the_key(groups, classes, key, message):
    with pytest.raises(FewcellsError) as error:
        validate_config(_with_merged(groups, classes))
    assert f"config key experiments.demo_multiclass.evaluate.{key}" in str(error.value)
    assert message in str(error.value)


def test_merged_groups_of_a_binary_experiment_are_refused():
    config = copy.deepcopy(DEMO)
    config["experiments"]["demo_binary"]["evaluate"] = {"merged": {"g": ["blast"]}}
    with pytest.raises(FewcellsError, match=r"demo_binary\.evaluate\.merged: .*multiclass"):
        validate_config(config)


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("run: [a]\nresults: out\nresults: elsewhere\n")
    with pytest.raises(FewcellsError, match=rf"{path}, line 3: key 'results' is given twice"):
        check_config_file(path)
    for shipped in sorted((REPO / "config").glob("**/*.yaml")):
        check_config_file(shipped)


def test_run_names_round_trip():
    for fold, replicate in [(0, 0), (7, 0), (3, 1), (12, 2)]:
        assert parse_run_name(run_name(fold, replicate)) == (fold, replicate)
    assert run_name(3) == "fold3" and run_name(3, 2) == "fold3_rep2"


SELECTION = yaml.safe_load((REPO / "tests/integration/configs/tiny_selection.yaml").read_text())
FEATURES = "experiments.tiny_diverse.folds.selection.features"


def _with_features(features, edit=lambda experiments: None) -> dict:
    config = copy.deepcopy(SELECTION)
    config["experiments"]["tiny_diverse"]["folds"]["selection"]["features"] = features
    edit(config["experiments"])
    return config


def test_diverse_features_default_to_the_statistics_and_may_name_a_network():
    config = validate_config(SELECTION)
    assert config["experiments"]["tiny_diverse"]["folds"]["selection"]["features"] == "stats"
    named = validate_config(_with_features({"experiment": "tiny_random", "size": 6}))
    features = named["experiments"]["tiny_diverse"]["folds"]["selection"]["features"]
    assert features == {"experiment": "tiny_random", "size": 6}


@pytest.mark.parametrize(
    ("features", "edit", "message"),
    [
        ("pixels", None, "is not valid"),
        ({"experiment": "tiny_random"}, None, "is not valid"),
        ({"experiment": "nope", "size": 6}, None, "'nope' is not another experiment"),
        ({"experiment": "tiny_diverse", "size": 6}, None, "is not another experiment"),
        (
            {"experiment": "tiny_random", "size": 6},
            lambda e: e["tiny_random"]["folds"].update(
                selection={
                    "strategy": "diverse",
                    "features": {"experiment": "tiny_uncertain", "size": 6},
                }
            ),
            "itself uses network features",
        ),
        ({"experiment": "tiny_random", "size": 7}, None, "trains no size 7"),
        (
            {"experiment": "tiny_random", "size": 6},
            lambda e: e["tiny_random"]["folds"].update(seed=5),
            "has folds .* the same folds",
        ),
        (
            {"experiment": "tiny_random", "size": 6},
            lambda e: e["tiny_random"].update(classes=e["tiny_random"]["classes"][::-1]),
            "has classes",
        ),
        (
            {"experiment": "tiny_random", "size": 6},
            lambda e: e["tiny_random"]["folds"].update(run_folds=[1]),
            r"no network for fold\(s\) \[0\]",
        ),
        (
            "stats",
            lambda e: e["tiny_uncertain"]["folds"]["selection"].update(
                features={"experiment": "tiny_random", "size": 6}
            ),
            "network features order a diverse selection",
        ),
    ],
)
def test_bad_selection_features_name_the_key(features, edit, message):
    config = _with_features(features, edit or (lambda experiments: None))
    with pytest.raises(FewcellsError, match=message) as error:
        validate_config(config)
    assert "config key experiments.tiny_" in str(error.value)
    assert "folds.selection.features" in str(error.value)


def _with_pretrained_features(source_dataset="other", source_image=None) -> dict:
    """SELECTION with tiny_diverse ordered by the pretraining of tiny_source (SOURCE_DATASET)."""
    config = _with_features({"pretrained": "tiny_source"})
    config["datasets"]["other"] = {"kind": "demo", "demo": {"seed": 2, "n_per_class": 12}}
    config["experiments"]["tiny_source"] = {
        "dataset": source_dataset,
        "folds": {"k": 2, "n_val": 6, "sizes": [10]},
        **({"image": source_image} if source_image else {}),
    }
    return config


def test_diverse_features_may_name_a_pretraining_on_another_dataset():
    config = validate_config(_with_pretrained_features())
    features = config["experiments"]["tiny_diverse"]["folds"]["selection"]["features"]
    assert features == {"pretrained": "tiny_source"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_with_pretrained_features(source_dataset="tiny"), "has seen the labels of unselected"),
        (_with_pretrained_features(source_image={"size": 224}), "has image.size 224"),
        (_with_features({"pretrained": "nope"}), "pretrained 'nope' is not an experiment"),
        (_with_features({"pretrained": "tiny_random", "size": 6}), "is not valid"),
    ],
)
def test_bad_pretrained_features_name_the_key(config, message):
    with pytest.raises(FewcellsError, match=message) as error:
        validate_config(config)
    assert "folds.selection.features" in str(error.value)
