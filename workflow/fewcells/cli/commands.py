"""The `fewcells` subcommands: each reads its arguments (see fewcells.cli.parser) and calls
the package's function for its stage."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fewcells.contracts import read_table
from fewcells.errors import FewcellsError

KEPT_CSV = "a kept.csv of dedup"
KEPT_DTYPES = {"image_id": str, "label": str}  # ids and labels stay text, e.g. 007
FOLDS_SPEC_KEYS = ("k", "n_val", "seed")  # required; test_size, classes, sizes optional


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
    from fewcells.cli.selection_commands import apply_folds_selection
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
    kept = read_table(args.kept, ("image_id", "label"), what=KEPT_CSV, dtype=KEPT_DTYPES)
    if spec.get("set_aside"):
        from fewcells.predict.set_aside import without_set_aside

        kept = without_set_aside(kept, spec["set_aside"], spec["seed"])
    folds, names = assign_folds(
        kept,
        spec.get("classes"),
        k=spec["k"],
        n_val=spec["n_val"],
        sizes=spec.get("sizes"),
        seed=spec["seed"],
        test_size=spec.get("test_size"),
    )
    folds = apply_folds_selection(folds, spec, args.store_files, args.out)
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

    kept = read_table(args.kept, ("image_id", "path", "label"), what=KEPT_CSV, dtype=KEPT_DTYPES)
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
    from fewcells.plan import run_name
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
    elif args.what == "predict":
        from fewcells.predict.speed import benchmark_predict

        result = benchmark_predict(
            n_images=args.images if args.images != 20000 else 4096,
            threads=args.cores,
            repeats=max(args.repeats, 3),
        )
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
