"""Config validation against the JSON schema, with defaults filled in and cross-checks."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import jsonschema
import yaml

from fewcells.contracts import SCORES
from fewcells.data.selection import check_selection
from fewcells.errors import FewcellsError
from fewcells.plan import common_sizes_and_folds, experiment_task, fold_ids, fold_split

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
# results/<name>/ folders the workflow writes besides the experiments' own.
RESERVED_RESULT_FOLDERS = ("benchmarks", "comparisons", "datasets", "logs", "pretrained")
# model keys a pretrained network and the network that starts from it share.
PRETRAINED_MODEL_KEYS = ("name", "hidden", "keep_blocks")


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping key given twice (yaml keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` values may be overridden by the keys beside them
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def check_config_file(path: str | os.PathLike) -> None:
    """Refuse a config file that YAML would read with a loss: a key given twice."""
    try:
        yaml.load(Path(path).read_text(), Loader=_StrictLoader)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        raise FewcellsError(
            f"config file {path}, line {mark.line + 1}: {error.problem}; "
            "only the last value would count"
        ) from None
    except (OSError, yaml.YAMLError):
        return  # Snakemake has read it and reports problems of its own


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
        if name in RESERVED_RESULT_FOLDERS:
            raise FewcellsError(
                f"config key {key}: {name!r} is a results folder of its own "
                f"({', '.join(RESERVED_RESULT_FOLDERS)}); name the experiment otherwise"
            )
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
        _check_subset(f"{key}.explain.sizes", experiment["explain"]["sizes"], folds["sizes"])
        _check_subset(f"{key}.tsne.sizes", experiment["tsne"]["sizes"], folds["sizes"])
        _check_subset(f"{key}.explain.folds", experiment["explain"]["folds"], fold_ids(experiment))
        tsne_fold = experiment["tsne"]["fold"]
        _check_subset(
            f"{key}.tsne.fold", None if tsne_fold is None else [tsne_fold], fold_ids(experiment)
        )
        _check_subset(
            f"{key}.train.replicate_sizes", experiment["train"]["replicate_sizes"], folds["sizes"]
        )
        for plot_key in ("roc_sizes", "loss_sizes"):
            _check_subset(
                f"{key}.plots.{plot_key}", experiment["plots"].get(plot_key), folds["sizes"]
            )
        _check_classes(key, experiment)
        if experiment["train"]["engine"] in STACKED_ENGINES:
            _check_stacked(key, experiment)
        _check_merged(key, experiment)
        check_selection(key, experiment, config["experiments"])
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
    _check_compare(config)
    _check_transfer(config)
    from fewcells.predict.entries import check_predict

    check_predict(config)
    return config


STACKED_MODELS = ("paper_cnn",)  # networks without BatchNorm buffers
STACKED_ENGINES = ("stacked", "stacked_sweep")


def _check_stacked(key: str, experiment: dict) -> None:
    """train.engine stacked or stacked_sweep: a network without BatchNorm, 32-bit, trained
    from a fixed start."""
    train = experiment["train"]
    engine = f"config key {key}.train.engine: {train['engine']!r}"
    if experiment["model"]["name"] not in STACKED_MODELS:
        raise FewcellsError(
            f"{engine} trains {', '.join(STACKED_MODELS)} only (model.name is "
            f"{experiment['model']['name']!r}, which has BatchNorm); use 'per_fold'"
        )
    if train["precision"] != "32-true":
        raise FewcellsError(f"{engine} needs precision '32-true'")
    if train["replicates"] > 1:
        raise FewcellsError(
            f"{engine} trains one network per (size, fold); train.replicates > 1 needs "
            "'per_fold' or 'sequential'"
        )
    if experiment["model"]["pretrained"] is not None or train["finetune"] is not None:
        raise FewcellsError(
            f"{engine} trains from a fixed start without the fine-tuning schedule "
            "(model.pretrained, train.finetune) - use 'per_fold'"
        )


def _check_transfer(config: dict) -> None:
    """model.pretrained names a fitting source experiment; finetune has weights to start from."""
    experiments = config["experiments"]
    for name, experiment in experiments.items():
        key = f"experiments.{name}"
        model = experiment["model"]
        source_name = model["pretrained"]
        if experiment["train"]["finetune"] is not None and not (source_name or model["weights"]):
            raise FewcellsError(
                f"config key {key}.train.finetune: fine-tuning needs a network to start from "
                "(model.pretrained or model.weights)"
            )
        if source_name is None:
            continue
        where = f"config key {key}.model.pretrained"
        if source_name not in experiments:
            raise FewcellsError(
                f"{where}: unknown source experiment {source_name!r} "
                f"(experiments: {sorted(experiments)})"
            )
        if source_name == name:
            raise FewcellsError(f"{where}: an experiment cannot be pretrained on itself")
        if model["weights"] is not None:
            raise FewcellsError(f"{where}: give either model.pretrained or model.weights, not both")
        source = experiments[source_name]
        if source["model"]["pretrained"] is not None:
            raise FewcellsError(
                f"{where}: the source experiment {source_name!r} is itself pretrained "
                f"(on {source['model']['pretrained']!r}); chains are not supported"
            )
        for what, value in [
            *((f"model.{k}", lambda e, k=k: e["model"][k]) for k in PRETRAINED_MODEL_KEYS),
            ("image.size", lambda e: e["image"]["size"]),
        ]:
            if value(experiment) != value(source):
                raise FewcellsError(
                    f"{where}: the source experiment {source_name!r} has {what} "
                    f"{value(source)!r}, this experiment {value(experiment)!r}; they must match"
                )


def check_merged_groups(groups: dict, class_names: list[str], key: str) -> None:
    """Every merged group names classes of the experiment and leaves at least one out."""
    for group, members in groups.items():
        unknown = [name for name in members if name not in class_names]
        if unknown:
            raise FewcellsError(
                f"config key {key}.{group}: unknown class(es) {unknown} "
                f"(classes of the experiment: {list(class_names)})"
            )
        if set(members) >= set(class_names):
            raise FewcellsError(
                f"config key {key}.{group}: the group takes every class, so no image is "
                "outside it and its ROC-AUC is undefined"
            )


def _check_merged(key: str, experiment: dict) -> None:
    """Merged groups need a multiclass task; with configured classes their names are known
    now (otherwise the classes come from the data and are checked by the evaluation)."""
    groups = experiment["evaluate"]["merged"]
    if not groups:
        return
    if experiment_task(experiment) != "multiclass":
        raise FewcellsError(
            f"config key {key}.evaluate.merged: merged classes need a multiclass experiment "
            f"(this one has the two classes {[c['name'] for c in experiment['classes']]})"
        )
    if experiment.get("classes"):
        names = [entry["name"] for entry in experiment["classes"]]
        check_merged_groups(groups, names, f"{key}.evaluate.merged")


def _check_compare(config: dict) -> None:
    """Each comparison names run experiments with one task, dataset and fold split."""
    names = [entry["name"] for entry in config["compare"]]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise FewcellsError(f"config key compare: duplicated comparison name(s) {duplicated}")
    for i, entry in enumerate(config["compare"]):
        entry.setdefault("metric", None)  # defaults are not filled inside arrays
        entry.setdefault("ensemble", False)
        key = f"compare[{i}].experiments"
        chosen = entry["experiments"]
        unknown = [name for name in chosen if name not in config["experiments"]]
        if unknown:
            raise FewcellsError(
                f"config key {key}: unknown experiment(s) {unknown} "
                f"(experiments: {sorted(config['experiments'])})"
            )
        not_run = [name for name in chosen if name not in config["run"]]
        if not_run:
            raise FewcellsError(
                f"config key {key}: experiment(s) {not_run} are not in `run` {config['run']}"
            )
        first, *others = chosen
        reference = config["experiments"][first]
        for name in others:
            experiment = config["experiments"][name]
            for what, value in (
                ("task", lambda e: experiment_task(e)),
                ("classes", lambda e: e.get("classes")),
                ("dataset", lambda e: e["dataset"]),
                ("folds (other than sizes/run_folds/selection)", fold_split),
            ):
                if value(experiment) != value(reference):
                    raise FewcellsError(
                        f"config key {key}: {name!r} and {first!r} differ in {what} "
                        f"({value(experiment)!r} vs {value(reference)!r}); a comparison needs "
                        "identical folds of one task"
                    )
        metric = entry["metric"]
        allowed = SCORES[experiment_task(reference)]
        if metric is not None and metric not in allowed:
            raise FewcellsError(
                f"config key compare[{i}].metric: {metric!r} is not a metric of this task "
                f"(one of {list(allowed)})"
            )
        if entry["ensemble"]:
            sizes, folds = common_sizes_and_folds(config, chosen)
            if not sizes or not folds:
                raise FewcellsError(
                    f"config key compare[{i}].ensemble: the experiments {chosen} share no "
                    f"trained (size, fold) (common sizes {sizes}, common folds {folds})"
                )
            if "ensemble" in chosen:
                raise FewcellsError(
                    f"config key compare[{i}].ensemble: an experiment named 'ensemble' would "
                    "be confused with the ensemble in the tables; rename it"
                )


def _check_subset(key: str, chosen: list | None, allowed: list) -> None:
    unknown = sorted(set(chosen or []) - set(allowed))
    if unknown:
        raise FewcellsError(f"config key {key}: {unknown} not among the trained {sorted(allowed)}")


def _check_classes(key: str, experiment: dict) -> None:
    """The `classes` section: unique names, labels claimed once, one rest class ('*'), and a
    validation set that can hold every class."""
    classes = experiment.get("classes")
    if classes is None:
        return
    names = [entry["name"] for entry in classes]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise FewcellsError(f"config key {key}.classes: class name(s) {duplicated} given twice")
    claimed: dict[str, str] = {}
    for entry in classes:
        for label in entry["labels"]:
            if label in claimed and claimed[label] != entry["name"]:
                what = "the rest ('*')" if label == "*" else f"label {label!r}"
                raise FewcellsError(
                    f"config key {key}.classes: {what} is claimed by both "
                    f"{claimed[label]!r} and {entry['name']!r}"
                )
            claimed[label] = entry["name"]
    if len(names) < 2:
        raise FewcellsError(f"config key {key}.classes: needs at least two classes, got {names}")
    n_val = experiment["folds"]["n_val"]
    if n_val < len(names):
        raise FewcellsError(
            f"config key {key}.folds.n_val: {n_val} is fewer than the {len(names)} classes; "
            "the validation set is stratified"
        )


def _demo_class_counts(experiment: dict, dataset: dict) -> dict[str, int]:
    """Images per class of a demo data set (after deduplication), by experiment class."""
    from fewcells.data.demo import DEMO_CLASSES

    n_per_class = dataset["demo"]["n_per_class"]
    per_label = {label: n_per_class for label in DEMO_CLASSES}
    classes = experiment.get("classes")
    if classes is None:
        return per_label
    counts: dict[str, int] = {}
    rest = next((c["name"] for c in classes if "*" in c["labels"]), None)
    by_label = {label: c["name"] for c in classes for label in c["labels"] if label != "*"}
    for label, count in per_label.items():
        name = by_label.get(label, rest)
        if name is not None:
            counts[name] = counts.get(name, 0) + count
    return counts


def _check_demo_sizes(key: str, experiment: dict, dataset: dict) -> None:
    """For the demo data the pool size is known up front: check k, n_val and sizes before
    any job."""
    folds = experiment["folds"]
    counts = _demo_class_counts(experiment, dataset)
    total = sum(counts.values())
    smallest = min(counts, key=counts.get)
    if folds["test_size"] is None and folds["k"] > counts[smallest]:
        raise FewcellsError(
            f"config key {key}.folds.k: {folds['k']} folds need at least {folds['k']} images "
            f"of every class; class {smallest!r} has {counts[smallest]} demo images"
        )
    test = folds["test_size"] or -(-total // folds["k"])
    if folds["n_val"] >= total - test:
        raise FewcellsError(
            f"config key {key}.folds.n_val: {folds['n_val']} leaves no training pool "
            f"({total} demo images, about {test} of them in the test set)"
        )
    pool = total - test - folds["n_val"]
    too_big = [size for size in folds["sizes"] if size > pool]
    if too_big:
        raise FewcellsError(
            f"config key {key}.folds.sizes: training size(s) {too_big} are larger than the "
            f"training pool (about {pool} images of {total} demo images)"
        )
