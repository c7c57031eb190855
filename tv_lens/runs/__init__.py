"""Runs: what the ``tv-lens`` commands, the demo and a notebook share to run an experiment and keep its results.

- :mod:`~tv_lens.runs.load`: models and tasks by name, checked before anything heavy loads;
- :mod:`~tv_lens.runs.recipes`: :class:`Recipe`, the one way a run builds its per-seed task vectors;
- :mod:`~tv_lens.runs.tables`: output tables (CSV / JSON, atomic) and their ``provenance`` column;
- :mod:`~tv_lens.runs.shards` and :mod:`~tv_lens.runs.merge`: a run split over machines, and joined again.

    import tv_lens as tvl
    model = tvl.runs.load_model("smollm2")
    (task,) = tvl.runs.load_tasks(["country-capital"], n_val=30, n_test=100)
    vectors = tvl.runs.Recipe(n_shots=5).vectors(model, task, "text", seeds=(0, 1, 2))
"""

from .load import (REFERENCE_NAMES, SMOLLM2_NAMES, check_device, check_modalities, check_model_folder, load_model,
                   load_tasks, one_line)
from .merge import Merged, check_scores_complete, check_sweep_complete, merge_kind, merge_tables
from .recipes import Recipe, task_instruction_vector
from .shards import check_shards, parse_shard_label, shard_label, shard_units
from .tables import (SCORE_KEYS, SWEEP_COLUMNS, TABLE_SUFFIXES, check_outputs, check_same_run, merge_scores,
                     provenance, provenance_of, read_table, score_counts, sibling, sort_predictions, table_kind,
                     write_table)

__all__ = ["Merged", "REFERENCE_NAMES", "Recipe", "SCORE_KEYS", "SMOLLM2_NAMES", "SWEEP_COLUMNS", "TABLE_SUFFIXES",
           "check_device", "check_modalities", "check_model_folder", "check_outputs", "check_same_run",
           "check_scores_complete", "check_shards", "check_sweep_complete", "load_model", "load_tasks",
           "merge_kind", "merge_scores", "merge_tables", "one_line", "parse_shard_label", "provenance",
           "provenance_of", "read_table", "score_counts", "shard_label", "shard_units", "sibling",
           "sort_predictions", "table_kind", "task_instruction_vector", "write_table"]
