"""`python -m fewcells.cli`: the `fewcells` command."""

import sys

from fewcells.cli import main

sys.exit(main())
