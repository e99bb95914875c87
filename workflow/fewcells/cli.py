"""The `fewcells` command: one subcommand per workflow stage, as the Snakemake rules call them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from fewcells.config import STACKED_ENGINES
from fewcells.data.manifest import KINDS
from fewcells.errors import FewcellsError

FOLDS_SPEC_KEYS = ("k", "n_val", "seed")  # required; test_size, classes, sizes optional


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like the errors of the commands."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error


def _json_object(text: str) -> dict:
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"needs a JSON object {{...}}, not {type(value).__name__}: {text!r}"
        )
    return value


def _read_table(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read a CSV input, naming it and the missing columns if it lacks any."""
    table = pd.read_csv(path, dtype={"image_id": str, "label": str})
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise FewcellsError(f"{path}: not {what}, missing column(s) {missing}")
    return table


def _read_json_object(path: Path, keys: tuple[str, ...], what: str) -> dict:
    """Read a JSON file holding an object with `keys`, naming the file if it does not."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FewcellsError(f"{path}: not valid JSON ({error})") from error
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if missing:
        raise FewcellsError(f"{path}: not {what}, missing key(s) {missing}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_demo(args) -> None:
    from fewcells.data.demo import generate_demo

    labels = generate_demo(args.out, seed=args.seed, n_per_class=args.n_per_class)
    print(f"demo: {len(labels)} images written to {args.out}", file=sys.stderr)


def cmd_fetch(args) -> None:
    from fewcells.atomic import write_json
    from fewcells.data.demo import generate_demo
    from fewcells.data.fetch import fetch

    dataset = args.dataset
    if not isinstance(dataset, dict) or "kind" not in dataset:
        raise FewcellsError("--dataset: needs a JSON object with the key 'kind' (a datasets entry)")
    if dataset["kind"] != "demo" and "source" not in dataset:
        raise FewcellsError(f"--dataset: kind {dataset['kind']!r} needs the key 'source'")
    if dataset["kind"] == "demo":
        files = args.out / "files"
        generate_demo(files, **dataset["demo"])
        write_json(
            {"root": str(files.resolve()), "source": {"demo": dataset["demo"]}},
            args.out / "source.json",
        )
    else:
        root = fetch(dataset["source"], args.out)
        print(f"fetch: image root {root}", file=sys.stderr)


def cmd_manifest(args) -> None:
    from fewcells.data.manifest import build_manifest, write_manifest

    source = _read_json_object(args.source_json, ("root",), "a fetch source.json")
    root = Path(source["root"])
    kind = "csv" if args.kind == "demo" else args.kind
    manifest = build_manifest(
        root,
        kind,
        on_bad_image=args.on_bad_image,
        labels_csv=args.labels_csv,
        annotations=args.annotations,
        skip_advice="set dataset.on_bad_image: skip (--on-bad-image skip) to leave them out",
    )
    write_manifest(manifest, args.out)
    counts = manifest["label"].value_counts().sort_index()
    print(
        f"manifest: {len(manifest)} images; " + ", ".join(f"{k}: {v}" for k, v in counts.items()),
        file=sys.stderr,
    )


def cmd_dedup(args) -> None:
    from fewcells.atomic import write_csv, write_json
    from fewcells.data.dedup import DedupSettings, find_duplicates
    from fewcells.data.manifest import build_manifest, read_manifest

    settings = DedupSettings.from_config(args.settings)
    if args.out.exists() and not args.out.is_dir():
        raise FewcellsError(f"--out {args.out}: is a file; give a folder for the dedup outputs")
    if args.input.is_dir():
        manifest = build_manifest(
            args.input,
            args.kind,
            on_bad_image=args.on_bad_image,
            skip_advice="give --on-bad-image skip to leave them out",
        )
    else:
        manifest = read_manifest(args.input)
    pairs, kept = find_duplicates(manifest, settings, workers=args.threads)
    write_csv(pairs, args.out / "pairs.csv")
    write_csv(kept, args.out / "kept.csv")
    removed = pairs[pairs["removed"]]
    write_json(
        {
            "images": len(manifest),
            "kept": len(kept),
            "removed": len(manifest) - len(kept),
            "candidate_pairs": len(pairs),
            "confirmed_pairs": int(pairs["confirmed"].sum()),
            "label_conflicts": int(pairs["label_conflict"].sum()),
            "removed_images": removed["image_b"].tolist(),
        },
        args.out / "dedup_summary.json",
    )
    print(
        f"dedup: {len(manifest)} images, {len(pairs)} candidate pairs, "
        f"{int(pairs['confirmed'].sum())} confirmed, kept {len(kept)}, "
        f"removed {len(manifest) - len(kept)}"
        + (
            f"; {int(pairs['label_conflict'].sum())} duplicate pair(s) with different labels"
            if pairs["label_conflict"].any()
            else ""
        ),
        file=sys.stderr,
    )


def cmd_folds(args) -> None:
    from fewcells.atomic import write_csv, write_json
    from fewcells.data.folds import assign_folds

    spec = args.spec
    missing = [key for key in FOLDS_SPEC_KEYS if key not in spec]
    if missing:
        raise FewcellsError(
            f'--spec: missing key(s) {missing}; needs {{"k", "n_val", "seed"}}, '
            'optionally "test_size", "classes", "sizes"'
        )
    for key in (*FOLDS_SPEC_KEYS, "test_size"):
        if spec.get(key) is not None and (
            not isinstance(spec[key], int) or isinstance(spec[key], bool)
        ):
            raise FewcellsError(f"--spec: {key} must be a whole number, not {spec[key]!r}")
    kept = _read_table(args.kept, ("image_id", "label"), "a kept.csv of dedup")
    folds, names = assign_folds(
        kept,
        spec.get("classes"),
        k=spec["k"],
        n_val=spec["n_val"],
        sizes=spec.get("sizes"),
        seed=spec["seed"],
        test_size=spec.get("test_size"),
    )
    write_csv(folds, args.out / "folds.csv")
    task = "binary" if len(names) == 2 else "multiclass"
    write_json({"classes": names, "task": task}, args.out / "classes.json")
    per_class = folds[folds["fold"] == 0].groupby(["role", "class_name"]).size()
    print(
        f"folds: {spec['k']} folds, classes {names}; fold 0: "
        + ", ".join(f"{r}/{c}={n}" for (r, c), n in per_class.items()),
        file=sys.stderr,
    )


def cmd_store(args) -> None:
    from fewcells.data.store import build_store

    kept = _read_table(args.kept, ("image_id", "path", "label"), "a kept.csv of dedup")
    build_store(kept, args.out, args.image_size, args.fit)
    print(f"store: {len(kept)} images at {args.image_size} px in {args.out}", file=sys.stderr)


def _train_fold(args, fold: int, size: int, out: Path, replicate: int = 0) -> None:
    """One (training size, fold, replicate) training of `train` or `train-folds`, written to
    OUT."""
    from fewcells.training.run import run_training

    info = run_training(
        args.store,
        args.folds / "folds.csv",
        args.folds / "classes.json",
        fold,
        size,
        args.train_config,
        args.model_config,
        out,
        image_size=args.image_size,
        replicate=replicate,
        progress=args.progress,
    )
    print(
        f"{args.command}: fold {fold} replicate {replicate} size {size}: {json.dumps(info)}",
        file=sys.stderr,
    )


def cmd_train(args) -> None:
    _train_fold(args, args.fold, args.size, args.out, args.replicate)


def cmd_train_folds(args) -> None:
    from fewcells.config import run_name
    from fewcells.training.memory import release_freed_memory

    for size in args.sizes:
        for fold in args.fold_ids:
            for replicate in range(args.replicates):
                out = args.out / f"n{size}" / run_name(fold, replicate)
                _train_fold(args, fold, size, out, replicate)
                release_freed_memory()


def cmd_train_stacked(args) -> None:
    from fewcells.training.stacked import run_stacked_training

    infos = run_stacked_training(
        args.store,
        args.folds / "folds.csv",
        args.folds / "classes.json",
        args.fold_ids,
        args.sizes,
        args.train_config,
        args.model_config,
        args.out,
        image_size=args.image_size,
        engine=args.engine,
    )
    epochs = ", ".join(f"n{i['size']} fold {i['fold']}: {i['epochs_run']}" for i in infos)
    print(f"train-stacked: epochs {epochs}", file=sys.stderr)


def cmd_pretrain(args) -> None:
    from fewcells.training.pretrain import run_pretraining

    run_pretraining(
        args.store,
        args.classes,
        args.train_config,
        args.model_config,
        args.out,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        split_seed=args.seed,
        progress=args.progress,
    )


def cmd_evaluate(args) -> None:
    from fewcells.analysis.evaluate import evaluate_experiment

    train_dirs = sorted(args.train_dirs)
    evaluate_experiment(
        [d / "predictions.csv" for d in train_dirs],
        [d / "history.csv" for d in train_dirs],
        args.classes,
        args.out,
        experiment=args.experiment,
        reference=args.reference,
        plot_options=args.plot_options,
        info_files=[d / "train_info.json" for d in train_dirs],
    )


def cmd_compare(args) -> None:
    from fewcells.analysis.compare import compare_experiments

    compare_experiments(
        args.metrics, args.names, args.metric, args.out, title=args.title, dpi=args.dpi
    )


def cmd_ensemble(args) -> None:
    from fewcells.analysis.ensemble import ensemble_experiments

    members = {}
    for name, *files in args.member:
        if name in members:
            raise FewcellsError(f"--member {name} given twice")
        if not files:
            raise FewcellsError(f"--member {name}: give its predictions.csv files")
        members[name] = files
    ensemble_experiments(
        members, args.classes, args.out, metric=args.metric, title=args.title, dpi=args.dpi
    )


def cmd_merged(args) -> None:
    from fewcells.analysis.merged_classes import evaluate_merged

    evaluate_merged(
        [d / "predictions.csv" for d in sorted(args.train_dirs)],
        args.classes,
        args.groups,
        args.out,
        experiment=args.experiment,
        roc_sizes=args.roc_sizes,
        dpi=args.dpi,
    )


def cmd_explain(args) -> None:
    import torch

    from fewcells.explain.relevance import explain_fold

    torch.set_num_threads(args.threads)
    summary = explain_fold(
        args.store,
        args.folds,
        args.fold,
        args.train_root,
        args.sizes,
        args.out,
        settings=args.settings,
        experiment=args.experiment,
        masks_dir=args.masks,
        fit=args.fit,
        dpi=args.dpi,
    )
    print(f"explain: fold {args.fold}\n{summary.to_string(index=False)}", file=sys.stderr)


def cmd_tsne(args) -> None:
    from fewcells.explain.tsne import tsne_fold

    files = {
        size: args.train_root / f"n{size}" / f"fold{args.fold}" / "embeddings.npz"
        for size in args.sizes
    }
    table = tsne_fold(
        files,
        args.classes,
        args.out,
        fold=args.fold,
        experiment=args.experiment,
        perplexity=args.perplexity,
        seed=args.seed,
        knn=args.knn,
        dpi=args.dpi,
    )
    print(f"tsne: fold {args.fold}\n{table.to_string(index=False)}", file=sys.stderr)


def cmd_unlock(args) -> None:
    from fewcells.runlock import describe, owner_state, remove_stale_temporaries_under, unlock

    owner = unlock(args.results)
    if owner is None:
        print(f"unlock: {args.results} was not locked", file=sys.stderr)
        return
    print(f"unlock: removed the run lock of {describe(owner)}", file=sys.stderr)
    if owner_state(owner) == "alive":
        return  # its half-written outputs may still be in progress
    for path in remove_stale_temporaries_under(args.results):
        print(f"unlock: removed {path}, left half-written by a killed run", file=sys.stderr)


def cmd_benchmark(args) -> None:
    from fewcells import benchmark

    if args.what == "training":
        result = benchmark.benchmark_training(
            size=args.size,
            epochs=args.epochs,
            cores=args.cores,
            model_name=args.model,
            repeats=args.repeats,
        )
    elif args.what == "workflow":
        repo = Path.cwd()
        if not (repo / "Snakefile").is_file():
            raise FewcellsError(f"benchmark workflow: run it in the repository root ({repo})")
        configfiles = [p.resolve() for p in args.configfile or [repo / "config" / "config.yaml"]]
        result = benchmark.benchmark_workflow(
            repo, configfiles, cores=args.cores or os.cpu_count(), workdir=args.workdir
        )
    elif args.what == "dedup":
        result = benchmark.benchmark_dedup(n_images=args.images, threads=args.cores)
    elif args.what == "stacked-sweep":
        result = benchmark.benchmark_stacked_sweep(
            sizes=args.sizes, folds=args.folds, epochs=args.epochs, threads=args.cores
        )
    else:
        if args.train_root is None:
            raise FewcellsError("benchmark sweep: give --train-root RESULTS/EXPERIMENT/train")
        result = benchmark.sweep_cost(
            args.train_root,
            cores=args.cores or os.cpu_count(),
            sizes=args.project_sizes,
            folds=args.project_folds,
        )
    if args.json:
        from fewcells.atomic import write_json

        write_json(result, args.json)


def _add_network_arguments(p: argparse.ArgumentParser) -> None:
    """--image-size, --train-config and --model-config of the commands that train."""
    p.add_argument(
        "--image-size",
        type=int,
        required=True,
        help="side of the stored images (px), as in the store",
    )
    p.add_argument("--train-config", type=_json, default={}, help="the train config section (JSON)")
    p.add_argument(
        "--model-config",
        type=_json,
        default={"name": "paper_cnn"},
        help='the model config section (JSON), default {"name": "paper_cnn"}',
    )


def _add_many_trainings_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of the commands that train every fold of several training sizes."""
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder (images.npy, index.csv)"
    )
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv, classes.json")
    p.add_argument("--fold-ids", type=_int_list, required=True, help="comma-separated folds")
    p.add_argument("--sizes", type=_int_list, required=True, help="comma-separated sizes")
    _add_network_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="train folder: OUT/n{size}/fold{k}/")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fewcells", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write the synthetic demo data set")
    p.add_argument("out", type=Path, help="folder to write the images and labels.csv to")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--n-per-class", type=int, default=40, help="images per class")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fetch", help="materialise a data set (folder, archive, URL or demo)")
    p.add_argument("--dataset", type=_json, required=True, help="the dataset config (JSON)")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for source.json (and the data set's files)"
    )
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("manifest", help="table of every image: id, path, label, size, sha256")
    p.add_argument("source_json", type=Path, help="the source.json written by fetch")
    p.add_argument(
        "--kind",
        required=True,
        choices=[*KINDS, "demo"],
        help="layout of the data set (dataset.kind)",
    )
    p.add_argument(
        "--on-bad-image",
        default="error",
        choices=["error", "skip"],
        help="a file that is not a readable image: stop with an error, or skip it with a warning",
    )
    p.add_argument(
        "--labels-csv",
        default="labels.csv",
        help="csv kind: label table relative to the data set root",
    )
    p.add_argument(
        "--annotations",
        default=None,
        help="aml_tcia kind: annotation file (default ROOT/annotations.dat)",
    )
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("dedup", help="perceptual-hash deduplication with pixel confirmation")
    p.add_argument("input", type=Path, help="a manifest CSV or a folder of images")
    p.add_argument(
        "--kind", default="all_idb2", choices=KINDS, help="layout when INPUT is a folder"
    )
    p.add_argument(
        "--on-bad-image",
        default="error",
        choices=["error", "skip"],
        help="when INPUT is a folder, a file that is not a readable image: error or skip it",
    )
    p.add_argument(
        "--settings",
        type=_json_object,
        default={},
        help='dedup settings (JSON object, the dedup config), e.g. {"max_distance": 16}',
    )
    p.add_argument("--threads", type=int, default=1, help="processes hashing images")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for pairs.csv, kept.csv, dedup_summary.json"
    )
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("folds", help="k-fold test/val/pool assignment with nested sizes")
    p.add_argument("kept", type=Path, help="the kept.csv of dedup (image_id, label)")
    p.add_argument(
        "--spec",
        type=_json_object,
        required=True,
        help='JSON: {"k", "n_val", "seed", "test_size", "classes"}; "sizes" to check them',
    )
    p.add_argument("--out", type=Path, required=True, help="folder for folds.csv and classes.json")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("store", help="uint8 tensor store of the kept images")
    p.add_argument("kept", type=Path, help="the kept.csv of dedup (image_id, path, label)")
    p.add_argument(
        "--image-size", type=_positive_int, required=True, help="side of the stored images (px)"
    )
    p.add_argument(
        "--fit",
        default="pad",
        choices=["pad", "resize"],
        help="how images are brought to the size: pad (centre, crop or pad) or resize",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="store folder to write (images.npy, index.csv, store_info.json)",
    )
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("train", help="train one network for one (training size, fold)")
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder (images.npy, index.csv)"
    )
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv, classes.json")
    p.add_argument("--fold", type=int, required=True, help="fold number")
    p.add_argument("--size", type=int, required=True, help="training-set size")
    p.add_argument(
        "--replicate",
        type=int,
        default=0,
        help="replicate number: another seed on the same fold (0 = the first network)",
    )
    _add_network_arguments(p)
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the trained network and its predictions"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-folds", help="train sizes x folds one after another, one process")
    _add_many_trainings_arguments(p)
    p.add_argument(
        "--replicates",
        type=int,
        default=1,
        help="networks per (size, fold), each its own seed: OUT/n{size}/fold{k}_rep{r}/ for r >= 1",
    )
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.set_defaults(func=cmd_train_folds)

    p = sub.add_parser("train-stacked", help="train sizes x folds side by side as one model")
    _add_many_trainings_arguments(p)
    p.add_argument(
        "--engine",
        default="stacked",
        choices=STACKED_ENGINES,
        help="the train.engine recorded in train_info.json",
    )
    p.set_defaults(func=cmd_train_stacked)

    p = sub.add_parser("pretrain", help="train one network on a source experiment's images")
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder of the source experiment"
    )
    p.add_argument(
        "--classes", type=_json, default=None, help="the experiment's classes section (JSON)"
    )
    _add_network_arguments(p)
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the images held out for validation",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.add_argument("--out", type=Path, required=True, help="folder for the pretrained network")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="metrics, summary and figures of a training-size sweep")
    p.add_argument(
        "train_dirs",
        type=Path,
        nargs="+",
        help="training folders (each with predictions.csv, history.csv, train_info.json)",
    )
    p.add_argument("--classes", type=Path, required=True, help="the experiment's classes.json")
    p.add_argument("--experiment", required=True, help="experiment name shown in the outputs")
    p.add_argument(
        "--reference",
        default=None,
        help="the paper's reported results to compare with (reference key)",
    )
    p.add_argument(
        "--plot-options",
        type=_json,
        default={},
        help="JSON: dpi, roc_sizes, loss_sizes (the plots config)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for metrics, summaries and figures"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="compare experiments on identical folds (Wilcoxon)")
    p.add_argument("metrics", type=Path, nargs="+", help="each experiment's metrics.csv")
    p.add_argument("--names", nargs="+", required=True, help="experiment names, same order")
    p.add_argument("--metric", required=True, help="metrics.csv column, e.g. roc_auc")
    p.add_argument("--title", default="", help="comparison name shown in the outputs")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--out", type=Path, required=True, help="folder for the comparison outputs")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ensemble", help="soft-voting ensemble of experiments on identical folds")
    p.add_argument(
        "--member",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "PREDICTIONS_CSV"),
        help="a member's name, then its predictions.csv files; repeat per member",
    )
    p.add_argument("--classes", type=Path, required=True, help="the members' classes.json")
    p.add_argument("--metric", default=None, help="figure and tests (default: main metric)")
    p.add_argument("--title", default="", help="ensemble name shown in the outputs")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--out", type=Path, required=True, help="folder for the ensemble outputs")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("merged", help="ROC-AUC of merged classes (sums of class probabilities)")
    p.add_argument(
        "train_dirs", type=Path, nargs="+", help="training folders (each with predictions.csv)"
    )
    p.add_argument("--classes", type=Path, required=True, help="the experiment's classes.json")
    p.add_argument(
        "--groups", type=_json, required=True, help='JSON: {"blast": ["myeloblast", ...], ...}'
    )
    p.add_argument("--experiment", default="", help="experiment name shown in the outputs")
    p.add_argument(
        "--roc-sizes",
        type=int,
        nargs="+",
        default=None,
        help="training sizes whose ROC curves are drawn",
    )
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--out", type=Path, required=True, help="folder for the merged-class outputs")
    p.set_defaults(func=cmd_merged)

    p = sub.add_parser("explain", help="saliency and LRP maps, relevance shares of one fold")
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder (images.npy, index.csv)"
    )
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv, classes.json")
    p.add_argument("--train-root", type=Path, required=True, help="RESULTS/EXPERIMENT/train")
    p.add_argument("--fold", type=int, required=True, help="fold number")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training sizes to explain")
    p.add_argument(
        "--settings",
        type=_json,
        default={},
        help='JSON: {"composite", "share_composites", "epsilon", "gamma", "target", "cells"}'
        " (the explain config)",
    )
    p.add_argument("--masks", type=Path, default=None, help="folder of expert masks")
    p.add_argument("--fit", default="pad", choices=["pad", "resize"], help="the store's fit")
    p.add_argument("--experiment", default="", help="experiment name shown in the outputs")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for maps, relevance shares and figures"
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("tsne", help="tSNE of the hidden layer and class separation of one fold")
    p.add_argument("--train-root", type=Path, required=True, help="RESULTS/EXPERIMENT/train")
    p.add_argument("--fold", type=int, required=True, help="fold number")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training sizes to embed")
    p.add_argument("--classes", type=Path, required=True, help="the experiment's classes.json")
    p.add_argument(
        "--perplexity",
        type=float,
        default=30.0,
        help="tSNE perplexity (lowered to (n - 1) / 3 for n points where needed)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of tSNE")
    p.add_argument("--knn", type=int, default=5, help="k of the leave-one-out k-NN accuracy")
    p.add_argument("--experiment", default="", help="experiment name shown in the outputs")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--out", type=Path, required=True, help="folder for the tSNE table and figures")
    p.set_defaults(func=cmd_tsne)

    p = sub.add_parser(
        "unlock", help="remove a results folder's run lock (when its run has ended uncleanly)"
    )
    p.add_argument("results", type=Path, help="the results folder (config key results)")
    p.set_defaults(func=cmd_unlock)

    p = sub.add_parser("benchmark", help="print speed and memory numbers (see fewcells.benchmark)")
    p.add_argument(
        "what",
        choices=["training", "workflow", "dedup", "sweep", "stacked-sweep"],
        help="what to measure",
    )
    p.add_argument("--cores", type=int, default=None, help="default: all cores")
    p.add_argument("--size", type=int, default=100, help="training: training-set size")
    p.add_argument("--model", default="paper_cnn", help="training: model.name to measure")
    p.add_argument(
        "--epochs", type=int, default=30, help="training, stacked-sweep: epochs per network"
    )
    p.add_argument(
        "--sizes",
        type=_int_list,
        default=list(range(10, 201, 10)),
        help="stacked-sweep: comma-separated training sizes (the paper's 10-200)",
    )
    p.add_argument("--folds", type=int, default=10, help="stacked-sweep: folds per size")
    p.add_argument(
        "--repeats", type=int, default=1, help="training: plain/workflow pairs; medians reported"
    )
    p.add_argument("--images", type=int, default=20000, help="dedup: number of images")
    p.add_argument("--configfile", type=Path, nargs="+", help="workflow: configs (demo)")
    p.add_argument("--workdir", type=Path, help="workflow: run (and keep the results) here")
    p.add_argument("--train-root", type=Path, help="sweep: RESULTS/EXPERIMENT/train")
    p.add_argument("--project-sizes", type=int, nargs="+", help="sweep: sizes to project to")
    p.add_argument("--project-folds", type=int, help="sweep: folds to project to")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a FewcellsError prints one line and exits with status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FewcellsError as error:
        print(f"fewcells {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a missing, unreadable or unwritable file or folder, a full disk
        where = f"{error.filename}: " if error.filename else ""
        print(f"fewcells {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        print(f"fewcells {args.command}: error: cannot read a CSV input: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
