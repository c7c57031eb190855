"""A run's output tables: written atomically as CSV or JSON, read back checked, and stamped with provenance.

Every table carries a ``provenance`` column: one canonical JSON string of what its rows depend on (model, tasks,
split sizes, seeds, layers, options, tv_lens version). It is the same on every shard of a run, so a merge can demand
equality (:func:`check_same_run`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import tasks as T
from .._version import __version__
from ..errors import InputError, OutputPathError, ProvenanceError
from ..evaluate import METHODS
from ..io import atomic_write, check_writable
from .load import one_line

TABLE_SUFFIXES = (".csv", ".json")
SWEEP_COLUMNS = ["task", "seed", "layer", "accuracy", "n", "query_modality", "vector_modality", "shard"]
SCORE_KEYS = ["task", "method", "query_modality", "seed", "layer"]


def sibling(path: Path, suffix: str) -> Path:
    """``results.csv`` → ``results<suffix>`` (e.g. ``.predictions.csv``, ``.html``)."""
    return path.with_name(path.stem + suffix)


def check_outputs(outputs: Sequence[Path], inputs: Sequence[str | Path] = ()) -> list[Path]:
    """Before any compute: each output distinct, none an input of the run, each one writable.

    Raises:
        OutputPathError: two outputs on one path, an output that is an input, an unwritable place.
    """
    resolved: dict[str, Path] = {}
    for path in outputs:
        key = os.path.realpath(path)
        if key in resolved:
            raise OutputPathError(f"two outputs of this run would go to {path}; choose another --out")
        resolved[key] = path
    for given in inputs:
        if given is not None and os.path.realpath(given) in resolved:
            raise OutputPathError(f"--out {given} is also an input of this run; write elsewhere")
    for path in outputs:
        check_writable(path)
    return list(outputs)


def write_table(frame: pd.DataFrame, path: Path, kind: str, **extra: Any) -> Path:
    """``.json``: ``{"kind", **extra, "rows"}``; anything else: CSV. Written atomically (:mod:`tv_lens.io`)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        rows = json.loads(frame.to_json(orient="records"))
        with atomic_write(path) as fh:
            fh.write(json.dumps({"kind": kind, **extra, "rows": rows}, indent=1) + "\n")
    else:   # strings quoted: model answers may hold line breaks, commas and quotes
        with atomic_write(path, newline="") as fh:
            frame.to_csv(fh, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_table` (CSV or JSON).

    Raises:
        FileNotFoundError: no file. InputError: not a table tv_lens wrote (bad JSON/CSV, a column twice).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return pd.DataFrame(data["rows"] if isinstance(data, dict) else data)
        with path.open(encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise InputError(f"{path}: column(s) {twice} appear twice in the header")
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (ValueError, KeyError, TypeError, RecursionError, pd.errors.ParserError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path} is not a tv-lens output table ({one_line(err)})") from None


def table_kind(frame: pd.DataFrame, name: str | Path) -> str:
    """``"sweep"``, ``"scores"`` or ``"predictions"``, from the columns (raises :class:`InputError` otherwise)."""
    columns = set(frame.columns)
    if {"query", "first_token", "method"} <= columns:
        return "predictions"
    if {"task", "method", "seed", "n_correct", "n_total"} <= columns:
        return "scores"
    if {"task", "seed", "layer", "accuracy"} <= columns and "method" not in columns:
        return "sweep"
    raise InputError(f"{name}: not a sweep, evaluate or predictions output of tv-lens (columns {sorted(columns)})")


def provenance(command: str, model, tasks: Sequence[T.Task], *, n_val: int, n_test: int, n_shots: int,
               seeds: Sequence[int], template: Any, chat: bool, case_sensitive: bool, **more: Any) -> str:
    """What a table's rows depend on, as one canonical JSON string (the ``provenance`` column).

    Shard-independent on purpose: the shards of one run carry the same string, so a merge can demand equality.
    """
    record = {
        "tv_lens": __version__, "command": command, "model": model.cfg.model_name, "family": model.cfg.family,
        "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
        "tasks": {t.name: {"n_val": len(t.val), "n_test": len(t.test), "n_train": len(t.train), "seed": t.seed}
                  for t in tasks},
        "n_val": n_val, "n_test": n_test, "n_shots": n_shots, "seeds": list(seeds),
        "template": template, "chat": bool(chat), "case_sensitive": case_sensitive,
        **more}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def provenance_of(frame: pd.DataFrame, name: str | Path) -> dict:
    """The one provenance record of a table (raises :class:`ProvenanceError` unless every row carries the same)."""
    if "provenance" not in frame:
        raise ProvenanceError(f"{name} has no provenance column (written by an older tv-lens?); run it again")
    values = set(frame["provenance"].astype(str))
    if len(values) != 1:
        raise ProvenanceError(f"{name} mixes rows of {len(values)} different runs")
    try:
        record = json.loads(values.pop())
    except (json.JSONDecodeError, RecursionError):
        raise ProvenanceError(f"{name}: its provenance column is not valid JSON") from None
    if not isinstance(record, dict):
        raise ProvenanceError(f"{name}: its provenance is not a JSON object")
    return record


def check_same_run(frames: dict[str, pd.DataFrame]) -> dict:
    """All tables come from one run (same provenance); returns it."""
    records = {name: provenance_of(frame, name) for name, frame in frames.items()}
    first_name, first = next(iter(records.items()))
    for name, record in records.items():
        diff = sorted(k for k in set(first) | set(record) if first.get(k) != record.get(k))
        if diff:
            detail = "; ".join(f"{k}: {first.get(k)!r} vs {record.get(k)!r}" for k in diff[:3])
            raise ProvenanceError(f"{first_name} and {name} come from different runs ({detail}); merge only the "
                                  "shards of one run")
    return first


def merge_scores(scores: pd.DataFrame, method_order: Sequence[str] = METHODS) -> pd.DataFrame:
    """Sum the counts of rows of the same (task, method, modality, seed, layer); recompute the rates from them."""
    scores = scores.assign(layer=scores["layer"].astype("Int64"))
    merged = scores.groupby(SCORE_KEYS, dropna=False, sort=False, as_index=False).agg(
        n=("n", "sum"), n_correct=("n_correct", "sum"), n_exact=("n_exact", "sum"), n_total=("n_total", "max"),
        n_totals=("n_total", "nunique"))
    if (merged["n_totals"] > 1).any():
        raise InputError("the files disagree on the size of a task's test split: were they run with the same "
                         "--n-val / --n-test and task files?")
    merged = merged.assign(accuracy=merged["n_correct"] / merged["n"], exact_match=merged["n_exact"] / merged["n"],
                           method_order=merged["method"].map({m: i for i, m in enumerate(method_order)}))
    merged = merged.sort_values(["task", "method_order", "seed"], kind="stable")
    keep = SCORE_KEYS + ["accuracy", "exact_match", "n", "n_correct", "n_exact", "n_total"]
    return merged[keep].reset_index(drop=True)


def score_counts(scores: pd.DataFrame, totals: dict[str, int]) -> pd.DataFrame:
    """``EvalResult.scores`` with the counts a merge sums: ``n_correct``, ``n_exact``, ``n_total`` (test items)."""
    return scores.assign(
        n_correct=(scores["accuracy"] * scores["n"]).round().astype(int),
        n_exact=(scores["exact_match"] * scores["n"]).round().astype(int),
        n_total=[totals[t] for t in scores["task"]])


def sort_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-item predictions in a fixed order (task, method, seed, query): shards merge to the unsharded file."""
    return predictions.sort_values(["task", "method", "seed", "query"], kind="stable").reset_index(drop=True)


__all__ = ["SCORE_KEYS", "SWEEP_COLUMNS", "TABLE_SUFFIXES", "check_outputs", "check_same_run", "merge_scores",
           "provenance", "provenance_of", "read_table", "score_counts", "sibling", "sort_predictions", "table_kind",
           "write_table"]
