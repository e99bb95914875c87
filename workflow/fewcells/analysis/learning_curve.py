"""The learning curve: a saturating curve fitted to the per-fold scores by training-set
size, with bootstrap confidence intervals over folds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

LEARNING_CURVE_MODEL = "score(n) = a - (a - b) * exp(-n / tau)"


def saturating_curve(n: np.ndarray, plateau: float, start: float, tau: float) -> np.ndarray:
    """score(n) = plateau - (plateau - start) * exp(-n / tau)."""
    return plateau - (plateau - start) * np.exp(-np.asarray(n, dtype=float) / tau)


def _saturating_jacobian(n: np.ndarray, plateau: float, start: float, tau: float) -> np.ndarray:
    """Partial derivatives of `saturating_curve` with respect to (plateau, start, tau)."""
    decay = np.exp(-np.asarray(n, dtype=float) / tau)
    return np.column_stack([1.0 - decay, decay, -(plateau - start) * decay * n / tau**2])


def _fit_once(
    sizes: np.ndarray, scores: np.ndarray, starts: list[tuple[float, float, float]], tau_max: float
) -> np.ndarray:
    """Least-squares fit from each start; the parameters with the smallest residual."""
    lower, upper = np.array([0.0, 0.0, 1e-3]), np.array([1.0, 1.0, tau_max])
    best, best_sse = None, math.inf
    for start in starts:
        x0 = np.clip(start, lower + 1e-6, upper - 1e-6)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(
                    saturating_curve,
                    sizes,
                    scores,
                    p0=x0,
                    bounds=(lower, upper),
                    jac=_saturating_jacobian,
                    max_nfev=5000,
                )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((saturating_curve(sizes, *params) - scores) ** 2))
        if np.all(np.isfinite(params)) and sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        raise RuntimeError("least squares did not converge from any starting point")
    return best


def _first_size_reaching(params: np.ndarray, size_grid: np.ndarray, fraction: float) -> float:
    """Smallest grid size where the curve reaches fraction * plateau; inf if none does."""
    reached = saturating_curve(size_grid, *params) >= fraction * params[0]
    return float(size_grid[np.argmax(reached)]) if reached.any() else math.inf


def _ci(values: np.ndarray) -> list[float | None]:
    """Empirical 2.5 and 97.5 percentiles; infinite ends (beyond the sizes run) -> None."""
    if len(values) == 0:
        return [None, None]
    bounds = np.quantile(values, [0.025, 0.975], method="inverted_cdf")
    return [float(b) if np.isfinite(b) else None for b in bounds]


def fit_learning_curve(
    df: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, plateau_fraction: float = 0.95
) -> dict:
    """Fit score(n) = a - (a - b) * exp(-n / tau) to per-fold scores (columns size, fold, score).

    Why this model rather than the inverse power law a - b * n^-c: it is finite at n = 0
    (b is the score of an untrained network, near chance), has one interpretable scale
    (tau images per e-fold of the remaining gap), and describes the fast rise then flat
    plateau the paper reports; the power law diverges below the smallest size and creeps
    towards its plateau so slowly that "n at 95% of plateau" is dominated by extrapolation.
    Scores must lie in [0, 1] (AUC, F1, accuracy); non-finite scores are dropped.

    Returns a dict (JSON-friendly but for `curve`): ok, reason (why the fit failed; None when
    ok), note (e.g. why there are no CIs), model, plateau, start, tau,
    at_bound (parameters fitted at a bound), plateau_fraction, n_at_fraction (smallest
    integer size within [min size, max size] where the curve reaches plateau_fraction *
    plateau, None if beyond), plateau_ci and n_at_fraction_ci (95% percentile bootstrap over
    folds resampled with replacement; None for an end beyond the sizes run), n_boot_ok,
    n_points, n_folds, size_range, and `curve` (DataFrame size, fitted_score, fitted_lower,
    fitted_upper: the curve and its pointwise bootstrap band on a grid for plotting).
    """
    result = _unfitted(n_boot, plateau_fraction)
    missing = {"size", "fold", "score"} - set(df.columns)
    if missing:
        result["reason"] = f"input lacks columns {sorted(missing)}"
        return result
    data = df[["size", "fold", "score"]].apply(pd.to_numeric, errors="coerce")
    data = data[np.isfinite(data.to_numpy(dtype=float)).all(axis=1)]
    result["n_points"], result["n_folds"] = len(data), int(data["fold"].nunique())
    if data["size"].nunique() < 3:
        result["reason"] = "needs finite scores at 3 or more distinct sizes"
        return result
    if ((data["score"] < 0) | (data["score"] > 1)).any() or (data["size"] <= 0).any():
        result["reason"] = "scores must lie in [0, 1] and sizes be positive"
        return result

    sizes, scores = data["size"].to_numpy(float), data["score"].to_numpy(float)
    size_min, size_max = sizes.min(), sizes.max()
    result["size_range"] = [int(size_min), int(size_max)]
    tau_max = 10.0 * size_max
    means = data.groupby("size")["score"].mean()
    starts = [
        (means.iloc[-1], means.iloc[0], tau) for tau in np.geomspace(size_min / 2, size_max, 5)
    ]
    try:
        params = _fit_once(sizes, scores, starts, tau_max)
    except RuntimeError as error:
        result["reason"] = str(error)
        return result

    size_grid = np.arange(math.ceil(size_min), math.floor(size_max) + 1, dtype=float)
    plot_grid = np.linspace(size_min, size_max, 200)
    n_at_fraction = _first_size_reaching(params, size_grid, plateau_fraction)
    result.update(
        ok=True,
        plateau=float(params[0]),
        start=float(params[1]),
        tau=float(params[2]),
        at_bound=_at_bound(params, tau_max),
        n_at_fraction=int(n_at_fraction) if np.isfinite(n_at_fraction) else None,
    )

    boot_params = []
    if data["fold"].nunique() >= 2:
        boot_params = _bootstrap_fits(data, params, tau_max, n_boot, seed)
    else:
        result["note"] = "bootstrap needs 2 or more folds; no confidence intervals"
    result["n_boot_ok"] = len(boot_params)
    fitted = saturating_curve(plot_grid, *params)
    lower = upper = np.full_like(plot_grid, np.nan)
    if boot_params:
        boot = np.vstack(boot_params)
        boot_n = np.array([_first_size_reaching(p, size_grid, plateau_fraction) for p in boot])
        result["plateau_ci"] = _ci(boot[:, 0])
        result["n_at_fraction_ci"] = [None if v is None else int(v) for v in _ci(boot_n)]
        boot_curves = np.vstack([saturating_curve(plot_grid, *p) for p in boot])
        lower, upper = np.quantile(boot_curves, [0.025, 0.975], axis=0)
    result["curve"] = pd.DataFrame(
        {"size": plot_grid, "fitted_score": fitted, "fitted_lower": lower, "fitted_upper": upper}
    )
    return result


def _unfitted(n_boot: int, plateau_fraction: float) -> dict:
    """fit_learning_curve's result before (or without) a fit."""
    return {
        "ok": False,
        "reason": None,
        "note": None,
        "model": LEARNING_CURVE_MODEL,
        "plateau": math.nan,
        "start": math.nan,
        "tau": math.nan,
        "at_bound": [],
        "plateau_fraction": plateau_fraction,
        "n_at_fraction": None,
        "plateau_ci": [None, None],
        "n_at_fraction_ci": [None, None],
        "n_boot": n_boot,
        "n_boot_ok": 0,
        "n_points": 0,
        "n_folds": 0,
        "size_range": [None, None],
        "curve": pd.DataFrame(columns=["size", "fitted_score", "fitted_lower", "fitted_upper"]),
    }


