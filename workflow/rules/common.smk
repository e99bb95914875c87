# Config and paths shared by all rule files. Holds the validated config (CONFIG), the
# results folders, the run lock, the code whose edits retrain, wildcard constraints and the
# report's sections. The Snakefile includes this file first, then targets.smk (what the run
# makes) and inputs.smk (what the rules read, their params and resources).


import atexit
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from fewcells import runlock
from fewcells.config import check_config_file, validate_config
from fewcells.data.fetch import source_listing
from fewcells.errors import FewcellsError
from fewcells.predict.entries import (
    entry_classes,
    entry_train_dirs,
    set_aside_dependency,
)
from fewcells.plan import (
    common_sizes_and_folds,
    compare_metric,
    experiment_task,
    explain_folds,
    explain_sizes,
    fold_ids,
    model_job_config,
    parse_run_name,
    pretrain_job_config,
    replicates_at,
    run_name,
    train_job_config,
    training_runs,
    tsne_fold,
    tsne_sizes,
)

try:
    for path in workflow.configfiles:
        check_config_file(path)
    CONFIG = validate_config(config)
except FewcellsError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None

RESULTS = CONFIG["results"]
DATASETS = f"{RESULTS}/datasets"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
PRETRAINED = f"{RESULTS}/pretrained"
# Snakemake options that parse the workflow without running jobs: they take no run lock.
NO_RUN_OPTIONS = {
    "--lint",
    "--list-rules",
    "--list",
    "-l",
    "--list-target-rules",
    "--lt",
    "--summary",
    "-S",
    "--detailed-summary",
    "-D",
    "--dag",
    "--rulegraph",
    "--filegraph",
    "--d3dag",
    "--report",
    "--cleanup-metadata",
    "--cm",
    "--list-changes",
    "--lc",
    "--list-input-changes",
    "--li",
    "--list-params-changes",
    "--lp",
    "--list-code-changes",
    "--list-untracked",
    "--lu",
    "--print-compilation",
    "--containerize",
    "--archive",
    "--export-cwl",
    "--generate-unit-tests",
    "--delete-all-output",
    "--delete-temp-output",
    "--conda-create-envs-only",
    "--touch",
    "-t",
    "--unlock",
    "--version",
    "-v",
    "--help",
    "-h",
}


def lock_results():
    """A real run (main process, not -n and none of NO_RUN_OPTIONS) takes RESULTS' run lock
    until it exits and removes what killed runs left half-written; `--unlock` clears a lock
    whose run is gone. See fewcells.runlock."""
    if not workflow.is_main_process:
        return  # a job on a cluster node: the submitting run holds the lock
    options = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
    try:
        if "--unlock" in options:
            try:
                owner = runlock.unlock(RESULTS, force=False)
            except FewcellsError as error:
                logger.warning(str(error))
                return
            if owner:
                logger.info(f"removed the run lock of {runlock.describe(owner)}")
            return
        if workflow.output_settings.dryrun or options & NO_RUN_OPTIONS:
            return
        runlock.acquire(RESULTS, warn=logger.warning)
        atexit.register(runlock.release, RESULTS)
        for path in runlock.remove_stale_temporaries_under(RESULTS):
            logger.warning(f"removed {path}, left half-written by a killed run")
    except FewcellsError as error:
        raise WorkflowError(str(error)) from None


lock_results()
PACKAGE = Path(workflow.basedir) / "workflow" / "fewcells"


def code_path(path):
    """PATH relative to the working directory: a moved or fresh clone keeps its trainings."""
    return os.path.relpath(path)


def package_files(folder, leave_out=()):
    """The Python and C++ sources under FOLDER of the fewcells package, but LEAVE_OUT (names)."""
    return sorted(
        code_path(path)
        for path in (PACKAGE / folder).rglob("*")
        if path.suffix in (".py", ".cpp", ".h")
        and "__pycache__" not in path.parts
        and path.name not in leave_out
    )


