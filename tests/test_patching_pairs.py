"""Patching over many (clean, corrupted) pairs: per-pair grids, their mean and a 95% CI per cell (issue 27)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import items as make_items

from tv_lens import patching, plot
from tv_lens import prompts as P
from tv_lens.errors import InputError, PositionError
from tv_lens.protocol import mean_ci
from tv_lens.testing import tiny_model

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"),
         ("Cuba", "Havana"), ("Fiji", "Suva")]
POSITIONS = ["delimiter", "query[-1]", -1]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").hooked()


def _pairs(n=4):
    items = make_items(PAIRS)
    clean = P.icl(items[:n], n_shots=2, seed=1, pool=items[n:])            # ICL: the model sees the task
    corrupted = P.queries(items[:n])                                      # the bare query: shorter prompts
    return clean, corrupted


def test_many_pairs_give_each_pairs_grid_and_their_mean_with_a_t_interval(llama):
    clean, corrupted = _pairs()
    metrics = [patching.logit_diff(llama, 3 + i, 20 + i) for i in range(len(clean))]
    many = patching.activation_patching(llama, clean, corrupted, metrics, layers=[0, 1], positions=POSITIONS,
                                        progress=False)
    assert len(many.pairs) == 4 and many.grid.shape == (2, 3) and many.ci_grid.shape == (2, 3)
    for c, k, m, got in zip(clean, corrupted, metrics, many.pairs):
        one = patching.activation_patching(llama, c, k, m, layers=[0, 1], positions=POSITIONS, progress=False)
        torch.testing.assert_close(got.recovery, one.recovery)
    for li in range(2):
        for pi in range(3):
            values = [float(r.recovery[li, pi, 0]) for r in many.pairs]
            mean, half = mean_ci(values)
            assert float(many.recovery[li, pi, 0]) == pytest.approx(mean, rel=1e-5, abs=1e-6)
            assert float(many.ci[li, pi, 0]) == pytest.approx(half, rel=1e-4, abs=1e-6)
    frame = many.to_frame()
    assert sorted(frame["pair"].unique()) == [0, 1, 2, 3] and len(frame) == 4 * 2 * 3
    summary = many.summary()
    assert (summary["ci_low"] <= summary["recovery"]).all() and "4 pairs" in repr(many)
    fig = plot.patching_grid(many)
    torch.testing.assert_close(torch.tensor(fig.data[0].z, dtype=torch.float32), many.grid)
    assert "95% CI over 4 pairs" in fig.data[0].customdata[0][0] and "mean over 4 pairs" in fig.layout.title.text
    assert list(fig.layout.xaxis.ticktext)[:2] == ["delimiter", "query[-1]"]


def test_attribution_over_pairs_and_one_pair_has_no_interval(llama):
    clean, corrupted = _pairs(3)
    metric = patching.logit_diff(llama, 3, 5)
    many = patching.attribution_patching(llama, clean, corrupted, metric, layers=[1], positions=["delimiter"])
    assert many.method == "attribution" and len(many.pairs) == 3
    single = patching.activation_patching(llama, clean[:1], corrupted[:1], metric, layers=[1],
                                          positions=["delimiter"], progress=False)
    assert math.isnan(float(single.ci[0, 0, 0]))


def test_bad_pair_lists_raise(llama):
    clean, corrupted = _pairs(3)
    metric = patching.logit_diff(llama, 3, 5)
    with pytest.raises(InputError, match="one corrupted prompt per clean"):
        patching.activation_patching(llama, clean, corrupted[:2], metric, positions=POSITIONS, progress=False)
    with pytest.raises(InputError, match="two lists"):
        patching.activation_patching(llama, clean, corrupted[0], metric, positions=POSITIONS, progress=False)
    with pytest.raises(InputError, match="one per pair"):
        patching.activation_patching(llama, clean, corrupted, [metric] * 2, positions=POSITIONS, progress=False)
    with pytest.raises(PositionError, match="name them"):
        patching.activation_patching(llama, clean, corrupted, metric, progress=False)


def test_relative_columns_are_labelled_with_their_tokens(llama):
    clean, corrupted = _pairs(1)
    result = patching.activation_patching(llama, clean[0], corrupted[0], patching.logit_diff(llama, 3, 5),
                                          layers=[0], positions=[-1, -2, "delimiter"], progress=False)
    ticks = list(plot.patching_grid(result).layout.xaxis.ticktext)
    assert ticks[0] == f"-1 {plot.show_token(result.corrupted_tokens[-1])}"
    assert ticks[1] == f"-2 {plot.show_token(result.corrupted_tokens[-2])}"
    assert ticks[2] == "delimiter"
