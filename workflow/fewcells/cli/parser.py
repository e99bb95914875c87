"""The `fewcells` command's argument parser: one subcommand per workflow stage, each calling
its function in fewcells.cli.commands (predict_commands and selection_commands for the
commands that use trained networks and that select training images), declared stage by
stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from fewcells.cli import commands, predict_commands, selection_commands
from fewcells.cli.arguments import (
    OneLineErrorParser,
    add_multi_network_arguments,
    add_network_arguments,
    add_store_arguments,
    add_use_arguments,
    images_argument,
    int_list,
    json_object,
    json_value,
    positive_int,
)
from fewcells.config import STACKED_ENGINES
from fewcells.data.manifest import KINDS

DESCRIPTION = (
    "The `fewcells` command: one subcommand per workflow stage, as the Snakemake rules call them."
)


def build_parser() -> argparse.ArgumentParser:
    """The `fewcells` parser with every subcommand."""
    parser = OneLineErrorParser(prog="fewcells", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_commands(sub)
    add_folds_commands(sub)
    add_training_commands(sub)
    add_analysis_commands(sub)
    add_explain_commands(sub)
    add_use_commands(sub)
    return parser


def add_data_commands(sub) -> None:
    """The subcommands of the data stage: demo, fetch, manifest, dedup."""
    p = sub.add_parser("demo", help="write the synthetic demo data set")
    p.add_argument("out", type=Path, help="folder to write the images and labels.csv to")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--n-per-class", type=int, default=40, help="images per class")
    p.set_defaults(func=commands.cmd_demo)

    p = sub.add_parser("fetch", help="materialise a data set (folder, archive, URL or demo)")
    p.add_argument("--dataset", type=json_value, required=True, help="the dataset config (JSON)")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for source.json (and the data set's files)"
    )
    p.set_defaults(func=commands.cmd_fetch)

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
    p.set_defaults(func=commands.cmd_manifest)

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
        type=json_object,
        default={},
        help='dedup settings (JSON object, the dedup config), e.g. {"max_distance": 16}',
    )
    p.add_argument("--threads", type=int, default=1, help="processes hashing images")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for pairs.csv, kept.csv, dedup_summary.json"
    )
    p.set_defaults(func=commands.cmd_dedup)


def add_folds_commands(sub) -> None:
    """The subcommands of folds, selection rounds and the tensor store."""
    p = sub.add_parser("folds", help="k-fold test/val/pool assignment with nested sizes")
    p.add_argument("kept", type=Path, help="the kept.csv of dedup (image_id, label)")
    p.add_argument(
        "store_files",
        type=Path,
        nargs="*",
        help="selection diverse: the tensor store's images.npy and index.csv, and with network "
        "features each fold's model.ckpt",
    )
    p.add_argument(
        "--spec",
        type=json_object,
        required=True,
        help='JSON: {"k", "n_val", "seed", "test_size", "classes"}; "sizes" to check them',
    )
    p.add_argument("--out", type=Path, required=True, help="folder for folds.csv and classes.json")
    p.set_defaults(func=commands.cmd_folds)

    p = sub.add_parser("select-round", help="one active-learning round (selection: uncertain)")
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv, classes.json")
    p.add_argument("--store", type=Path, required=True, help="tensor store folder")
    p.add_argument("--fold", type=int, required=True, help="fold number")
    p.add_argument("--round", type=int, required=True, help="round (0: the random start)")
    p.add_argument("--size", type=int, required=True, help="training-set size of this round")
    p.add_argument("--previous", type=Path, help="the previous round's folder")
    p.add_argument("--previous-size", type=int, help="the previous round's size")
    p.add_argument("--network", type=Path, help="training folder of the previous round")
    p.add_argument("--spec", type=json_object, required=True, help='JSON: {"score", "balanced"}')
    p.add_argument("--out", type=Path, required=True, help="folder of this round")
    p.set_defaults(func=selection_commands.cmd_select_round)

    p = sub.add_parser("selection-summary", help="the picks and class mix of a selection")
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv")
    p.add_argument("--sizes", type=int_list, required=True, help="comma-separated sizes")
    p.add_argument("--rounds", type=Path, nargs="*", default=[], help="round folders (uncertain)")
    p.add_argument("--out", type=Path, required=True, help="folder of the summary")
    p.set_defaults(func=selection_commands.cmd_selection_summary)

    p = sub.add_parser("store", help="uint8 tensor store of the kept images")
    p.add_argument("kept", type=Path, help="the kept.csv of dedup (image_id, path, label)")
    p.add_argument(
        "--image-size", type=positive_int, required=True, help="side of the stored images (px)"
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
    p.set_defaults(func=commands.cmd_store)


def add_training_commands(sub) -> None:
    """The subcommands of training: one network, folds one after another, stacked, pretraining."""
    p = sub.add_parser("train", help="train one network for one (training size, fold)")
    add_store_arguments(p)
    p.add_argument("--fold", type=int, required=True, help="fold number")
    p.add_argument("--size", type=int, required=True, help="training-set size")
    p.add_argument(
        "--replicate",
        type=int,
        default=0,
        help="replicate number: another seed on the same fold (0 = the first network)",
    )
    add_network_arguments(p)
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the trained network and its predictions"
    )
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("train-folds", help="train sizes x folds one after another, one process")
    add_multi_network_arguments(p)
    p.add_argument(
        "--replicates",
        type=int,
        default=1,
        help="networks per (size, fold), each its own seed: OUT/n{size}/fold{k}_rep{r}/ for r >= 1",
    )
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.set_defaults(func=commands.cmd_train_folds)

    p = sub.add_parser("train-stacked", help="train sizes x folds side by side as one model")
    add_multi_network_arguments(p)
    p.add_argument(
        "--engine",
        default="stacked",
        choices=STACKED_ENGINES,
        help="the train.engine recorded in train_info.json",
    )
    p.set_defaults(func=commands.cmd_train_stacked)

    p = sub.add_parser("pretrain", help="train one network on a source experiment's images")
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder of the source experiment"
    )
    p.add_argument(
        "--classes", type=json_value, default=None, help="the experiment's classes section (JSON)"
    )
    add_network_arguments(p)
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the images held out for validation",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    p.add_argument("--out", type=Path, required=True, help="folder for the pretrained network")
    p.set_defaults(func=commands.cmd_pretrain)


def add_analysis_commands(sub) -> None:
    """The subcommands of evaluation, comparisons, ensembles, merged classes."""
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
        type=json_value,
        default={},
        help="JSON: dpi, roc_sizes, loss_sizes (the plots config)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for metrics, summaries and figures"
    )
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("compare", help="compare experiments on identical folds (Wilcoxon)")
    p.add_argument("metrics", type=Path, nargs="+", help="each experiment's metrics.csv")
    p.add_argument("--names", nargs="+", required=True, help="experiment names, same order")
    p.add_argument("--metric", required=True, help="metrics.csv column, e.g. roc_auc")
    p.add_argument("--title", default="", help="comparison name shown in the outputs")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--out", type=Path, required=True, help="folder for the comparison outputs")
    p.set_defaults(func=commands.cmd_compare)

    p = sub.add_parser(
        "compare-strategies", help="learning curves and images to reach 95 percent of the plateau"
    )
    p.add_argument("metrics", type=Path, nargs="+", help="each experiment's metrics.csv")
    p.add_argument("--names", nargs="+", required=True, help="experiment names, same order")
    p.add_argument("--metric", required=True, help="metrics.csv column, e.g. roc_auc")
    p.add_argument("--reference", required=True, help="the experiment whose plateau is used")
    p.add_argument("--title", default="", help="comparison name shown in the figure")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.add_argument("--out", type=Path, required=True, help="folder for strategies.csv, .png")
    p.set_defaults(func=selection_commands.cmd_compare_strategies)

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
    p.set_defaults(func=commands.cmd_ensemble)

    p = sub.add_parser("merged", help="ROC-AUC of merged classes (sums of class probabilities)")
    p.add_argument(
        "train_dirs", type=Path, nargs="+", help="training folders (each with predictions.csv)"
    )
    p.add_argument("--classes", type=Path, required=True, help="the experiment's classes.json")
    p.add_argument(
        "--groups", type=json_value, required=True, help='JSON: {"blast": ["myeloblast", ...], ...}'
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
    p.set_defaults(func=commands.cmd_merged)


def add_explain_commands(sub) -> None:
    """The subcommands of explanations: relevance maps and tSNE."""
    p = sub.add_parser("explain", help="saliency and LRP maps, relevance shares of one fold")
    add_store_arguments(p)
    p.add_argument("--train-root", type=Path, required=True, help="RESULTS/EXPERIMENT/train")
    p.add_argument("--fold", type=int, required=True, help="fold number")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training sizes to explain")
    p.add_argument(
        "--settings",
        type=json_value,
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
    p.set_defaults(func=commands.cmd_explain)

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
    p.set_defaults(func=commands.cmd_tsne)


def add_use_commands(sub) -> None:
    """The subcommands of unlock, set-aside, prediction, export and benchmarks."""
    p = sub.add_parser(
        "unlock", help="remove a results folder's run lock (when its run has ended uncleanly)"
    )
    p.add_argument("results", type=Path, help="the results folder (config key results)")
    p.set_defaults(func=commands.cmd_unlock)

    p = sub.add_parser("set-aside", help="set images aside before the folds (folds.set_aside)")
    p.add_argument("kept", type=Path, help="the kept.csv of dedup (image_id, label, path)")
    p.add_argument("--per-label", type=positive_int, required=True, help="images per label")
    p.add_argument("--seed", type=int, default=0, help="folds.seed")
    p.add_argument("--out", type=Path, required=True, help="folder: set_aside.csv, images/")
    p.set_defaults(func=predict_commands.cmd_set_aside)

    p = sub.add_parser("predict", help="classify images with trained networks (and validate)")
    add_use_arguments(p)
    p.add_argument(
        "--images",
        type=images_argument,
        help="a folder of images, or a data set entry (JSON: kind, source, on_bad_image, ...)",
    )
    p.add_argument("--rescale", type=float, help="scale factor before image.fit (pixel size)")
    p.add_argument(
        "--classes-map", type=json_value, help="JSON list of {name, labels}: label mapping"
    )
    p.add_argument("--explain", type=json_object, default={}, help="LRP settings (JSON)")
    p.add_argument("--sheet-images", type=positive_int, default=4, help="per contact-sheet group")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution")
    p.set_defaults(func=predict_commands.cmd_predict)

    p = sub.add_parser("export", help="write networks as TorchScript, ONNX and a model card")
    add_use_arguments(p)
    p.add_argument("--dataset", help="training data set name (for the model card)")
    p.add_argument("--manifest", type=Path, help="its manifest.csv (sha256 in the model card)")
    p.set_defaults(func=predict_commands.cmd_export)

    p = sub.add_parser("benchmark", help="print speed and memory numbers (see fewcells.benchmark)")
    p.add_argument(
        "what",
        choices=["training", "workflow", "dedup", "sweep", "stacked-sweep", "predict"],
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
        type=int_list,
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
    p.set_defaults(func=commands.cmd_benchmark)
