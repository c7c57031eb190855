"""Figures carry the result's numbers: each test checks trace data against the result it was drawn from."""

from __future__ import annotations

import importlib.util

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from tv_lens import geometry, lens, plot
from tv_lens.errors import InputError, TaskError
from tv_lens.evaluate import EvalResult, SweepResult
from tv_lens.vectors import TaskVector


def _curves(seed=0):
    g = torch.Generator().manual_seed(seed)
    per_prompt = torch.rand(5, 4, 3, generator=g)
    sets = ["input", "task", "answer"]
    return lens.PhaseCurves(frame=lens.summarize(per_prompt, [0, 1, 2, 3], sets), per_prompt=per_prompt, sets=sets,
                            layers=[0, 1, 2, 3], token_sets={s: s for s in sets},
                            top1_ids=torch.randint(0, 4, (5, 4), generator=g),
                            token_strings={0: " ", 1: "\n", 2: "Paris", 3: " capital"})


def _same(drawn, expected):
    expected = expected.tolist() if hasattr(expected, "tolist") else expected
    torch.testing.assert_close(torch.tensor(drawn, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-7, rtol=1e-6)


def _lines(fig, name=None):
    return [t for t in fig.data if t.type == "scatter" and t.fill is None and (name is None or t.name == name)]


def test_phases_lines_are_the_means_and_bands_the_ci():
    curves = _curves()
    fig = plot.phases(curves)
    assert isinstance(fig, go.Figure)
    for name in curves.sets:
        (line,) = _lines(fig, name)
        rows = curves.frame[curves.frame["set"] == name]
        assert list(line.x) == rows["layer"].tolist()
        assert list(line.y) == pytest.approx(rows["mean"].tolist())
        (band,) = [t for t in fig.data if t.fill == "toself" and t.legendgroup == name]
        upper = rows["ci_high"].clip(lower=0).tolist()
        assert list(band.y[:4]) == pytest.approx(upper)
        assert list(band.y[4:]) == pytest.approx(rows["ci_low"].clip(lower=0).tolist()[::-1])
    std_band = [t for t in plot.phases(curves, spread="std").data if t.fill == "toself"][0]
    rows = curves.frame[curves.frame["set"] == "input"]
    assert list(std_band.y[:4]) == pytest.approx((rows["mean"] + rows["std"]).tolist())
    assert not [t for t in plot.phases(curves, spread=None).data if t.fill == "toself"]
    panels = plot.phases({"text ICL": curves, "image ICL": _curves(1)}, spread=None)
    assert len(panels.data) == 6 and panels.layout.annotations[1].text == "image ICL"
    assert list(panels.data[3].y) == pytest.approx(_curves(1).curve("input").tolist())
    one_prompt = torch.rand(1, 2, 1)
    single = lens.PhaseCurves(frame=lens.summarize(one_prompt, [0, 1], ["task"]), per_prompt=one_prompt, sets=["task"],
                              layers=[0, 1], token_sets={}, top1_ids=torch.zeros(1, 2, dtype=torch.long),
                              token_strings={0: "x"})
    assert [t.fill for t in plot.phases(single).data] == [None]       # one prompt: no spread to shade
    with pytest.raises(InputError, match="spread"):
        plot.phases(curves, spread="iqr")


def test_pies_values_are_the_counts():
    dist = lens.top1_distribution(_curves(), layers=[0, 3], top=2)
    fig = plot.pies(dist)
    assert [t.type for t in fig.data] == ["pie", "pie"]
    for trace, layer in zip(fig.data, [0, 3]):
        rows = dist[dist["layer"] == layer]
        assert list(trace.values) == rows["count"].tolist()
        assert list(trace.labels) == [plot.show_token(t) for t in rows["token"]]
    assert len(plot.pies(dist, layers=[3]).data) == 1
    with pytest.raises(InputError, match="not in the distribution"):
        plot.pies(dist, layers=[1])


def test_show_token_makes_whitespace_visible():
    assert plot.show_token(" ") == "␣"
    assert plot.show_token(" capital") == "␣capital"
    assert plot.show_token("\n") == "\\n"
    assert plot.show_token("") == "∅"


def _layer_lens():
    top_ids = torch.tensor([[[[2, 0], [3, 1], [1, 2]], [[0, 1], [2, 3], [3, 0]]]])  # [row=1, layer=2, pos=3, k=2]
    probs = torch.rand(1, 2, 3, 2)
    return lens.LayerLens(layers=[4, 9], top_ids=top_ids, top_probs=probs, entropy=torch.rand(1, 2, 3),
                          positions=torch.tensor([[0, 1, 2]]), valid=torch.tensor([[False, True, True]]),
                          input_tokens=[["<pad>", "A", ":"]], token_strings={0: " ", 1: "\n", 2: "Paris", 3: "x"})


def test_lens_heatmap_cells_are_the_top1_tokens_and_probs():
    result = _layer_lens()
    fig = plot.lens_heatmap(result)
    (heat,) = fig.data
    assert list(heat.y) == [4, 9]
    expected_z = result.top_probs[0, :, 1:, 0]                           # padding column dropped
    _same(heat.z, expected_z)
    assert [list(r) for r in heat.text] == [["x", "\\n"], ["Paris", "x"]]
    assert list(fig.layout.xaxis.ticktext) == ["A", ":"]
    entropy = plot.lens_heatmap(result, value="entropy").data[0]
    _same(entropy.z, result.entropy[0, :, 1:])
    with pytest.raises(InputError, match="target_prob"):
        plot.lens_heatmap(result, value="target_prob")
    with pytest.raises(InputError, match="row 3"):
        plot.lens_heatmap(result, row=3)


def _sweep():
    rows = [{"task": task, "seed": seed, "layer": layer, "accuracy": acc}
            for task, base in [("capital", 0.2), ("color", 0.5)] for seed in (0, 1)
            for layer, acc in enumerate([base, base + 0.1 * (seed + 1), base - 0.1])]
    return SweepResult(scores=pd.DataFrame(rows), best=1)


def test_sweep_lines_are_seed_means_and_baselines_are_dotted_levels():
    result = _sweep()
    evals = EvalResult(pd.DataFrame([{"task": "capital", "method": "xbase", "seed": s, "accuracy": a}
                                     for s, a in [(0, 0.1), (1, 0.3)]]), pd.DataFrame())
    fig = plot.sweep(result, baselines={"xbase": evals, "no_context": 0.05, "majority": {"color": 0.4}})
    means = result.scores.groupby(["task", "layer"])["accuracy"].mean()
    patched = [t for t in fig.data if t.name == "patched"]
    assert [t.meta["task"] for t in patched] == ["capital", "color"]
    for trace in patched:
        assert list(trace.y) == pytest.approx(means.loc[trace.meta["task"]].tolist())
    xbase = [t for t in fig.data if t.name == "xbase"]
    assert len(xbase) == 1 and list(xbase[0].y) == pytest.approx([0.2, 0.2]) and xbase[0].line.dash == "dot"
    assert [t.meta["task"] for t in fig.data if t.name == "no_context"] == ["capital", "color"]
    majority = [t for t in fig.data if t.name == "majority"]
    assert len(majority) == 1 and majority[0].meta["task"] == "color" and list(majority[0].y) == [0.4, 0.4]
    assert any(shape.x0 == 1 for shape in fig.layout.shapes)            # the selected layer
    with pytest.raises(InputError, match="no 'base' rows"):
        plot.sweep(result, baselines={"base": evals})


def test_scaling_points_are_means_with_std_error_bars():
    frame = pd.DataFrame([{"r": r, "repeat": rep, "method": m, "accuracy": 0.1 * r + 0.01 * rep + (m == "ensemble")}
                          for r in (1, 4, 16) for rep in range(3) for m in ("exemplar", "ensemble")])
    fig = plot.scaling(frame)
    stats = frame.groupby(["method", "r"])["accuracy"].agg(["mean", "std"])
    for trace in fig.data:
        assert list(trace.x) == [1, 4, 16]
        assert list(trace.y) == pytest.approx(stats.loc[trace.name]["mean"].tolist())
        assert list(trace.error_y.array) == pytest.approx(stats.loc[trace.name]["std"].tolist())


def test_similarity_heatmap_and_vector_map_carry_the_numbers():
    vecs = [TaskVector(vectors=torch.randn(2, 4), layers=[0, 1], model_name="m", family="llama", d_model=4,
                       n_model_layers=2, task=t, modality=mod) for t in ("a", "b") for mod in ("text", "image")]
    matrix = geometry.similarity_matrix(vecs, layer=1)
    (heat,) = plot.similarity_heatmap(matrix).data
    _same(heat.z, matrix.to_numpy())
    assert list(heat.x) == list(matrix.columns)
    matched = geometry.matched_vs_mismatched({"a": vecs[0], "b": vecs[2]}, {"a": vecs[1], "b": vecs[3]}, layer=0)
    _same(plot.similarity_heatmap(matched).data[0].z, matched.matrix.to_numpy())

    embedding = geometry.embed_vectors(vecs)
    fig = plot.vector_map(embedding)
    assert len(fig.data) == 8                                           # 2 layers × (2 tasks × 2 modalities)
    for trace in fig.data:
        task, modality = trace.name.split(" · ")
        layer = 0 if trace.xaxis == "x" else 1
        rows = embedding.query("layer == @layer and task == @task and modality == @modality")
        assert list(trace.x) == pytest.approx(rows["x"].tolist()) and list(trace.y) == pytest.approx(rows["y"].tolist())
    assert {t.marker.symbol for t in fig.data} == {"circle", "diamond"}
    assert sum(t.showlegend for t in fig.data) == 4
    with pytest.raises(InputError, match="lacks column"):
        plot.vector_map(embedding, color="family_name")


def test_empty_results_raise():
    empty_curves = _curves()
    empty_curves.frame = empty_curves.frame.iloc[0:0]
    with pytest.raises(TaskError, match="empty"):
        plot.phases(empty_curves)
    with pytest.raises(TaskError):
        plot.phases({})
    with pytest.raises(TaskError, match="empty"):
        plot.pies(pd.DataFrame(columns=["layer", "token", "count"]))
    with pytest.raises(TaskError, match="empty"):
        plot.sweep(SweepResult(scores=pd.DataFrame(columns=["task", "seed", "layer", "accuracy"]), best=0))
    with pytest.raises(TaskError, match="empty"):
        plot.scaling(pd.DataFrame())
    with pytest.raises(TaskError, match="empty"):
        plot.similarity_heatmap(pd.DataFrame())
    with pytest.raises(TaskError, match="empty"):
        plot.vector_map(pd.DataFrame())
    with pytest.raises(InputError, match="DataFrame"):
        plot.pies([1, 2])


def test_save_html_and_png_rule(tmp_path):
    fig = plot.phases(_curves())
    path = plot.save(fig, tmp_path / "sub" / "phases.html", include_plotlyjs="cdn")
    text = path.read_text()
    assert path.is_file() and "plotly" in text and '"answer"' in text
    if importlib.util.find_spec("kaleido") is None:
        with pytest.raises(ModuleNotFoundError, match="kaleido"):
            plot.save(fig, tmp_path / "phases.png")
    with pytest.raises(InputError, match=".txt"):
        plot.save(fig, tmp_path / "phases.txt")


def test_phases_log_y_shows_sets_that_peak_far_below_the_others():
    curves = _curves()
    fig = plot.phases(curves, log_y=True)
    assert fig.layout.yaxis.type == "log" and "log" in fig.layout.yaxis.title.text
    for band in [t for t in fig.data if t.fill == "toself"]:
        assert min(band.y) > 0                                        # a log axis cannot draw 0
    assert plot.phases(curves).layout.yaxis.type != "log"
    with pytest.raises(InputError, match="log_y"):
        plot.phases(curves, log_y="yes")


def _wide_lens(n_pos):
    top_ids = torch.arange(3 * n_pos).reshape(1, 3, n_pos, 1) % 4
    strings = {0: " capital", 1: "\n", 2: "Paris", 3: "Montevideo"}
    return lens.LayerLens(layers=[0, 1, 2], top_ids=top_ids, top_probs=torch.rand(1, 3, n_pos, 1),
                          entropy=torch.rand(1, 3, n_pos), positions=torch.arange(n_pos)[None],
                          valid=torch.ones(1, n_pos, dtype=torch.bool), input_tokens=[["x"] * n_pos],
                          token_strings=strings)


def test_lens_heatmap_stays_readable_at_75_positions():
    result = _wide_lens(75)
    (heat,) = plot.lens_heatmap(result).data
    fig = plot.lens_heatmap(result)
    assert fig.layout.width >= 36 * 75                                # a column wide enough for 5 characters
    assert max(len(t) for row in heat.text for t in row) <= 5         # cut cell text ...
    assert "Montevideo" in {t for row in heat.customdata for t in row}  # ... full token in the hover
    assert heat.texttemplate == "%{text}" and heat.textfont.size == 8
    few = plot.lens_heatmap(_wide_lens(10)).data[0]
    assert "Montevideo" in {t for row in few.text for t in row}
    many = plot.lens_heatmap(_wide_lens(plot.MAX_CELL_TEXT_COLUMNS + 1))
    assert many.data[0].texttemplate is None and "hover" in many.layout.title.text
