"""The ``tv-lens`` command line: the notebook API as batch runs that split across the machines of a job scheduler.

::

    tv-lens hooks    MODEL                                   list hook names
    tv-lens extract  MODEL TASK --out vec.safetensors        a task vector
    tv-lens sweep    MODEL TASK... --out sweep.csv           accuracy per patched layer (+ sweep.html)
    tv-lens evaluate MODEL TASK... --out results.csv         Table-3 methods (+ results.predictions.csv)
    tv-lens phases   MODEL TASK... --out phases.html         logit-lens phase curves (+ phases.csv)
    tv-lens merge    FILES... --out merged.csv               join the outputs of ``--shard i/n`` runs

A model is a hub id, a folder written by ``save_pretrained``, or ``smollm2`` (the offline real SmolLM2-135M); a task
is a shipped name (``tvl.tasks.list_tasks()``), ``all``, or a ``.json`` / ``.csv`` file or folder.

Sharding: ``--shard i/n`` (``0 <= i < n``) runs every n-th unit of work, starting at the i-th. A unit is the smallest
piece whose result does not depend on what else runs: a (task, layer) pair for ``sweep``; for ``evaluate`` a
(task, test item) pair for the contextless methods (no_context and the patches) and a (task, seed) pair for the
methods with demos in context (their demos are drawn for the whole split at once). Every output row carries its
``shard``; ``merge`` refuses a missing or repeated shard, recomputes the scores from counts, and for sweeps picks the
best layer again.

Every argument and output location is checked BEFORE a model loads. Errors print one line, ``tv-lens: error: ...``,
and exit with status 2 (``--debug`` or ``TV_LENS_DEBUG=1`` shows the traceback). Every file is written atomically
(:mod:`tv_lens.io`); no two outputs of a run share a path; every table carries a ``provenance`` column (model, tasks,
split sizes, seeds, layers, options, tv_lens version) that ``merge`` and ``evaluate --layer FILE`` check.

The package: :mod:`~tv_lens.cli.main` (the root parser, the checks before loading, error → one line / exit status),
:mod:`~tv_lens.cli.options` (argument types, the shared option groups, ``--out``), :mod:`~tv_lens.cli.output` (what
sweep / evaluate / merge write and print), and one module per command (``add_parser`` + ``run``). What a command
computes lives in :mod:`tv_lens.runs` (loading, the vector recipe, tables, provenance, shards, merging), which
notebooks use too.
"""

from __future__ import annotations

from ..runs import (REFERENCE_NAMES, SCORE_KEYS, SMOLLM2_NAMES, SWEEP_COLUMNS, TABLE_SUFFIXES, check_device,
                    check_model_folder, check_outputs, load_model, load_tasks, read_table, write_table)
from . import demo, evaluate, extract, hooks, merge, phases, sweep
from .main import EXIT_ERROR, EXIT_INTERNAL, build_parser, main, validate
from .options import (CLI_METHODS, CONTEXT_METHODS, OUT_FIELDS, fill_out_template, nonnegative_int, parse_ints,
                      parse_layers, parse_methods, parse_shard, positive_int, provenance)

# the commands under their old names
cmd_demo, cmd_hooks, cmd_extract, cmd_sweep = demo.run, hooks.run, extract.run, sweep.run
cmd_evaluate, cmd_phases, cmd_merge = evaluate.run, phases.run, merge.run

__all__ = ["CLI_METHODS", "CONTEXT_METHODS", "EXIT_ERROR", "EXIT_INTERNAL", "OUT_FIELDS", "REFERENCE_NAMES",
           "SCORE_KEYS", "SMOLLM2_NAMES", "SWEEP_COLUMNS", "TABLE_SUFFIXES", "build_parser", "check_device",
           "check_model_folder", "check_outputs", "fill_out_template", "load_model", "load_tasks", "main",
           "nonnegative_int", "parse_ints", "parse_layers", "parse_methods", "parse_shard", "positive_int",
           "provenance", "read_table", "validate", "write_table"]
