"""Sweeps that flag a constant answer (issue 27): a layer where one first token answers ≥ 90% of the queries is
counted, named by the repr, warned about by layer_sweep and marked on the sweep plot."""

from __future__ import annotations

import warnings
from collections import Counter

import pandas as pd
import pytest
import torch

from helpers import items as make_items

import tv_lens as tvl
from tv_lens import plot
from tv_lens import prompts as P
from tv_lens.evaluate import SweepResult, _sweep_first_tokens
from tv_lens.testing import tiny_model

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"),
         ("Cuba", "Havana"), ("Fiji", "Suva"), ("Mali", "Bamako"), ("Oman", "Muscat"), ("Laos", "Vientiane")]


def _result(shares, best):
    """One task, one seed; per layer (accuracy, distinct answers, top answer, its share)."""
    scores = pd.DataFrame([{"task": "t", "seed": 0, "layer": layer, "accuracy": acc}
                           for layer, (acc, _, _, _) in enumerate(shares)])
    answers = pd.DataFrame([{"task": "t", "seed": 0, "layer": layer, "distinct_answers": d, "top_answer": top,
                             "top_share": share} for layer, (_, d, top, share) in enumerate(shares)])
    return SweepResult(scores, best, answers)


def test_constant_best_layer_is_named_by_repr_and_plot():
    result = _result([(0.1, 9, "a", 0.2), (0.2, 4, "b", 0.5), (0.6, 1, "Europe", 1.0)], best=2)
    assert result.constant_layers() == [2] and result.best_is_constant
    assert "Europe" in repr(result) and "100%" in repr(result) and "Europe" in result._repr_html_()
    fig = plot.sweep(result)
    crosses = [t for t in fig.data if t.name == "one answer ≥ 90%"]
    assert len(crosses) == 1 and list(crosses[0].x) == [2] and list(crosses[0].y) == [0.6]
    assert "Europe" in fig.layout.title.text
    healthy = _result([(0.1, 9, "a", 0.2), (0.6, 6, "b", 0.3), (0.2, 1, "c", 0.95)], best=1)
    assert not healthy.best_is_constant and "WARNING" not in repr(healthy)
    assert healthy.constant_layers() == [2] and "⚠" not in plot.sweep(healthy).layout.title.text
    # results without answer counts (a scores frame read back from a CSV) still work
    bare = SweepResult(_result([(0.1, 1, "a", 1.0)], 0).scores, 0)
    assert bare.constant_layers() == [] and not bare.best_is_constant
    assert [t.name for t in plot.sweep(bare).data] == ["patched"]


@torch.no_grad()
def test_layer_sweep_counts_the_answers_it_scored():
    model = tiny_model("llama").hooked()
    items = make_items(PAIRS)
    vec = tvl.extract_task_vector(model, P.icl(items, n_shots=2), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep = tvl.layer_sweep(model, vec, items, seeds=(0,), progress=False)
    first = _sweep_first_tokens(model, P.queries(items), vec, list(vec.layers), "replace", 256, False, "")
    for g, layer in enumerate(vec.layers):
        row = sweep.answers[sweep.answers["layer"] == layer].iloc[0]
        counts = Counter(a.strip() for a in first[g])
        assert row["distinct_answers"] == len(counts)
        assert row["top_share"] == pytest.approx(counts.most_common(1)[0][1] / len(items))
    warned = [w for w in caught if "layer_sweep" in str(w.message)]
    assert bool(warned) == sweep.best_is_constant
