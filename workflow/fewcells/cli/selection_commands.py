"""The `fewcells` subcommands and steps of the selection strategies (fewcells.data.selection):
the diverse order written by `fewcells folds`, and one active-learning round (`select-round`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.contracts import FOLD_COLUMNS, read_table
from fewcells.errors import FewcellsError


def store_features(store_dir) -> Callable[[list[str]], np.ndarray]:
    """features(image ids) -> the standardised colour/texture statistics of those stored
    images (computed once for the whole store, standardised over the ids asked for)."""
    from fewcells.data.selection import image_features, standardise
    from fewcells.data.store import open_store

    images, index = open_store(store_dir)
    raw = image_features(images[index["row"].to_numpy()])
    position = {image: i for i, image in enumerate(index["image_id"])}

    def features(image_ids: list[str]) -> np.ndarray:
        missing = [image for image in image_ids if image not in position]
        if missing:
            raise FewcellsError(f"{store_dir}: image(s) {missing[:3]} not in the store")
        return standardise(raw[[position[image] for image in image_ids]])

    return features


def network_features(train_dirs, store_dir, size: int) -> dict[int, Callable]:
    """fold -> features(image ids): the hidden-layer activations of that fold's network (the
    training folders TRAIN_DIRS, replicate 0 of training size SIZE) on the stored images, as
    the network computes them (not standardised: the network's own scale weighs its units)."""
    from fewcells.data.active import network_embeddings
    from fewcells.predict.predict import parse_train_dir

    features = {}
    for directory in train_dirs:
        n, fold, replicate = parse_train_dir(directory)
        if n != size or replicate != 0 or fold in features:
            raise FewcellsError(
                f"folds: {directory} is not one fold's replicate 0 of size {size} "
                "(selection.features)"
            )
        features[fold] = network_embeddings(directory, store_dir)
    return features


def _fold_features(selection: dict, store_files) -> Callable[[int], Callable | None]:
    """fold -> its features function for the diverse order (None: the fold has no network)."""
    names = {Path(path).name for path in store_files}
    if not {"images.npy", "index.csv"} <= names:
        raise FewcellsError("folds: selection diverse needs the store's images.npy, index.csv")
    store_dir = next(Path(p).parent for p in store_files if Path(p).name == "images.npy")
    networks = [Path(p).parent for p in store_files if Path(p).name == "model.ckpt"]
    chosen = selection.get("features", "stats")
    if chosen == "stats":
        if networks:
            raise FewcellsError("folds: networks given but selection.features is stats")
        stats = store_features(store_dir)
        return lambda fold: stats
    if not networks:
        raise FewcellsError(f"folds: selection.features {chosen} needs the networks' model.ckpt")
    if "pretrained" in chosen:
        if len(networks) != 1:
            raise FewcellsError(
                f"folds: selection.features {chosen} takes one pretrained network, not "
                f"{len(networks)}"
            )
        from fewcells.data.active import network_embeddings

        pretrained = network_embeddings(networks[0], store_dir)
        return lambda fold: pretrained
    return network_features(networks, store_dir, int(chosen["size"])).get


def apply_folds_selection(folds: pd.DataFrame, spec: dict, store_files, out_dir) -> pd.DataFrame:
    """The folds with each pool in the order of spec["selection"] (random: unchanged).
    Diverse reads the store of STORE_FILES (its images.npy and index.csv) and, with network
    features, the model.ckpt of each fold's network among them (a fold without one keeps the
    random order and is left out of selection.csv) or of the one pretrained network all folds
    share; it also writes OUT_DIR/selection.csv."""
    from fewcells.atomic import write_csv
    from fewcells.data.selection import diverse_fold

    selection = spec.get("selection") or {"strategy": "random"}
    if selection["strategy"] != "diverse":
        return folds
    features_of = _fold_features(selection, store_files)
    parts, tables = [], []
    for fold, rows in folds.groupby("fold", sort=True):
        features = features_of(int(fold))
        if features is None:
            print(f"folds: fold {fold} has no network: random order", file=sys.stderr)
            parts.append(rows)
            continue
        ordered, table = diverse_fold(rows, features, balanced=selection.get("balanced", False))
        parts.append(ordered)
        tables.append(table)
    if not tables:
        raise FewcellsError("folds: no fold has a network of selection.features")
    write_csv(pd.concat(tables, ignore_index=True), out_dir / "selection.csv")
    return pd.concat(parts).loc[folds.index, FOLD_COLUMNS]


def cmd_select_round(args) -> None:
    from fewcells.atomic import write_csv, write_json
    from fewcells.data.active import first_round, network_probabilities, next_round
    from fewcells.data.selection import SELECTION_COLUMNS

    spec = args.spec
    if args.round == 0:
        folds = read_table(args.folds / "folds.csv", FOLD_COLUMNS)
        rows, table = first_round(folds, args.fold, args.size)
    else:
        if args.previous is None or args.network is None:
            raise FewcellsError("select-round: a round after the first needs --previous, --network")
        previous = read_table(args.previous / "folds.csv", FOLD_COLUMNS)
        earlier = read_table(args.previous / "selection.csv", SELECTION_COLUMNS)
        probabilities = network_probabilities(args.network, args.store)
        diversity = spec.get("diversity", 0.0)
        rows, new = next_round(
            previous,
            args.previous_size,
            args.size,
            args.round,
            probabilities,
            score=spec["score"],
            balanced=spec["balanced"],
            diversity=diversity,
            features=store_features(args.store) if diversity else None,
        )
        table = pd.concat([earlier, new], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows[FOLD_COLUMNS], args.out / "folds.csv")
    write_csv(table, args.out / "selection.csv")
    write_json(json.loads((args.folds / "classes.json").read_text()), args.out / "classes.json")
    print(
        f"select-round: fold {args.fold} round {args.round}: {args.size} images "
        f"({(table['round'] == args.round).sum()} new)",
        file=sys.stderr,
    )


def cmd_selection_summary(args) -> None:
    """OUT/selection.csv (every fold's picks) and OUT/class_mix.csv (per size and fold, the
    classes of the training set) of a diverse (--folds) or uncertain (--rounds) experiment."""
    from fewcells.atomic import write_csv
    from fewcells.data.selection import SELECTION_COLUMNS, class_mix

    folds = read_table(args.folds / "folds.csv", FOLD_COLUMNS)
    if not args.rounds:
        table = read_table(args.folds / "selection.csv", SELECTION_COLUMNS)
        mix = class_mix(folds, args.sizes)
    else:
        tables, mixes = [], []
        for folder in args.rounds:
            picks = read_table(folder / "selection.csv", SELECTION_COLUMNS)
            rows = read_table(folder / "folds.csv", FOLD_COLUMNS)
            mixes.append(class_mix(rows, [len(picks)]))
            tables.append(picks)
        table = (
            pd.concat(tables, ignore_index=True)
            .drop_duplicates(["fold", "image_id"])
            .sort_values(["fold", "round"], kind="stable")
        )
        mix = pd.concat(mixes, ignore_index=True).sort_values(["size", "fold", "class_name"])
    write_csv(table[SELECTION_COLUMNS], args.out / "selection.csv")
    write_csv(mix, args.out / "class_mix.csv")
    wide = mix.groupby(["size", "class_name"])["n_images"].mean().unstack(fill_value=0)
    print(f"selection: mean images per class and size\n{wide.round(1)}", file=sys.stderr)


def cmd_compare_strategies(args) -> None:
    """OUT/strategies.csv and OUT/strategies.png (fewcells.analysis.strategies)."""
    from fewcells.analysis.strategies import compare_strategies

    reach = compare_strategies(
        args.metrics,
        args.names,
        args.metric,
        args.reference,
        args.out,
        title=args.title,
        dpi=args.dpi,
    )
    print(f"images to reach 95% of {args.reference}'s plateau:", file=sys.stderr)
    print(reach[["experiment", "n_to_reach", "mean_at_n"]].to_string(index=False), file=sys.stderr)