def _at_bound(params: np.ndarray, tau_max: float) -> list[str]:
    """The fitted parameters (plateau, start, tau) that lie on a bound of the fit."""
    bounds = {"plateau": (0.0, 1.0), "start": (0.0, 1.0), "tau": (1e-3, tau_max)}
    return [
        name
        for name, value in zip(bounds, params, strict=True)
        if np.isclose(value, bounds[name][0], atol=1e-6)
        or np.isclose(value, bounds[name][1], atol=1e-6)
    ]


def _bootstrap_fits(
    data: pd.DataFrame, params: np.ndarray, tau_max: float, n_boot: int, seed: int
) -> list[np.ndarray]:
    """The fits to `n_boot` resamples of the folds (drawn with replacement, seeded), each
    started from `params`; resamples with fewer than 3 sizes or no fit are left out."""
    folds = data["fold"].unique()
    by_fold = {
        fold: (group["size"].to_numpy(float), group["score"].to_numpy(float))
        for fold, group in data.groupby("fold")
    }
    rng = np.random.default_rng(seed)
    boot_params = []
    for _ in range(n_boot):
        drawn = [by_fold[f] for f in rng.choice(folds, size=len(folds))]
        boot_sizes = np.concatenate([d[0] for d in drawn])
        boot_scores = np.concatenate([d[1] for d in drawn])
        if len(np.unique(boot_sizes)) < 3:
            continue
        try:
            boot_params.append(_fit_once(boot_sizes, boot_scores, [tuple(params)], tau_max))
        except RuntimeError:
            continue
    return boot_params


def fit_parameters(curve_fit: dict) -> dict:
    """A learning-curve fit as JSON: without the plotted curve, NaN as null."""
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in curve_fit.items()
        if key != "curve"
    }
