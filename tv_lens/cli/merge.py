"""``tv-lens merge FILES... --out merged.csv``: join the outputs of ``--shard i/n`` runs into what the unsharded run
writes (:func:`tv_lens.runs.merge_tables`: no shard missing or repeated, one run's provenance, counts summed again)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, UsageError
from ..runs import TABLE_SUFFIXES, check_outputs, merge_kind, merge_tables, read_table, sibling, write_table
from .output import finish_evaluate, finish_sweep


def add_parser(sub) -> None:
    parser = sub.add_parser("merge", help="join the outputs of sharded sweep / evaluate runs")
    parser.add_argument("files", nargs="+", help="shard outputs (.csv or .json)")
    parser.add_argument("--out", required=True, help="merged file (.csv or .json)")
    parser.add_argument("--allow-partial", action="store_true", help="merge even when a shard is missing")
    parser.set_defaults(func=run)


def run(args) -> int:
    frames = {file: read_table(file) for file in dict.fromkeys(args.files)}
    if len(frames) < len(args.files):
        raise InputError("a file is named twice")
    kind = merge_kind(frames)
    path = Path(args.out)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UsageError(f"--out {path}: a table is written as .csv or .json")
    siblings = [sibling(Path(f), ".predictions.csv") for f in frames]
    with_predictions = kind == "scores" and all(p.is_file() for p in siblings)
    extra_out = {"sweep": [sibling(path, ".html")],
                 "scores": [sibling(path, ".predictions.csv")] if with_predictions else []}.get(kind, [])
    predictions = {str(p): read_table(p) for p in siblings} if with_predictions else None
    merged = merge_tables(frames, args.allow_partial, predictions)
    check_outputs([path, *extra_out], inputs=[*args.files, *(siblings if with_predictions else [])])
    if kind == "sweep":
        return finish_sweep(merged.frame, path, partial=False)
    if kind == "predictions":
        write_table(merged.frame, path, "predictions")
        print(f"wrote {path} ({len(merged.frame)} predictions)")
        return 0
    return finish_evaluate(merged.frame, merged.predictions, path, partial=False)
