"""``tv-lens sweep MODEL TASK... --out sweep.csv``: accuracy of the patched task vector at every layer, on val
(Figure 11), the best layer, and the figure next to the table. A unit of ``--shard`` work is a (task, layer) pair."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from ..progress import tqdm

from ..errors import InputError, ProvenanceError, UsageError
from ..evaluate import layer_sweep
from ..runs import check_modalities, check_outputs, load_tasks, shard_label, shard_units, sibling
from ..vectors import TaskVector
from .options import check_demo_pools, model_from, model_options, provenance, recipe_from, run_options, table_path
from .output import finish_sweep


def add_parser(sub) -> None:
    parser = sub.add_parser("sweep", help="accuracy of a patched task vector at every layer, on val")
    model_options(parser)
    parser.add_argument("tasks", nargs="+", help="task names, 'all', or .json/.csv files")
    run_options(parser, "sweep.csv (default) or .json; the figure goes next to it as .html", shard=True)
    parser.add_argument("--vector", action="append", help="a vector file from `extract` (repeat: one per task); "
                                                          "default: extract from --modality ICL prompts per --seed")
    parser.set_defaults(func=run)


def given_vectors(files: list[str] | None, names: list[str]) -> dict[str, TaskVector]:
    """``--vector`` files as ``{task: vector}`` (one per task; a lone vector without a task is the lone task's)."""
    given: dict[str, TaskVector] = {}
    origin: dict[str, str] = {}
    for file in files or []:
        vector = TaskVector.load(file)
        key = vector.task or Path(file).stem
        if key in given:
            raise UsageError(f"two --vector files are for task {key!r}; give one per task")
        given[key], origin[key] = vector, file
    if given and len(given) == 1 and len(names) == 1 and next(iter(given.values())).task is None:
        given = {names[0]: next(iter(given.values()))}   # one task, one vector without a task: it is for it
    foreign = sorted(set(given) - set(names))
    if foreign:
        raise ProvenanceError(f"--vector file(s) for task(s) {foreign} (from {[origin.get(k) for k in foreign]}); "
                              f"this run's tasks are {names}")
    return given


def check_vectors_fit(given: dict[str, TaskVector], model) -> None:
    """Each ``--vector`` comes from this very model (another model's vector goes through ``tvl.transfer``)."""
    for name, vector in given.items():
        vector.check_compatible(model)
        if vector.model_name != model.cfg.model_name or vector.n_model_layers != model.cfg.n_layers:
            raise ProvenanceError(f"the --vector for {name!r} comes from {vector.model_name} "
                                  f"({vector.n_model_layers} layers), not {model.cfg.model_name} "
                                  f"({model.cfg.n_layers}); to use a vector across models call tvl.transfer")


def run(args) -> int:
    tasks = load_tasks(args.tasks, args.n_val, args.n_test, images="image" in (args.modality, args.query_modality))
    given = given_vectors(args.vector, [t.name for t in tasks])
    if not given:
        check_demo_pools(tasks, args.n_shots, [args.modality])
    path = table_path(args, "sweep.csv")
    check_outputs([path] + ([] if args.shard else [sibling(path, ".html")]),
                  inputs=[*args.tasks, *(args.vector or [])])
    model = model_from(args)
    check_modalities(model, args.modality, args.query_modality)
    check_vectors_fit(given, model)
    all_layers = (list(range(model.cfg.n_layers)) if args.layers is None
                  else sorted({model.layer_index(layer) for layer in args.layers}))
    vector_record = {name: {"seed": v.seed, "n_prompts": v.n_prompts, "kind": v.kind, "modality": v.modality,
                            "position": v.position} for name, v in given.items()}
    record = provenance(args, model, tasks, layers=all_layers, modality=args.modality,
                        query_modality=args.query_modality, vectors=vector_record or None)
    mine = shard_units([(task.name, layer) for task in tasks for layer in all_layers], args.shard)
    recipe = recipe_from(args)
    frames = []
    for task in tqdm(tasks, desc="tasks", disable=args.no_progress, leave=False):
        layers = [layer for name, layer in mine if name == task.name]
        if not layers:
            continue
        if given:
            if task.name not in given:
                raise InputError(f"no --vector for task {task.name!r}; the files hold {sorted(given)}")
            vectors = [given[task.name]]
        else:
            vectors = recipe.vectors(model, task, args.modality, args.seed, layers)
        # batch_size prompts per forward whatever the shard's layer count, so every shard batches alike
        result = layer_sweep(model, {task.name: vectors}, {task.name: task}, query_modality=args.query_modality,
                             layers=layers, case_sensitive=not args.case_insensitive,
                             max_rows=args.batch_size * len(layers), progress=not args.no_progress,
                             template=args.template)
        frames.append(result.scores.assign(n=len(task.val), query_modality=args.query_modality,
                                           vector_modality=vectors[0].modality, shard=shard_label(args.shard),
                                           provenance=record))
    return finish_sweep(pd.concat(frames, ignore_index=True), path, partial=args.shard is not None)
