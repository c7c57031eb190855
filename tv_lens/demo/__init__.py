"""The main job: the paper's Table-3 protocol on the offline reference VLM (real SmolLM2-135M + trained vision side).

Two suites, both on image queries: the reference suite (tasks chosen because SmolLM2 can do them from five text
demos, see :mod:`tv_lens.reference.choose_tasks`; it runs first, as it is the one that shows the effect) and the
paper's six tasks. For each suite and each demo seed: text-
and image-ICL vectors from the validation split; the patch layer of each method chosen on validation (first-token
sweep over every layer, then exact match of the generated answer on the best few); then no_context, majority
("Random"), image-ICL base and patch, text-ICL xbase and xpatch on the test split. Every cell is a mean over seeds
and items with a 95% bootstrap CI; the paired differences xPatch − xBase and Patch − Base come with their own CI.
Then Figure 3's phase curves and an HTML report.

Three modules, results flowing one way: :mod:`tv_lens.demo.suite` (the suites, the methods' rows,
:class:`SuiteResult` and its bootstrap CIs), :mod:`tv_lens.demo.report` (the HTML page from results, never a
model) and :mod:`tv_lens.demo.run` (the model and the protocol). Every name stays importable from
``tv_lens.demo`` (and the report's from ``tv_lens.report``).

    tv-lens demo                 # full protocol (val 30 / test ≤ 100 items per task, seeds 0, 1, 2)
    tv-lens demo --quick         # smaller: val 8 / test 12, seeds 0, 1, 2, two candidate layers
"""

from __future__ import annotations

from ..stats import bootstrap_draws, score_matrix
from .report import diff_html, findings, gallery_html, table_html, write_report
from .run import choose_layer, load_model, main, print_suite, run_demo, run_suite
from .suite import (EXACT_MATCH_CANDIDATES, MAX_NEW_TOKENS, METHODS, N_BOOTSTRAP, PAIRS, ROW_NAMES, SEEDS,
                    SuiteResult, ci, reference_tasks, suites, summarize)

__all__ = ["EXACT_MATCH_CANDIDATES", "MAX_NEW_TOKENS", "METHODS", "N_BOOTSTRAP", "PAIRS", "ROW_NAMES", "SEEDS",
           "SuiteResult", "bootstrap_draws", "choose_layer", "ci", "diff_html", "findings", "gallery_html",
           "load_model", "main", "print_suite", "reference_tasks", "run_demo", "run_suite", "score_matrix", "suites",
           "summarize", "table_html", "write_report"]
