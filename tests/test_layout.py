"""The house's boundaries (issue #23): one method table, one stats module, one vector recipe, and every old import
name still answering after the moves (cli/, demo/, runs/, lens/, stats, methods)."""

from __future__ import annotations

import importlib

import pytest

import tv_lens as tvl
from tv_lens import methods as M
from tv_lens.errors import IncompatibleArgumentsError

#: Names users and scripts import, with the object they must be now (the move kept each one's identity).
OLD_NAMES = {
    "tv_lens.lens.t_quantile_975": "tv_lens.stats.t_quantile_975",
    "tv_lens.lens.LABEL": "tv_lens.lens.tokens.LABEL",
    "tv_lens.lens.PerPrompt": "tv_lens.lens.tokens.PerPrompt",
    "tv_lens.lens.TokenSet": "tv_lens.lens.tokens.TokenSet",
    "tv_lens.lens.TokenSetWarning": "tv_lens.lens.tokens.TokenSetWarning",
    "tv_lens.lens.first_token": "tv_lens.lens.tokens.first_token",
    "tv_lens.lens.token_mask": "tv_lens.lens.tokens.token_mask",
    "tv_lens.lens.token_set": "tv_lens.lens.tokens.token_set",
    "tv_lens.lens.OUTPUTS": "tv_lens.lens.decode.OUTPUTS",
    "tv_lens.lens.TopK": "tv_lens.lens.decode.TopK",
    "tv_lens.lens.decode_vector": "tv_lens.lens.decode.decode_vector",
    "tv_lens.lens.entropy": "tv_lens.lens.decode.entropy",
    "tv_lens.lens.logit_lens": "tv_lens.lens.decode.logit_lens",
    "tv_lens.lens.token_probability": "tv_lens.lens.decode.token_probability",
    "tv_lens.lens.token_rank": "tv_lens.lens.decode.token_rank",
    "tv_lens.lens.top_k": "tv_lens.lens.decode.top_k",
    "tv_lens.lens.LayerLens": "tv_lens.lens.layers.LayerLens",
    "tv_lens.lens.lens_over_layers": "tv_lens.lens.layers.lens_over_layers",
    "tv_lens.lens.PhaseCurves": "tv_lens.lens.phases.PhaseCurves",
    "tv_lens.lens.default_token_sets": "tv_lens.lens.phases.default_token_sets",
    "tv_lens.lens.find_peak": "tv_lens.lens.phases.find_peak",
    "tv_lens.lens.input_token_set": "tv_lens.lens.phases.input_token_set",
    "tv_lens.lens.phase_curves": "tv_lens.lens.phases.phase_curves",
    "tv_lens.lens.summarize": "tv_lens.lens.phases.summarize",
    "tv_lens.lens.top1_distribution": "tv_lens.lens.phases.top1_distribution",
    "tv_lens.protocol.mean_ci": "tv_lens.stats.mean_ci",
    "tv_lens.protocol.format_ci": "tv_lens.stats.format_ci",
    "tv_lens.protocol.VECTOR_KINDS": "tv_lens.methods.VECTOR_KINDS",
    "tv_lens.evaluate.METHODS": "tv_lens.methods.METHODS",
    "tv_lens.evaluate.PATCH_METHODS": "tv_lens.methods.PATCH_METHODS",
    "tv_lens.demo.SuiteResult": "tv_lens.demo.suite.SuiteResult",
    "tv_lens.demo.summarize": "tv_lens.demo.suite.summarize",
    "tv_lens.demo.bootstrap_draws": "tv_lens.stats.bootstrap_draws",
    "tv_lens.demo.run_demo": "tv_lens.demo.run.run_demo",
    "tv_lens.report.write_report": "tv_lens.demo.report.write_report",
    "tv_lens.report.findings": "tv_lens.demo.report.findings",
    "tv_lens.cli.main": "tv_lens.cli.main.main",
    "tv_lens.cli.parse_ints": "tv_lens.cli.options.parse_ints",
    "tv_lens.cli.positive_int": "tv_lens.cli.options.positive_int",
    "tv_lens.cli.fill_out_template": "tv_lens.cli.options.fill_out_template",
    "tv_lens.cli.write_table": "tv_lens.runs.tables.write_table",
    "tv_lens.cli.read_table": "tv_lens.runs.tables.read_table",
    "tv_lens.cli.load_model": "tv_lens.runs.load.load_model",
    "tv_lens.cli.load_tasks": "tv_lens.runs.load.load_tasks",
    "tv_lens.cli.check_outputs": "tv_lens.runs.tables.check_outputs",
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:   # a submodule named like a package attribute (tv_lens.cli.main.main)
        parent, _, sub = module.rpartition(".")
        return getattr(getattr(importlib.import_module(parent), sub), name)


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_import_names_are_the_moved_objects(old):
    assert _resolve(old) is _resolve(OLD_NAMES[old])


def test_every_public_name_resolves_and_the_console_script_target_is_callable():
    assert all(hasattr(tvl, name) for name in tvl.__all__)
    from tv_lens.cli import main

    assert callable(main) and main.__module__ == "tv_lens.cli.main"


def test_the_method_table_is_what_protocol_evaluate_cli_and_demo_read():
    from tv_lens import protocol
    from tv_lens.cli import options
    from tv_lens.demo import suite

    assert M.METHODS == ("no_context", "majority", "base", "xbase", "patch", "xpatch", "instruction_patch",
                         "ensemble_patch", "fv_add", "heads_patch")
    assert protocol.VECTOR_KINDS == {"patch": "icl", "xpatch": "icl", "instruction_patch": "instruction",
                                     "ensemble_patch": "ensemble"}
    assert set(M.CONTEXT_METHODS) == {"majority", "base", "xbase"}
    assert options.CLI_METHODS == tuple(m for m in M.METHODS if m not in ("fv_add", "heads_patch"))
    assert suite.ROW_NAMES == {"majority": "Random (majority label)", "no_context": "No Context",
                               "base": "Image ICL Base", "xbase": "Text ICL xBase", "patch": "Image ICL Patch",
                               "xpatch": "Text ICL xPatch"}
    assert suite.BASELINES == ("majority", "no_context")


@pytest.mark.parametrize("query", ["text", "image"])
def test_rows_resolve_modalities_relative_to_the_query(query):
    other = "image" if query == "text" else "text"
    assert M.method("base").demo_modality(query) == query and M.method("xbase").demo_modality(query) == other
    assert M.method("patch").source_modality(query) == query and M.method("xpatch").source_modality(query) == other
    assert M.method("ensemble_patch").source_modality(query) == "text"
    assert M.method("no_context").demo_modality(query) is None and not M.method("no_context").needs_layer
    assert M.method("xpatch").label(query) == f"{other.capitalize()} ICL xPatch"


def test_an_unknown_method_or_modality_raises_a_typed_error_naming_the_choices():
    with pytest.raises(IncompatibleArgumentsError, match="choose from no_context, majority"):
        M.method("xpach")
    with pytest.raises(IncompatibleArgumentsError, match="'text' or 'image'"):
        M.method("xpatch").source_modality("audio")
    assert M.method_for_kind(None) == "patch" and M.method_for_kind("instruction") == "instruction_patch"
    assert M.method_for_kind("function_vector") == "fv_add" and M.method_for_kind("icl") == "patch"


def test_stats_cis_are_student_t_over_seeds_and_a_paired_bootstrap():
    import math

    import numpy as np
    import pandas as pd

    from tv_lens import stats

    mean, half = stats.mean_ci([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(stats.mean_ci([0.4])[1]) and stats.format_ci(0.5, math.nan) == "0.500"
    rows = [{"task": "t", "method": m, "seed": s, "query": f"q{i}", "correct": float(i < k)}
            for m, k in (("a", 8), ("b", 2)) for s in (0, 1) for i in range(10)]
    point, draws = stats.bootstrap_draws(pd.DataFrame(rows), ["t"], ["a", "b"], "correct", n_boot=200)
    assert point[("a", "t")] == pytest.approx(0.8) and point[("b", "Avg")] == pytest.approx(0.2)
    low, high = stats.percentile_ci(draws[("a", "t")] - draws[("b", "t")])
    assert 0 < low < 0.6 < high and np.all(draws[("a", "t")] >= 0)


def test_recipe_builds_what_each_patch_method_checks_for_from_its_row():
    """runs.Recipe.patch_vectors reads the method table; protocol.check_vector (the same table) accepts every vector,
    and the ICL ones are exactly extract_task_vectors' (one recipe)."""
    from types import SimpleNamespace

    import torch
    from helpers import items as make_items

    from tv_lens import protocol, runs
    from tv_lens.testing import tiny_model

    pairs = [("France", "Paris"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"), ("Cuba", "Havana"),
             ("Fiji", "Suva"), ("Mali", "Bamako"), ("Spain", "Madrid")]
    items = make_items(pairs, with_images=True)
    task = SimpleNamespace(name="caps", val=items[:3], test=[], train=items[3:],
                           instruction="The capital city of the country:")
    model = tiny_model("llava").hooked()
    methods = ["no_context", "patch", "xpatch", "instruction_patch", "ensemble_patch", "xbase"]
    vectors = runs.Recipe(n_shots=2, progress=False).patch_vectors(model, task, methods, seeds=[0, 1],
                                                                    query_modality="image", layers=[0, 1])
    assert sorted(vectors) == ["ensemble_patch", "instruction_patch", "patch", "xpatch"]
    assert [v.modality for v in vectors["patch"]] == ["image", "image"] and vectors["xpatch"][1].seed == 1
    assert len(vectors["instruction_patch"]) == 1 and vectors["ensemble_patch"][0].kind == "ensemble"
    for method, vecs in vectors.items():
        for vec in vecs:
            protocol.check_vector(method, vec, "image")
    library = tvl.extract_task_vectors(model, task.val, n_shots=2, modality="text", seeds=[0, 1], pool=task.train,
                                       layers=[0, 1], progress=False)
    assert all(torch.equal(a.vectors, b.vectors) for a, b in zip(vectors["xpatch"], library))
