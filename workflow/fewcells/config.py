"""Config validation against the JSON schema, with defaults filled in and cross-checks."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from fewcells.errors import FewcellsError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
TRAIN_RESOURCE_KEYS = ("mem_mb", "runtime", "gpus")


def load_schema() -> dict:
    """The config schema (workflow/schemas/config.schema.yaml)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _fill_defaults(instance, schema: dict, root: dict) -> None:
    """Insert the schema's defaults into `instance`, recursing into objects."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(instance, dict):
        return
    for key, subschema in schema.get("properties", {}).items():
        if key not in instance and "default" in subschema:
            instance[key] = copy.deepcopy(subschema["default"])
        if key in instance:
            _fill_defaults(instance[key], subschema, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(schema.get("properties", {})):
            _fill_defaults(instance[key], extra, root)


def validate_config(config: dict) -> dict:
    """Return a validated copy of `config` with defaults; FewcellsError names the bad key."""
    schema = load_schema()
    config = copy.deepcopy(dict(config))
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        error = errors[-1]
        raise FewcellsError(f"config key {_key_path(error.absolute_path)}: {error.message}")
    _fill_defaults(config, schema, schema)
    for name, experiment in config["experiments"].items():
        key = f"experiments.{name}"
        if experiment["dataset"] not in config["datasets"]:
            raise FewcellsError(
                f"config key {key}.dataset: unknown dataset {experiment['dataset']!r} "
                f"(datasets: {sorted(config['datasets'])})"
            )
        folds = experiment["folds"]
        run_folds = folds["run_folds"] or []
        if any(fold >= folds["k"] for fold in run_folds):
            raise FewcellsError(
                f"config key {key}.folds.run_folds: folds must be < k = {folds['k']}"
            )
        dataset = config["datasets"][experiment["dataset"]]
        if dataset["kind"] == "demo":
            _check_demo_sizes(key, experiment, dataset)
    config.setdefault("run", list(config["experiments"]))
    unknown = [name for name in config["run"] if name not in config["experiments"]]
    if unknown:
        raise FewcellsError(
            f"config key run: unknown experiment(s) {unknown} (experiments: "
            f"{sorted(config['experiments'])})"
        )
    return config


def _check_demo_sizes(key: str, experiment: dict, dataset: dict) -> None:
    """For the demo data the pool size is known up front: check sizes before any job."""
    from fewcells.demo import DEMO_CLASSES

    folds = experiment["folds"]
    total = dataset["demo"]["n_per_class"] * len(DEMO_CLASSES)
    test = folds["test_size"] or -(-total // folds["k"])
    pool = total - test - folds["n_val"]
    too_big = [size for size in folds["sizes"] if size > pool]
    if too_big:
        raise FewcellsError(
            f"config key {key}.folds.sizes: training size(s) {too_big} are larger than the "
            f"training pool (about {pool} images of {total} demo images)"
        )


def train_protocol(experiment: dict) -> dict:
    """The `train` section without the scheduler resources (what the training code reads)."""
    return {k: v for k, v in experiment["train"].items() if k not in TRAIN_RESOURCE_KEYS}


def fold_ids(experiment: dict) -> list[int]:
    """Folds to train: `folds.run_folds` or all k."""
    folds = experiment["folds"]
    return list(folds["run_folds"]) if folds["run_folds"] else list(range(folds["k"]))
