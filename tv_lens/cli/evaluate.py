"""``tv-lens evaluate MODEL TASK... --out results.csv``: Table-3 methods on the test split, the per-item predictions
next to the scores. A unit of ``--shard`` work is a (task, test item) pair for the contextless methods and a
(task, seed) pair for the methods with demos in context (their demos are drawn for the whole split at once)."""

from __future__ import annotations

import pandas as pd
from ..progress import tqdm

from ..errors import InputError, ProvenanceError
from ..evaluate import EvalResult, SweepResult, best_layer, evaluate, layer_sweep
from ..methods import BY_NAME, CLI_METHODS, CONTEXT_METHODS, PATCH_METHODS
from ..protocol import other_modality
from ..runs import (check_modalities, check_outputs, load_tasks, merge_scores, provenance_of, read_table,
                    score_counts, shard_label, shard_units, sibling, sort_predictions, table_kind)
from .options import (check_demo_pools, model_from, model_options, parse_methods, positive_int,
                      provenance, recipe_from, run_options, table_path)
from .output import finish_evaluate


def add_parser(sub) -> None:
    parser = sub.add_parser("evaluate", help="Table-3 methods on the test split")
    model_options(parser)
    parser.add_argument("tasks", nargs="+", help="task names, 'all', or .json/.csv files")
    run_options(parser, "results.csv (default) or .json; per-item predictions go next to it", layers=False,
                modality=False, shard=True, chat=False)
    parser.add_argument("--methods", type=parse_methods, default=parse_methods("no_context,majority,xbase,xpatch"),
                        help=f"comma-separated, from {','.join(CLI_METHODS)} (default no_context,majority,"
                             "xbase,xpatch)")
    parser.add_argument("--layer", action="append",
                        help="patch layer: an int or a sweep output file (its best layer), for every patch "
                             "method or one (xpatch=16; repeat); default: sweep on val")
    parser.add_argument("--max-new-tokens", type=positive_int, default=6, help="tokens per answer (default 6)")
    parser.set_defaults(func=run)


def sweep_file(value: str) -> pd.DataFrame:
    """``--layer FILE``: a sweep output with provenance (checked before the model loads)."""
    frame = read_table(value)
    if table_kind(frame, value) != "sweep":
        raise InputError(f"--layer {value}: neither a layer number nor a sweep output")
    provenance_of(frame, value)
    return frame


def read_layer(value: str, model) -> int:
    """``--layer``: an int, or a sweep output file of this model whose best layer is used."""
    try:
        return model.layer_index(int(value))
    except ValueError:
        pass
    frame = sweep_file(value)
    record = provenance_of(frame, value)
    if record.get("model") != model.cfg.model_name or record.get("n_layers") != model.cfg.n_layers:
        raise ProvenanceError(f"--layer {value} is a sweep of {record.get('model')} ({record.get('n_layers')} "
                              f"layers), not of {model.cfg.model_name} ({model.cfg.n_layers})")
    return model.layer_index(best_layer(SweepResult(frame, 0).accuracy_by_layer()))


def given_layers(values: list[str] | None, methods: list[str]) -> dict[str, str]:
    """``--layer 16`` (every patch method) and ``--layer xpatch=sweep.csv`` (one method) → ``{method: value}``."""
    given: dict[str, str] = {}
    for value in values or []:
        method, sep, layer = value.rpartition("=")
        if sep and method not in PATCH_METHODS:
            raise InputError(f"--layer {value}: {method!r} is not a patch method ({', '.join(PATCH_METHODS)})")
        given.update({method: layer} if sep else {m: layer for m in methods if m not in given})
    return {m: given[m] for m in methods if m in given}


