"""The `fewcells` subcommands that use trained networks: set images aside before the folds,
classify an image set (and validate on it), export networks. See fewcells.predict."""

from __future__ import annotations

import sys
from pathlib import Path

from fewcells.cli.commands import KEPT_CSV, KEPT_DTYPES
from fewcells.contracts import read_table
from fewcells.errors import FewcellsError


def cmd_set_aside(args) -> None:
    from fewcells.predict.set_aside import write_set_aside

    kept = read_table(args.kept, ("image_id", "label", "path"), what=KEPT_CSV, dtype=KEPT_DTYPES)
    aside = write_set_aside(kept, args.per_label, args.seed, args.out)
    print(
        f"set-aside: {len(aside)} images ({args.per_label} per label) in {args.out}",
        file=sys.stderr,
    )


def config_entry(args) -> tuple[dict, dict]:
    """(validated config, predict entry) of `fewcells predict/export --configfile`."""
    import yaml

    from fewcells.config import validate_config

    config = yaml.safe_load(args.configfile.read_text())
    if args.results is not None:
        config["results"] = str(args.results)
    if args.experiment is None:
        raise FewcellsError("--configfile needs --experiment")
    images = args.images
    if images is None:
        images = {"kind": "folder", "source": {"path": str(args.out)}}  # checked below
    elif not isinstance(images, dict):
        images = {"kind": "folder", "source": {"path": str(images)}}
    entry = {
        "name": args.name or "cli",
        "experiment": args.experiment,
        "size": args.size,
        "networks": "all" if args.networks == "all" else int(args.networks),
        "images": images,
    }
    config["predict"] = [entry]
    config = validate_config(config)
    return config, config["predict"][0]


def entry_networks(config: dict, entry: dict) -> dict:
    """The networks a predict entry names: their folders, classes.json, experiment and the
    experiment's image.fit (the options predict and export share)."""
    from fewcells.predict.entries import entry_train_dirs

    name = entry["experiment"]
    return {
        "train_dirs": entry_train_dirs(config, entry),
        "classes_json": Path(config["results"], name, "folds", "classes.json"),
        "experiment": name,
        "fit": config["experiments"][name]["image"]["fit"],
    }


def cmd_predict(args) -> None:
    from fewcells.predict.predict import run_prediction

    if args.configfile is not None:
        from fewcells.predict.entries import entry_classes

        if args.images is None:
            raise FewcellsError("--images: give a folder of images or a data set entry (JSON)")
        config, entry = config_entry(args)
        explain = config["experiments"][entry["experiment"]]["explain"]
        options = {
            **entry_networks(config, entry),
            "images": entry["images"],
            "rescale": args.rescale or entry["rescale"],
            "classes": entry_classes(config, entry),
            "name": entry["name"],
            "explain_settings": {k: explain[k] for k in ("composite", "epsilon", "gamma")},
        }
    else:
        missing = [
            flag
            for flag, value in (
                ("--train-dirs", args.train_dirs),
                ("--classes", args.classes),
                ("--images", args.images),
            )
            if not value
        ]
        if missing:
            raise FewcellsError(f"give --configfile, or {', '.join(missing)}")
        options = {
            "train_dirs": args.train_dirs,
            "classes_json": args.classes,
            "images": args.images
            if isinstance(args.images, dict)
            else {"kind": "folder", "source": {"path": args.images}},
            "fit": args.fit,
            "rescale": args.rescale or 1.0,
            "classes": args.classes_map,
            "experiment": args.experiment or "",
            "name": args.name or "",
            "explain_settings": args.explain,
        }
    predictions = run_prediction(
        **options,
        out_dir=args.out,
        sheet_images=args.sheet_images,
        batch_size=args.batch_size,
        threads=args.threads,
        dpi=args.dpi,
    )
    counts = predictions.groupby("size")["predicted"].value_counts().sort_index()
    print(
        f"predict: {predictions['image_id'].nunique()} images -> {args.out}/predictions.csv; "
        + ", ".join(f"n={s} {c}: {k}" for (s, c), k in counts.items()),
        file=sys.stderr,
    )


def cmd_export(args) -> None:
    from fewcells.predict.export import export_networks

    if args.configfile is not None:
        args.images = None
        config, entry = config_entry(args)
        dataset = config["experiments"][entry["experiment"]]["dataset"]
        options = {
            **entry_networks(config, entry),
            "dataset": dataset,
            "manifest": Path(config["results"], "datasets", dataset, "manifest.csv"),
        }
    else:
        if not args.train_dirs or not args.classes:
            raise FewcellsError("give --configfile, or --train-dirs and --classes")
        options = {
            "train_dirs": args.train_dirs,
            "classes_json": args.classes,
            "experiment": args.experiment or "",
            "fit": args.fit,
            "dataset": args.dataset or "",
            "manifest": args.manifest,
        }
    card = export_networks(**options, out_dir=args.out)
    print(
        f"export: {len(card['training_data']['networks'])} network(s) -> {args.out}/"
        "{model.pt, model.onnx, model_card.json}",
        file=sys.stderr,
    )
