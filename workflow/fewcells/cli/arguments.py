"""Argument types and shared argument groups of the `fewcells` command's parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like the errors of the commands."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def json_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error


def json_object(text: str) -> dict:
    value = json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"needs a JSON object {{...}}, not {type(value).__name__}: {text!r}"
        )
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """--image-size, --train-config and --model-config of the commands that train."""
    p.add_argument(
        "--image-size",
        type=int,
        required=True,
        help="side of the stored images (px), as in the store",
    )
    p.add_argument(
        "--train-config", type=json_value, default={}, help="the train config section (JSON)"
    )
    p.add_argument(
        "--model-config",
        type=json_value,
        default={"name": "paper_cnn"},
        help='the model config section (JSON), default {"name": "paper_cnn"}',
    )


def add_multi_network_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of the commands that train every fold of several training sizes."""
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder (images.npy, index.csv)"
    )
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv, classes.json")
    p.add_argument("--fold-ids", type=int_list, required=True, help="comma-separated folds")
    p.add_argument("--sizes", type=int_list, required=True, help="comma-separated sizes")
    add_network_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="train folder: OUT/n{size}/fold{k}/")


def images_argument(text: str) -> dict | str:
    """--images: a JSON object (a data set entry) or a folder of images."""
    return json_object(text) if text.lstrip().startswith("{") else text


def add_use_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments `predict` and `export` share: the config way and the explicit way."""
    p.add_argument("--configfile", type=Path, help="a fewcells config: the networks from it")
    p.add_argument("--results", type=Path, help="with --configfile: its results folder")
    p.add_argument("--experiment", help="the experiment (with --configfile: whose networks)")
    p.add_argument(
        "--size", type=int, help="with --configfile: training size (default: the largest)"
    )
    p.add_argument(
        "--networks", default="all", help="with --configfile: all (ensemble) or a fold number"
    )
    p.add_argument("--name", help="name shown in the outputs")
    p.add_argument("--train-dirs", nargs="+", help="training folders .../n<size>/fold<k>[_rep<r>]")
    p.add_argument("--classes", type=Path, help="the experiment's classes.json")
    p.add_argument("--fit", choices=["pad", "resize"], default="pad", help="the image.fit")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """--store and --folds: the tensor store and the folds a network trains or is read on."""
    p.add_argument(
        "--store", type=Path, required=True, help="tensor store folder (images.npy, index.csv)"
    )
    p.add_argument("--folds", type=Path, required=True, help="folder with folds.csv, classes.json")
