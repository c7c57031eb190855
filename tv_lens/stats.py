"""Every confidence interval tv_lens reports, in one place.

- :func:`t_quantile_975`: the two-sided 95% Student-t critical value (phase curves, tables over seeds);
- :func:`mean_ci` / :func:`format_ci`: mean ± 95% t half-width over seeds (``EvalResult.table(ci=True)``);
- :func:`bootstrap_draws` / :func:`percentile_ci`: the demo's paired bootstrap over seeds AND items.

A leaf module: it imports nothing of tv_lens but the error classes, so any layer may use it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import TaskError

#: Bootstrap replicates the demo draws per (method, task) cell.
N_BOOTSTRAP = 2000

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t critical value for ``df`` degrees of freedom (table to 30, then a Cornish–Fisher
    expansion around the normal quantile; error < 1e-3)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, half-width of the 95% Student-t confidence interval)``; the half-width is NaN for one value."""
    values = [float(v) for v in values]
    if not values:
        raise TaskError("No values to summarise.")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = t_quantile_975(n - 1)
    return mean, t * sd / math.sqrt(n)


def format_ci(mean: float, half: float, digits: int = 3) -> str:
    """``"0.520 ± 0.031"`` (just the mean when there is one seed)."""
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def score_matrix(predictions: pd.DataFrame, task: str, method: str, metric: str) -> np.ndarray:
    """``[n_seeds, n_items]`` 0/1 scores of one (task, method), seeds and items in a fixed order."""
    rows = predictions[(predictions["task"] == task) & (predictions["method"] == method)]
    pivot = rows.pivot_table(index="seed", columns="query", values=metric, aggfunc="mean", sort=True)
    return pivot.to_numpy(dtype=float)


def bootstrap_draws(predictions: pd.DataFrame, tasks: Sequence[str], methods: Sequence[str], metric: str,
                    n_boot: int = N_BOOTSTRAP, seed: int = 0) -> tuple[dict, dict]:
    """Point estimates and bootstrap replicates over seeds AND items.

    Each replicate draws the seeds (with replacement) and, within each task, the items (with replacement); the SAME
    draw is used for every method, so differences between methods are paired. The ``"Avg"`` column is the mean over
    tasks of each replicate.

    Returns:
        ``(point, draws)``: ``point[(method, task)]`` a float, ``draws[(method, task)]`` an ``[n_boot]`` array.
    """
    rng = np.random.default_rng(seed)
    mats = {(m, t): score_matrix(predictions, t, m, metric) for m in methods for t in tasks}
    n_seeds = next(iter(mats.values())).shape[0]
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    item_draw = {t: rng.integers(0, mats[(methods[0], t)].shape[1], size=(n_boot, mats[(methods[0], t)].shape[1]))
                 for t in tasks}
    point, draws = {}, {}
    for m in methods:
        for t in tasks:
            mat = mats[(m, t)]
            point[(m, t)] = float(mat.mean())
            per_seed = mat[seed_draw]                                   # [n_boot, n_seeds, n_items]
            draws[(m, t)] = np.take_along_axis(per_seed, item_draw[t][:, None, :], axis=2).mean(axis=(1, 2))
        point[(m, "Avg")] = float(np.mean([point[(m, t)] for t in tasks]))
        draws[(m, "Avg")] = np.mean([draws[(m, t)] for t in tasks], axis=0)
    return point, draws


def percentile_ci(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of bootstrap replicates ``[n_boot]``."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


__all__ = ["N_BOOTSTRAP", "bootstrap_draws", "format_ci", "mean_ci", "percentile_ci", "score_matrix",
           "t_quantile_975"]
