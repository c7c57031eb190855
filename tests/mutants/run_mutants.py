"""Mutation check of the method code: apply one-line changes, run the tests that pin them, record killed/survived.

Each mutant is a plausible wrong protocol (issue #15). A mutant is KILLED when at least one of its tests fails.
Run from the repository root (takes a few minutes on 2 cores; not part of the test suite):

    python tests/mutants/run_mutants.py            # all mutants, table to stdout and tests/mutants/RESULTS.md
    python tests/mutants/run_mutants.py majority   # only mutants whose name contains "majority"

Every mutant runs in a fresh temporary copy of ``tv_lens/``, ``tests/`` and ``pyproject.toml``; the working tree
is never touched. A mutation whose ``old`` text is not found is reported as ``stale`` (the code moved: update it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
P = "tests/test_protocol.py::"
TV = "tests/test_taskvectors.py::"
R = "tests/test_paper_results.py::"
F = "tests/test_families.py::"
PA = "tests/test_patching.py::"

#: (name, file, old, new, tests that must catch it)
MUTANTS = [
    ("majority label replaced by the first demo's label", "tv_lens/evaluate.py",
     "    return next(label for label in prompt.demo_labels if counts[label] == best)",
     "    return prompt.demo_labels[0]",
     [P + "test_majority_is_the_most_common_demo_label_not_the_first"]),
    ("xBase given demos of the query's modality", "tv_lens/evaluate.py",
     '{"base": query_modality, "xbase": other, "majority": "text"}[method]\n                prompts',
     '{"base": query_modality, "xbase": query_modality, "majority": "text"}[method]\n                prompts',
     [P + "test_xbase_puts_demos_of_the_other_modality_in_context"]),
    ("case option ignored by evaluate", "tv_lens/evaluate.py",
     "correct = [first_token_correct(first, p.label, case_sensitive)",
     "correct = [first_token_correct(first, p.label, True)",
     [P + "test_case_option_reaches_the_scores"]),
    ("subsample ignoring r", "tv_lens/vectors.py",
     "picked = random.Random(seed).sample(range(n), r)",
     "picked = random.Random(seed).sample(range(n), n)",
     [P + "test_subsample_averages_exactly_r_prompts"]),
    ("ensemble dropping the instruction vector (sample_efficiency)", "tv_lens/evaluate.py",
     'scores["ensemble"] = accuracy("ensemble_patch", ensemble([sub, instruction_vector]))',
     'scores["ensemble"] = accuracy("ensemble_patch", ensemble([sub]))',
     [P + "test_sample_efficiency_scores_exemplar_ensemble_and_instruction_lines"]),
    ("ensemble dropping the instruction vector (ensemble)", "tv_lens/vectors.py",
     "    vectors = list(vectors)\n    if not vectors:\n        raise VectorError(\"Nothing to ensemble.\")",
     "    vectors = list(vectors)[:1]\n    if not vectors:\n        raise VectorError(\"Nothing to ensemble.\")",
     [TV + "test_instruction_ensemble_transfer_cosine",
      P + "test_sample_efficiency_scores_exemplar_ensemble_and_instruction_lines"]),
    ("sweep aggregating by max instead of mean over seeds", "tv_lens/evaluate.py",
     'per_task = self.scores.groupby(["task", "layer"])["accuracy"].mean()',
     'per_task = self.scores.groupby(["task", "layer"])["accuracy"].max()',
     [P + "test_sweep_takes_the_mean_over_seeds_then_tasks_not_the_max",
      P + "test_sweep_best_is_the_argmax_of_the_seed_then_task_mean"]),
    ("sweep aggregating by max over tasks", "tv_lens/evaluate.py",
     '        return per_task.groupby("layer").mean()',
     '        return per_task.groupby("layer").max()',
     [P + "test_sweep_takes_the_mean_over_seeds_then_tasks_not_the_max",
      P + "test_sweep_best_is_the_argmax_of_the_seed_then_task_mean"]),
    ("sweep pooling seeds and tasks in one mean", "tv_lens/evaluate.py",
     'per_task = self.scores.groupby(["task", "layer"])["accuracy"].mean()\n        return per_task.groupby("layer").mean()',
     'return self.scores.groupby("layer")["accuracy"].mean()',
     [P + "test_sweep_takes_the_mean_over_seeds_then_tasks_not_the_max",
      P + "test_sweep_best_is_the_argmax_of_the_seed_then_task_mean"]),
    ("vector read at the query's ':' instead of the last demo's", "tv_lens/vectors.py",
     'position: Any = "delimiter[-1]", batch_size: int = 8',
     'position: Any = "delimiter", batch_size: int = 8',
     [P + "test_vector_is_read_at_the_last_demos_delimiter_not_the_querys"]),
    ("best layer ties go to the highest layer", "tv_lens/evaluate.py",
     "return int(min(layer for layer, acc in accuracy_by_layer.items() if acc == top))",
     "return int(max(layer for layer, acc in accuracy_by_layer.items() if acc == top))",
     [TV + "test_scoring_rules"]),
    ("xpatch patched with the patch vector", "tv_lens/evaluate.py",
     "    chosen = patch_vectors[method]\n    vec =",
     '    chosen = patch_vectors.get("patch", patch_vectors[method])\n    vec =',
     [P + "test_each_patch_method_patches_the_vector_it_names"]),
    ("kind/modality check skipped", "tv_lens/evaluate.py",
     "            check_vector(method, vec, query_modality)\n",
     "            pass\n",
     [P + "test_vectors_are_checked_by_kind_and_modality"]),
    ("demos drawn from the scored items", "tv_lens/evaluate.py",
     "pool=pools[method], seed=seed",
     "pool=query_items, seed=seed",
     [TV + "test_evaluate_methods_table_and_sweep", P + "test_majority_is_the_most_common_demo_label_not_the_first"]),
    ("CI with the normal quantile instead of Student t", "tv_lens/stats.py",
     "    t = t_quantile_975(n - 1)",
     "    t = 1.96",
     [P + "test_tables_are_mean_over_seeds_with_95_percent_ci"]),
    ("sample_efficiency example count ignoring n_shots", "tv_lens/evaluate.py",
     "n_examples = r * n_shots if n_shots else None",
     "n_examples = r",
     [P + "test_sample_efficiency_scores_exemplar_ensemble_and_instruction_lines"]),
    ("first-token prefix match one-sided", "tv_lens/evaluate.py",
     "(gold.startswith(pred) or pred.startswith(gold))",
     "gold.startswith(pred)",
     [TV + "test_scoring_rules"]),
    ("shows_order without a magnitude threshold", "tv_lens/lens/phases.py",
     '        if any(peaks.loc[s, "peak_prob"] < min_peak for s in expected):',
     '        if False:',
     [R + "test_shows_order_needs_peaks_above_noise"]),
    ("input set fixed to ':' instead of measured", "tv_lens/lens/phases.py",
     "        input_set = input_token_set(model, prompts, position=position)",
     '        input_set = token_set(model, ":", "input", warn=False)',
     [R + "test_input_set_is_what_the_delimiter_decodes_to_in_early_layers"]),
    ("answer set of unlabelled prompts needs a label", "tv_lens/lens/phases.py",
     "    if prompts and any(p.label is None for p in prompts):",
     "    if False:",
     [R + "test_a4_instruction_phase_curves_need_no_label"]),
    ("Idefics2 keeps the processor's image splitting", "tv_lens/adapters/idefics2.py",
     '    processor_defaults=(("do_image_splitting", False),),\n', "",
     [R + "test_idefics2_loads_without_image_splitting_as_the_paper_ran_it"]),
    ("chat option ignored for contextless queries", "tv_lens/evaluate.py",
     "prompts = queries(query_items, modality=query_modality, template=template, chat=chat)\n            layer_used",
     "prompts = queries(query_items, modality=query_modality, template=template)\n            layer_used",
     [R + "test_table6_chat_template_runs_inside_evaluate"]),
    ("task conflict without the patch", "tv_lens/evaluate.py",
     "    patched = predict(model, prompts, lambda n: vector.hooks(layer, at=\"delimiter\"), max_new_tokens=max_new_tokens,",
     "    patched = predict(model, prompts, None, max_new_tokens=max_new_tokens,",
     [R + "test_figure9_task_conflict_gives_both_answers_per_query"]),
    ("with_images without the re-split", "tv_lens/tasks/core.py",
     "        elif len(out.train) < min_train:",
     "        elif False:",
     [P + "test_with_images_leaves_every_shipped_task_an_imaged_train_pool"]),
    ("run label dropped from the table", "tv_lens/evaluate.py",
     'return method if not label else f"{method} [{label}]"',
     "return method",
     [P + "test_run_labels_keep_llm_and_vlm_xpatch_apart_in_one_table"]),
    ("Fuyu images laid out in reverse order", "tv_lens/adapters/fuyu.py",
     "image_ids, image_patches = _image_rows(model, row_images[k])",
     "image_ids, image_patches = _image_rows(model, row_images[len(row_images) - 1 - k])",
     [F + "test_fuyu_takes_several_images_anywhere_in_the_prompt"]),
    ("patching no-op check reading only a span's first token", "tv_lens/patching.py",
     "clean_act[list(pair.clean)], corrupted_act[list(pair.corrupted)]",
     "clean_act[list(pair.clean)[:1]], corrupted_act[list(pair.corrupted)[:1]]",
     [PA + "test_cells_that_write_a_value_over_itself_are_not_rerun"]),
    ("patching grid leaving skipped cells uninitialised", "tv_lens/patching.py",
     "scores = torch.full((len(grid.layers), len(grid.pairs), n_heads), corrupted_metric)\n    chunks",
     "scores = torch.empty(len(grid.layers), len(grid.pairs), n_heads)\n    chunks",
     [PA + "test_cells_that_write_a_value_over_itself_are_not_rerun"]),
    ("patching rows written at the absolute position after a cached prefix", "tv_lens/patching.py",
     "index.append(p - start)",
     "index.append(p)",
     [PA + "test_grid_equals_naive_loop_on_every_family"]),
]


def run_one(name: str, file: str, old: str, new: str, tests: list[str]) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix="tv_mutant_") as tmp:
        tmp = Path(tmp)
        for part in ("tv_lens", "tests"):
            shutil.copytree(ROOT / part, tmp / part, ignore=shutil.ignore_patterns("__pycache__", "mutants"))
        shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
        path = tmp / file
        text = path.read_text()
        if text.count(old) != 1:
            return "stale", 0.0
        path.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(tmp), "OMP_NUM_THREADS": "1"}
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
        status = "survived" if proc.returncode == 0 else ("killed" if proc.returncode == 1 else
                                                          f"error (rc {proc.returncode})")
        return status, time.time() - start


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or any(a in m[0] for a in argv)]
    lines = ["| mutant | file | result | tests run (s) |", "|---|---|---|---|"]
    survived = 0
    for name, file, old, new, tests in chosen:
        status, seconds = run_one(name, file, old, new, tests)
        survived += status != "killed"
        line = f"| {name} | {file} | {status} | {seconds:.0f} |"
        print(line, flush=True)
        lines.append(line)
    summary = f"\n{len(chosen)} mutants, {len(chosen) - survived} killed, {survived} not killed."
    print(summary)
    if not argv:
        (Path(__file__).parent / "RESULTS.md").write_text(
            "# Mutation results (`python tests/mutants/run_mutants.py`)\n\n" + "\n".join(lines) + "\n" + summary + "\n")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
