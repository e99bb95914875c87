"""Collapsed trainings: networks whose output is the same for every image.

A network can end training with every hidden unit dead (or saturated) on the data, so that
it gives one constant probability vector whatever the image: its ROC-AUC is 0.5 by
construction. Such a network is a failed training, not a measurement of how well n images
teach the task; fewcells marks it (train_info.json, metrics.csv, summary.md, the figures)
and never retrains it silently.
"""

from __future__ import annotations

import numpy as np

# Test and validation probabilities all within this of each other: a constant output.
COLLAPSE_TOLERANCE = 1e-6


def output_spread(probabilities: np.ndarray) -> float:
    """The largest range of one class's probability over the images (rows): 0 for a
    constant output, and for no images."""
    probabilities = np.asarray(probabilities, dtype=float)
    if len(probabilities) == 0:
        return 0.0
    return float((probabilities.max(axis=0) - probabilities.min(axis=0)).max())


def is_collapsed(spread: float) -> bool:
    """Whether an output spread (see output_spread) is a constant output."""
    return bool(spread < COLLAPSE_TOLERANCE)
