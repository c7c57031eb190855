"""Writing and printing what ``sweep``, ``evaluate`` and ``merge`` produce (a shard, a whole run, a merged run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import plot
from ..evaluate import EvalResult, SweepResult, best_layer
from ..runs import SWEEP_COLUMNS, sibling, write_table


def finish_sweep(frame: pd.DataFrame, path: Path, partial: bool) -> int:
    """Write the per-layer table; unless it is one shard, pick the best layer and draw Figure 11."""
    frame = frame[SWEEP_COLUMNS + [c for c in frame.columns if c not in SWEEP_COLUMNS]]
    if partial:
        write_table(frame, path, "sweep", best_layer=None)
        print(f"wrote {path} (one shard: `tv-lens merge` the shards to pick the layer)")
        return 0
    result = SweepResult(scores=frame, best=best_layer(SweepResult(frame, 0).accuracy_by_layer()))
    write_table(frame, path, "sweep", best_layer=result.best)
    figure = plot.save(plot.sweep(result), sibling(path, ".html"))
    accuracy = result.accuracy_by_layer()
    print(accuracy.round(3).to_frame("accuracy").T.to_string())
    print(f"best layer: {result.best} (accuracy {accuracy.loc[result.best]:.3f}, mean over seeds then tasks)")
    print(f"wrote {path} and {figure}")
    return 0


def finish_evaluate(scores: pd.DataFrame, predictions: pd.DataFrame | None, path: Path, partial: bool) -> int:
    """Write the scores (and the per-item predictions next to them); print the methods × tasks table."""
    written = [write_table(scores, path, "scores")]
    if predictions is not None:
        written.append(write_table(predictions, sibling(path, ".predictions.csv"), "predictions"))
    note = " (one shard: `tv-lens merge` the shards)" if partial else ""
    print(f"accuracy of the first token, mean over seeds{note}")
    print(EvalResult(scores, predictions).table().round(3).to_string())
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


__all__ = ["finish_evaluate", "finish_sweep"]
