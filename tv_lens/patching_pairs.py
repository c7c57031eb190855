"""Patching over many (clean, corrupted) pairs: one grid per pair, their mean and a 95% CI per cell.

:func:`tv_lens.patching.activation_patching` and :func:`~tv_lens.patching.attribution_patching` come here when
``clean`` and ``corrupted`` are lists (one pair per index)::

    result = patching.activation_patching(model, text_prompts, image_prompts, metrics, hook="resid_post",
                                          positions=["delimiter", "query[-1]"])
    result.grid          # [n_layers, n_positions]: mean recovery over the pairs
    result.ci            # half-width of the 95% Student-t CI of that mean, per cell
    result.pairs[3]      # the fourth pair's own PatchingResult
    tvl.plot.patching_grid(result)

Columns are matched across pairs by their LABEL (a name such as ``"delimiter"`` or an int such as ``-1``), so the
prompts of different pairs may have different lengths; ``positions=None`` / ``"aligned"`` give per-pair columns
and are refused here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InputError, PositionError
from .lens import t_quantile_975
from .progress import tqdm


@dataclass
class PairsPatchingResult:
    """Patching grids of many pairs and their per-cell mean.

    Attributes:
        pairs: one :class:`~tv_lens.patching.PatchingResult` per pair, in order.
        recovery, scores: the mean over pairs, ``[n_layers, n_positions, n_heads]`` (pairs whose recovery is NaN —
            the metric equal on both prompts — are left out of the recovery mean; ``n`` counts the pairs used).
        ci: half-width of the 95% Student-t confidence interval of the mean recovery (NaN with one pair).
        n: pairs that entered each cell's recovery mean, ``[n_layers, n_positions, n_heads]``.
        layers, positions, heads, hook, method, metric: as in ``PatchingResult`` (``positions`` from the first
            pair; columns match across pairs by label).
        clean_metric, corrupted_metric: means of the pairs' unpatched metrics.
    """

    pairs: list[Any]
    recovery: Float[Tensor, "layer position head"]
    scores: Float[Tensor, "layer position head"]
    ci: Float[Tensor, "layer position head"]
    n: Tensor
    layers: list[int]
    positions: list[Any]
    heads: list[int] | None
    hook: str
    method: str
    metric: str
    clean_metric: float
    corrupted_metric: float

    # the plots read these; tokens and image spans differ per pair, so the columns are labelled by name
    corrupted_tokens = ()
    image_spans = ()

    @property
    def grid(self) -> Tensor:
        """Mean recovery as ``[layer, position]`` (``[layer, head]`` / ``[layer, position, head]`` per head)."""
        return _squeeze(self, self.recovery)

    @property
    def ci_grid(self) -> Tensor:
        """The CI half-widths in :attr:`grid`'s shape."""
        return _squeeze(self, self.ci)

    def to_frame(self):
        """One row per pair × cell (the pairs' frames with a ``pair`` column)."""
        import pandas as pd

        return pd.concat([r.to_frame().assign(pair=i) for i, r in enumerate(self.pairs)], ignore_index=True)

    def summary(self):
        """One row per cell: layer, position, head, mean recovery, CI low / high, n pairs, mean score."""
        import pandas as pd

        rows = []
        for li, layer in enumerate(self.layers):
            for pi, pair in enumerate(self.positions):
                for hi, head in enumerate(self.heads if self.heads is not None else [None]):
                    mean, half = float(self.recovery[li, pi, hi]), float(self.ci[li, pi, hi])
                    rows.append({"layer": layer, "position": pair.label, "head": head, "recovery": mean,
                                 "ci_low": mean - half, "ci_high": mean + half, "n": int(self.n[li, pi, hi]),
                                 "score": float(self.scores[li, pi, hi])})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        (li, pi, hi), where = best_cell(self)
        return (f"PairsPatchingResult({self.method}, hook={self.hook}, {len(self.pairs)} pairs, "
                f"{len(self.layers)} layers × {len(self.positions)} positions, metric={self.metric}, "
                f"mean clean_metric={self.clean_metric:.4g}, mean corrupted_metric={self.corrupted_metric:.4g}, "
                f"best mean recovery {float(self.recovery[li, pi, hi]):.3f} ± {float(self.ci[li, pi, hi]):.3f} "
                f"at {where})")

    def _repr_html_(self) -> str:
        frame = self.summary().sort_values("recovery", ascending=False).head(10)
        return f"<p><code>{self.__repr__()}</code></p><p>Top cells (mean over pairs):</p>" + frame.to_html(index=False)


