"""The `fewcells` command: one subcommand per workflow stage, as the Snakemake rules call them
(`fewcells --help`). The parser is in fewcells.cli.parser, the subcommands in
fewcells.cli.commands."""

from __future__ import annotations

import logging
import sys

import pandas as pd

from fewcells.cli.parser import build_parser
from fewcells.errors import FewcellsError

__all__ = ["build_parser", "main"]


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
