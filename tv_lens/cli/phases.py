"""``tv-lens phases MODEL TASK... --out phases.html``: logit-lens phase curves (Figure 3) as an HTML figure, the
curves next to it as CSV."""

from __future__ import annotations

import dataclasses

import pandas as pd
from ..progress import tqdm

from .. import lens, plot
from .. import prompts as P
from ..errors import UsageError
from ..runs import check_modalities, check_outputs, load_tasks, write_table
from .options import model_from, model_options, out_path, positive_int, provenance, run_options


def add_parser(sub) -> None:
    parser = sub.add_parser("phases", help="logit-lens phase curves (Figure 3) as an HTML figure")
    model_options(parser)
    parser.add_argument("tasks", nargs="+", help="task names, 'all', or .json/.csv files")
    run_options(parser, "phases.html (default); the curves go next to it as .csv", query=False)
    parser.add_argument("--n-prompts", type=positive_int, default=100, help="ICL prompts per task (default 100)")
    parser.add_argument("--task-word", default=None, help="the 'task' token set, for tasks that name none")
    parser.set_defaults(func=run)


def run(args) -> int:
    if len(args.seed) != 1:
        raise UsageError("phases takes one --seed")
    tasks = load_tasks(args.tasks, args.n_val, args.n_test, images=args.modality == "image")
    path = out_path(args, "phases.html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {path}: the phases figure is an .html file (the curves go next to it as .csv)")
    table_path = path.with_suffix(".csv")
    check_outputs([path, table_path], inputs=args.tasks)
    model = model_from(args)
    check_modalities(model, args.modality)
    curves = {}
    for task in tqdm(tasks, desc="tasks", disable=args.no_progress, leave=False):
        if args.task_word:
            task = dataclasses.replace(task, task_word=args.task_word)
        queries = (task.val + task.test)[:args.n_prompts]
        prompts = P.icl(queries, n_shots=args.n_shots, modality=args.modality, pool=task.train or None,
                        seed=args.seed[0], chat=args.chat, template=args.template)
        curves[task.name] = lens.phase_curves(model, prompts, task=task, layers=args.layers,
                                              batch_size=args.batch_size, progress=not args.no_progress)
    figure = plot.phases(curves if len(curves) > 1 else next(iter(curves.values())),
                         title=f"{model.cfg.model_name}: {args.modality} ICL, logit lens at the last token")
    plot.save(figure, path)
    frame = pd.concat([c.frame.assign(task=name) for name, c in curves.items()], ignore_index=True)
    frame = frame.assign(provenance=provenance(args, model, tasks, layers=args.layers, modality=args.modality,
                                               n_prompts=args.n_prompts, task_word=args.task_word))
    table = write_table(frame[["task"] + [c for c in frame.columns if c != "task"]], table_path, "phases")
    for name, c in curves.items():
        peaks = ", ".join(f"{row.Index} at layer {row.peak_layer} ({row.peak_prob:.3f})"
                          for row in c.peaks.itertuples())
        print(f"{name}: peaks {peaks}")
    print(f"wrote {path} and {table}")
    return 0