def patch_layers(model, tasks: list, methods: list[str], vectors: dict, args) -> dict[str, int]:
    """``{method: layer}``: from ``--layer``, else the best layer of a sweep on val over all tasks."""
    layers = {method: read_layer(value, model) for method, value in given_layers(args.layer, methods).items()}
    for method in methods:
        if method not in layers:
            sweep = layer_sweep(model, {t.name: vectors[t.name][method] for t in tasks}, {t.name: t for t in tasks},
                                query_modality=args.query_modality, case_sensitive=not args.case_insensitive,
                                max_rows=args.batch_size * model.cfg.n_layers, progress=not args.no_progress,
                                template=args.template)
            layers[method] = sweep.best
            print(f"{method}: layer {sweep.best} (best on val; --layer {method}=N skips this sweep)")
    return layers


def work_units(tasks: list, item_methods: list[str], context_methods: list[str], seeds: list[int]) -> list[tuple]:
    """``(task, "item", i)`` per test item for the contextless methods, ``(task, "seed", s)`` for the others."""
    units = []
    for task in tasks:
        units += [(task.name, "item", i) for i in range(len(task.test))] if item_methods else []
        units += [(task.name, "seed", s) for s in seeds] if context_methods else []
    return units


def run(args) -> int:
    methods, query = args.methods, args.query_modality
    needs_other = any("other" in (BY_NAME[m].demos, BY_NAME[m].vector_modality) for m in methods)
    tasks = load_tasks(args.tasks, args.n_val, args.n_test, images=query == "image" or needs_other)
    patch_methods = [m for m in methods if m in PATCH_METHODS]
    rows = [BY_NAME[m] for m in methods]
    check_demo_pools(tasks, args.n_shots, [r.demo_modality(query) for r in rows]
                     + [r.source_modality(query) for r in rows if r.vector_kind in ("icl", "ensemble")])
    layer_files = []
    for value in given_layers(args.layer, patch_methods).values():
        try:
            int(value)
        except ValueError:
            sweep_file(value)
            layer_files.append(value)
    path = table_path(args, "results.csv")
    check_outputs([path, sibling(path, ".predictions.csv")], inputs=[*args.tasks, *layer_files])
    model = model_from(args)
    check_modalities(model, query, other_modality(query) if needs_other else query)
    item_methods = [m for m in methods if m not in CONTEXT_METHODS]
    context_methods = [m for m in methods if m in CONTEXT_METHODS]
    recipe = recipe_from(args)
    vectors = {}
    if len(given_layers(args.layer, patch_methods)) < len(patch_methods):   # a sweep needs every layer's vector
        vectors = {t.name: recipe.patch_vectors(model, t, patch_methods, args.seed, query, "all") for t in tasks}
    layer_of = patch_layers(model, tasks, patch_methods, vectors, args) if patch_methods else {}
    mine = shard_units(work_units(tasks, item_methods, context_methods, args.seed), args.shard)
    common = dict(query_modality=query, n_shots=args.n_shots, case_sensitive=not args.case_insensitive,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=not args.no_progress,
                  template=args.template)
    results = []
    for task in tqdm(tasks, desc="tasks", disable=args.no_progress, leave=False):
        items = [task.test[i] for name, kind, i in mine if name == task.name and kind == "item"]
        seeds = [s for name, kind, s in mine if name == task.name and kind == "seed"]
        if items:
            if patch_methods and task.name not in vectors:
                vectors[task.name] = recipe.patch_vectors(model, task, patch_methods, args.seed, query,
                                                          sorted(set(layer_of.values())))
            results.append(evaluate(model, items, item_methods, vectors=vectors.get(task.name), layer=layer_of,
                                    seeds=args.seed, task=task.name, **common))
        if seeds:
            results.append(evaluate(model, task, context_methods, seeds=seeds, **common))
    result = EvalResult.concat(results)
    scores = score_counts(result.scores, {t.name: len(t.test) for t in tasks})
    record = provenance(args, model, tasks, methods=methods, query_modality=query, layers=layer_of,
                        max_new_tokens=args.max_new_tokens)
    scores = merge_scores(scores).assign(shard=shard_label(args.shard), provenance=record)
    predictions = sort_predictions(result.predictions).assign(provenance=record)
    return finish_evaluate(scores, predictions, path, partial=args.shard is not None)