def best_cell(result: Any) -> tuple[tuple[int, int, int], str]:
    """The ``(layer, position, head)`` indices of the highest recovery of a patching result (NaN never wins) and
    their description, ``"layer 3, delimiter[, head 2]"``: what both results' reprs point the reader to."""
    recovery = result.recovery
    best = int(recovery.flatten().nan_to_num(nan=-math.inf).argmax())
    li, rest = divmod(best, recovery.shape[1] * recovery.shape[2])
    pi, hi = divmod(rest, recovery.shape[2])
    where = f"layer {result.layers[li]}, {result.positions[pi].label}" + (
        f", head {result.heads[hi]}" if result.heads is not None else "")
    return (li, pi, hi), where


def _squeeze(result: Any, values: Tensor) -> Tensor:
    if result.heads is None:
        return values[:, :, 0]
    return values[:, 0, :] if len(result.positions) == 1 else values


def is_pair_list(clean: Any, corrupted: Any) -> bool:
    """Whether ``clean`` / ``corrupted`` are lists of prompts (one pair per index) rather than one prompt each."""
    def many(x: Any) -> bool:
        return isinstance(x, (list, tuple)) and not isinstance(x, str)

    if many(clean) != many(corrupted):
        raise InputError("Give ONE clean and ONE corrupted prompt, or two lists of the same length (one pair per "
                         f"index); got {type(clean).__name__} and {type(corrupted).__name__}.")
    return many(clean)


def over_pairs(run_one: Callable[..., Any], model, clean: Sequence[Any], corrupted: Sequence[Any],
               metric: Any, show_progress: bool, **kwargs: Any) -> PairsPatchingResult:
    """Run ``run_one(model, clean[i], corrupted[i], metric[i], **kwargs)`` per pair and average the grids.

    Args:
        metric: one metric for every pair, or a list with one per pair (each pair has its own answer tokens).

    Raises:
        InputError: lists of different lengths or no pair; a metric list of the wrong length.
        PositionError: ``positions`` that do not name the same columns in every pair.
    """
    if len(clean) != len(corrupted) or not clean:
        raise InputError(f"clean has {len(clean)} prompt(s) and corrupted {len(corrupted)}: give one corrupted "
                         "prompt per clean prompt (at least one pair).")
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric] * len(clean)
    if len(metrics) != len(clean):
        raise InputError(f"{len(metrics)} metrics for {len(clean)} pairs: give one metric, or one per pair.")
    positions = kwargs.get("positions")
    if positions is None or (isinstance(positions, str) and positions in ("all", "aligned")):
        raise PositionError("Over many pairs the grid's columns must mean the same thing in every pair: name them "
                            "(positions=['delimiter', 'query[-1]', -1]) rather than None / 'all' / 'aligned'.")
    results = [run_one(model, c, k, m, **kwargs)
               for c, k, m in tqdm(list(zip(clean, corrupted, metrics)), desc="pairs", disable=not show_progress,
                                   leave=False)]
    return combine(results)


def combine(results: Sequence[Any]) -> PairsPatchingResult:
    """Average per-pair ``PatchingResult`` grids cell by cell, with a 95% Student-t CI of the mean recovery.

    Raises:
        PositionError: grids whose columns (labels), layers or heads differ.
    """
    first = results[0]
    labels = [p.label for p in first.positions]
    for i, r in enumerate(results[1:], start=1):
        if [p.label for p in r.positions] != labels or r.layers != first.layers or r.heads != first.heads:
            raise PositionError(f"Pair {i}'s grid has columns {[p.label for p in r.positions]}, layers "
                                f"{r.layers[:4]}..., heads {r.heads}; pair 0's {labels}, {first.layers[:4]}..., "
                                f"{first.heads}. Pairs must share the grid's layers, heads and named columns.")
    recovery = torch.stack([r.recovery.float() for r in results])         # [pair, layer, position, head]
    scores = torch.stack([r.scores.float() for r in results])
    valid = ~recovery.isnan()
    n = valid.sum(0)
    mean = recovery.nan_to_num().sum(0) / n.clamp(min=1)
    mean = torch.where(n > 0, mean, torch.full_like(mean, math.nan))
    squares = torch.where(valid, (recovery - mean) ** 2, torch.zeros_like(recovery)).sum(0)
    sd = (squares / (n - 1).clamp(min=1)).sqrt()
    t = torch.tensor([t_quantile_975(int(k) - 1) if k > 1 else math.nan for k in n.flatten().tolist()]
                     ).reshape(n.shape)
    ci = t * sd / n.clamp(min=1).sqrt()
    return PairsPatchingResult(
        pairs=list(results), recovery=mean, scores=scores.mean(0), ci=ci, n=n, layers=list(first.layers),
        positions=list(first.positions), heads=first.heads, hook=first.hook, method=first.method,
        metric=first.metric if len({r.metric for r in results}) == 1 else f"{first.metric} (one per pair)",
        clean_metric=sum(r.clean_metric for r in results) / len(results),
        corrupted_metric=sum(r.corrupted_metric for r in results) / len(results))


__all__ = ["PairsPatchingResult", "combine", "is_pair_list", "over_pairs"]