# Code whose edits change what a training writes, so that editing it reruns the trainings:
# the training package (a training does not import pretrain.py) and the file contracts (the
# columns of history.csv and predictions.csv, what a collapsed network is). Pretraining also
# reads data/folds.py, the class mapping of its split.
TRAINING_CODE = package_files("training", leave_out=("pretrain.py",)) + [
    code_path(PACKAGE / "contracts.py")
]
PRETRAINING_CODE = TRAINING_CODE + [
    code_path(PACKAGE / "training" / "pretrain.py"),
    code_path(PACKAGE / "data" / "folds.py"),
]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    experiment=r"[A-Za-z0-9_-]+",
    size=r"\d+",
    fold=r"\d+",
    run=r"fold\d+(_rep\d+)?",
    comparison=r"[A-Za-z0-9_-]+",
    name=r"[A-Za-z0-9_-]+",


def one_of(names):
    """A wildcard constraint that matches exactly NAMES (and nothing where there are none)."""
    return "|".join(names) or "(?!)"


def experiment_config(wildcards):
    return CONFIG["experiments"][wildcards.experiment]


def dataset_of(wildcards):
    return CONFIG["experiments"][wildcards.experiment]["dataset"]


def train_engine(experiment):
    return CONFIG["experiments"][experiment]["train"]["engine"]


def selection_of(experiment):
    """folds.selection.strategy of EXPERIMENT: random, diverse or uncertain."""
    return CONFIG["experiments"][experiment]["folds"]["selection"]["strategy"]


def is_binary(experiment):
    return experiment_task(CONFIG["experiments"][experiment]) == "binary"


def as_json(section):
    return json.dumps(section, sort_keys=True)


# Where each part of the report finds its files: folder, category, subcategory, labels (the
# figure's own label is added by report_output) and the caption shared by its files (None:
# each file has its own, named like the file).
REPORT_SECTIONS = {
    "dedup": (
        f"{DATASETS}/{{dataset}}/dedup",
        "Data",
        None,
        {"dataset": "{dataset}"},
        "dedup",
    ),
    "evaluation": (
        f"{RESULTS}/{{experiment}}/evaluation",
        "{experiment}",
        "Evaluation",
        {"experiment": "{experiment}"},
        None,
    ),
    "merged": (
        f"{RESULTS}/{{experiment}}/evaluation/merged",
        "{experiment}",
        "Merged classes",
        {"experiment": "{experiment}"},
        "merged",
    ),
    "explain": (
        f"{RESULTS}/{{experiment}}/explain/fold{{fold}}",
        "{experiment}",
        "Explanations",
        {"experiment": "{experiment}", "fold": "{fold}"},
        None,
    ),
    "tsne": (
        f"{RESULTS}/{{experiment}}/tsne/fold{{fold}}",
        "{experiment}",
        "Explanations",
        {"experiment": "{experiment}", "fold": "{fold}"},
        None,
    ),
    "comparison": (
        f"{RESULTS}/comparisons/{{comparison}}",
        "Comparisons",
        "{comparison}",
        {"comparison": "{comparison}"},
        "comparison",
    ),
    "ensemble": (
        f"{RESULTS}/comparisons/{{comparison}}",
        "Comparisons",
        "{comparison}",
        {"comparison": "{comparison}"},
        "ensemble",
    ),
    "predict": (
        f"{RESULTS}/{{experiment}}/predict/{{name}}",
        "{experiment}",
        "Prediction {name}",
        {"experiment": "{experiment}", "prediction": "{name}"},
        "predict",
    ),
}


def report_output(section, name, caption=None, **label):
    """The output NAME of a report SECTION (see REPORT_SECTIONS), shown in the report with
    the caption workflow/report/CAPTION.rst and LABEL (figure=... or output=...)."""
    folder, category, subcategory, labels, shared_caption = REPORT_SECTIONS[section]
    caption = caption or shared_caption or Path(name).stem
    return report(
        f"{folder}/{name}",
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
        labels=labels | label,
    )
