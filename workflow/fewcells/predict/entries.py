"""The `predict` section of the config: checks, and the networks and files of an entry
(used by the Snakemake rules and by `fewcells predict --configfile`)."""

from __future__ import annotations

from pathlib import Path

from fewcells.errors import FewcellsError
from fewcells.plan import fold_ids, replicates_at, run_name

ENTRY_DEFAULTS = {
    "size": None,
    "networks": "all",
    "classes": None,
    "rescale": 1.0,
    "batch_size": 64,
    "threads": 1,
    "sheet_images": 4,
    "mem_mb": 2000,
}
DEMO_DEFAULTS = {"seed": 1, "n_per_class": 10, "colour_shift": None}
IMAGES_DEFAULTS = {"on_bad_image": "error", "labels_csv": "labels.csv", "annotations": None}


def check_predict(config: dict) -> None:
    """Fill each predict entry's defaults and check it against the experiments."""
    seen = set()
    for i, entry in enumerate(config.get("predict") or []):
        key = f"predict[{i}]"
        for name, value in ENTRY_DEFAULTS.items():
            entry.setdefault(name, value)
        for name, value in IMAGES_DEFAULTS.items():
            entry["images"].setdefault(name, value)
        if entry["images"]["kind"] == "demo":
            entry["images"]["demo"] = {**DEMO_DEFAULTS, **(entry["images"].get("demo") or {})}
        experiment = config["experiments"].get(entry["experiment"])
        if experiment is None:
            raise FewcellsError(
                f"config key {key}.experiment: unknown experiment {entry['experiment']!r} "
                f"(experiments: {sorted(config['experiments'])})"
            )
        if (entry["experiment"], entry["name"]) in seen:
            raise FewcellsError(
                f"config key {key}.name: {entry['name']!r} is used twice for experiment "
                f"{entry['experiment']!r}"
            )
        seen.add((entry["experiment"], entry["name"]))
        unknown = sorted(set(entry_sizes(experiment, entry)) - set(experiment["folds"]["sizes"]))
        if unknown:
            raise FewcellsError(
                f"config key {key}.size: {unknown} not among the trained sizes "
                f"{sorted(experiment['folds']['sizes'])}"
            )
        networks = entry["networks"]
        if networks != "all" and networks not in fold_ids(experiment):
            raise FewcellsError(
                f"config key {key}.networks: fold {networks!r} is not trained "
                f"(folds {fold_ids(experiment)}); give a fold or 'all'"
            )
        images = entry["images"]
        if images["kind"] != "demo" and "source" not in images:
            raise FewcellsError(f"config key {key}.images: kind {images['kind']!r} needs a source")
        names = [c["name"] for c in experiment.get("classes") or []]
        for entry_class in entry["classes"] or []:
            if names and entry_class["name"] not in names:
                raise FewcellsError(
                    f"config key {key}.classes: {entry_class['name']!r} is not a class of "
                    f"{entry['experiment']!r} ({names})"
                )


def entry_sizes(experiment: dict, entry: dict) -> list[int]:
    """The training sizes of an entry: `size` (one or a list), or the largest trained."""
    size = entry.get("size")
    if size is None:
        return [max(experiment["folds"]["sizes"])]
    return sorted(size) if isinstance(size, list) else [size]


def entry_runs(experiment: dict, entry: dict, size: int) -> list[str]:
    """The run folders of an entry's networks at `size`: every fold's (networks 'all') or
    one fold's, with their replicates."""
    folds = fold_ids(experiment) if entry.get("networks", "all") == "all" else [entry["networks"]]
    return [
        run_name(fold, replicate)
        for fold in folds
        for replicate in range(replicates_at(experiment, size))
    ]


def entry_train_dirs(config: dict, entry: dict) -> list[str]:
    """The training folders of an entry's networks, every size."""
    experiment = config["experiments"][entry["experiment"]]
    root = f"{config['results']}/{entry['experiment']}/train"
    return [
        f"{root}/n{size}/{run}"
        for size in entry_sizes(experiment, entry)
        for run in entry_runs(experiment, entry, size)
    ]


def entry_classes(config: dict, entry: dict) -> list[dict] | None:
    """How the set's labels map to the experiment's classes: the entry's `classes`, else
    the experiment's."""
    return entry["classes"] or config["experiments"][entry["experiment"]].get("classes")


def set_aside_dependency(config: dict, entry: dict) -> list[str]:
    """The set_aside.csv an entry's images come from, when its source is an experiment's
    set-aside folder (RESULTS/<experiment>/set_aside/images), else nothing."""
    path = (entry["images"].get("source") or {}).get("path")
    if not isinstance(path, str):
        return []
    resolved = Path(path).resolve()
    for name, experiment in config["experiments"].items():
        if not experiment["folds"].get("set_aside"):
            continue
        folder = Path(config["results"], name, "set_aside").resolve()
        if resolved == folder / "images" or folder / "images" in resolved.parents:
            return [f"{config['results']}/{name}/set_aside/set_aside.csv"]
    return []
