"""Joining the tables of a sharded run into the table the unsharded run writes (the counts are summed again, and
a sweep's best layer is picked again by the caller)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import InputError, ProvenanceError
from .shards import check_shards, shard_label
from .tables import check_same_run, merge_scores, sort_predictions, table_kind


@dataclass
class Merged:
    """A merged table: ``kind`` (sweep, scores, predictions), its rows, the run's provenance record, and for scores
    the merged per-item predictions (``None`` when they were not given)."""

    kind: str
    frame: pd.DataFrame
    record: dict
    predictions: pd.DataFrame | None = None


def merge_kind(frames: dict[str, pd.DataFrame]) -> str:
    """The one kind of every table (raises :class:`InputError` for a mix)."""
    kinds = {name: table_kind(frame, name) for name, frame in frames.items()}
    if len(set(kinds.values())) > 1:
        raise InputError(f"cannot merge different kinds of output: {kinds}")
    return next(iter(kinds.values()))


def merge_tables(frames: dict[str, pd.DataFrame], allow_partial: bool = False,
                 predictions: dict[str, pd.DataFrame] | None = None) -> Merged:
    """The shards ``{name: table}`` of one run, joined; ``predictions``: the ``.predictions.csv`` tables of score
    shards.

    Raises:
        ProvenanceError: tables (or predictions) of different runs. InputError: a missing or repeated shard (unless
            ``allow_partial``: then only repeats), a row in two shards, rows missing from a complete run.
    """
    kind = merge_kind(frames)
    record = check_same_run(frames)
    if kind != "predictions":
        check_shards(frames, allow_partial)
    frame = pd.concat(frames.values(), ignore_index=True).assign(shard=shard_label(None))
    if kind == "sweep":
        clash = frame[frame.duplicated(["task", "seed", "layer"], keep=False)]
        if not clash.empty:
            row = clash.iloc[0]
            raise InputError(f"task {row.task!r} seed {row.seed} layer {row.layer} is in two files: were they run "
                             "with the same options?")
        if not allow_partial:
            check_sweep_complete(frame, record)
        return Merged(kind, frame.sort_values(["task", "seed", "layer"], kind="stable").reset_index(drop=True),
                      record)
    if kind == "predictions":
        return Merged(kind, sort_predictions(frame.drop(columns="shard").drop_duplicates()), record)
    merged_predictions = None
    if predictions:
        if check_same_run(predictions) != record:
            raise ProvenanceError("the .predictions.csv files next to the shards come from another run")
        merged_predictions = sort_predictions(pd.concat(predictions.values(), ignore_index=True))
    scores = merge_scores(frame).assign(shard=shard_label(None), provenance=frame["provenance"].iloc[0])
    if not allow_partial:
        check_scores_complete(scores, record)
    return Merged(kind, scores, record, merged_predictions)


def check_sweep_complete(frame: pd.DataFrame, record: dict) -> None:
    """Every task of the run has every layer for each of its seeds: no row missing."""
    layers = set(record.get("layers") or [])
    for task in record.get("tasks") or {}:
        rows = frame[frame["task"] == task]
        if rows.empty:
            raise InputError(f"no rows for task {task!r}: it is in the run's provenance but in no file")
        for seed, group in rows.groupby("seed"):
            missing = sorted(layers - set(int(x) for x in group["layer"]))
            if missing:
                raise InputError(f"task {task!r} seed {seed}: layer(s) {missing} are missing from the files "
                                 "(rows deleted? --allow-partial merges anyway)")


def check_scores_complete(scores: pd.DataFrame, record: dict) -> None:
    """Every (task, method) of the run is there and counts all of the task's test items."""
    for task in record.get("tasks") or {}:
        for method in record.get("methods") or []:
            if scores[(scores["task"] == task) & (scores["method"] == method)].empty:
                raise InputError(f"no rows for task {task!r} method {method!r} (rows deleted? --allow-partial)")
    short = scores[scores["n"] != scores["n_total"]]
    if not short.empty:
        row = short.iloc[0]
        raise InputError(f"task {row.task!r} method {row.method!r} seed {row.seed}: {row.n} of {row.n_total} test "
                         "items in the files (rows missing; --allow-partial merges anyway)")


__all__ = ["Merged", "check_scores_complete", "check_sweep_complete", "merge_kind", "merge_tables"]
