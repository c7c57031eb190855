"""Plotly figures of tv_lens results. Every function takes RESULTS (data), never a model, and returns a
``plotly.graph_objects.Figure``; an empty result raises :class:`~tv_lens.errors.TaskError`.

=======================  =====================================================  =========================
function                 takes                                                  paper
=======================  =====================================================  =========================
:func:`phases`           ``PhaseCurves`` (or ``{title: PhaseCurves}``)          Figure 3
:func:`pies`             ``top1_distribution(...)`` DataFrame                   Figure 4
:func:`lens_heatmap`     ``LayerLens`` (one row, several positions)             logit-lens picture
:func:`sweep`            ``SweepResult`` + baselines                            Figure 11
:func:`scaling`          ``sample_efficiency(...)`` DataFrame                   Figure 8
:func:`similarity_heatmap`  ``similarity_matrix(...)`` / ``MatchedSimilarity``  Table 4, Figure 6
:func:`vector_map`       ``embed_vectors(...)`` DataFrame                       appendix t-SNE
:func:`cie_heatmap`      ``CIEResult`` (``tvl.heads.causal_indirect_effect``)   Todd et al., Figure 2
=======================  =====================================================  =========================

:func:`save` writes HTML (self-contained by default), or PNG/SVG/PDF when kaleido is installed.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative
from plotly.subplots import make_subplots

from .errors import InputError, TaskError
from .plot_image import image_map, image_maps_row  # noqa: F401  (re-exported: tvl.plot.image_map)

PALETTE = qualitative.Plotly
SPREADS = ("ci", "std", None)
SYMBOLS = ("circle", "diamond", "square", "x", "triangle-up", "star", "cross", "triangle-down")


def show_token(token: str) -> str:
    """A token as it should read in a figure: newlines and tabs escaped, edge spaces as ``␣``."""
    body = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    stripped = body.strip(" ")
    if not stripped:
        return "␣" * len(body) if body else "∅"
    lead, trail = len(body) - len(body.lstrip(" ")), len(body) - len(body.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail


def _color(index: int, alpha: float | None = None) -> str:
    hex_color = PALETTE[index % len(PALETTE)]
    if alpha is None:
        return hex_color
    r, g, b = hex_to_rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _need(frame: Any, what: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}.")
    if frame.empty:
        raise TaskError(f"Nothing to plot: the {what} is empty.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"The {what} lacks column(s) {missing}; it has {list(frame.columns)}.")
    return frame


# ---------------------------------------------------------------------------------------------- lens
def _band(rows: pd.DataFrame, spread: str | None) -> tuple[list[float], list[float]] | None:
    """(low, high) of the shaded band, clipped at 0 (probabilities); None without spread or for a single prompt."""
    if spread is None:
        return None
    if spread == "ci":
        low, high = rows["ci_low"], rows["ci_high"]
    else:
        low, high = rows["mean"] - rows["std"], rows["mean"] + rows["std"]
    if low.isna().any() or high.isna().any():
        return None
    return low.clip(lower=0).tolist(), high.clip(lower=0).tolist()


def phases(curves: Any, spread: str | None = "ci", title: str | None = None, log_y: bool = False) -> go.Figure:
    """Figure 3: one line per token set (mean probability per layer) with a shaded band.

    Args:
        curves: a ``PhaseCurves``, or ``{panel title: PhaseCurves}`` for side-by-side panels (text vs image ICL).
        spread: ``"ci"`` (95% CI of the mean), ``"std"`` (± one standard deviation) or ``None``.
        log_y: a logarithmic probability axis, for sets that peak far below the others (a task set at 3e-4 next
            to an answer set at 0.3 is a flat line on a linear axis). Band edges at or below 0 are clipped to the
            smallest positive value, since a log axis cannot draw them.
    """
    if spread not in SPREADS:
        raise InputError(f"spread must be one of {SPREADS}, not {spread!r}.")
    if not isinstance(log_y, bool):
        raise InputError(f"log_y must be True or False, not {log_y!r}.")
    panels = dict(curves) if isinstance(curves, Mapping) else {None: curves}
    if not panels:
        raise TaskError("Nothing to plot: no phase curves given.")
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                        subplot_titles=[str(t) for t in panels] if len(panels) > 1 else None)
    for col, result in enumerate(panels.values(), start=1):
        frame = _need(getattr(result, "frame", None), "phase-curve frame", ["layer", "set", "mean"])
        for index, name in enumerate(dict.fromkeys(frame["set"])):
            rows = frame[frame["set"] == name].sort_values("layer")
            layers, mean = rows["layer"].tolist(), rows["mean"].tolist()
            bounds = _band(rows, spread)
            if bounds is not None:
                low, high = bounds
                if log_y:
                    floor = min([v for v in mean + low + high if v > 0], default=1e-12)
                    low = [max(v, floor) for v in low]
                fig.add_trace(go.Scatter(x=layers + layers[::-1], y=high + low[::-1], fill="toself", mode="lines",
                                         line={"width": 0}, fillcolor=_color(index, 0.2), hoverinfo="skip",
                                         showlegend=False, legendgroup=name, name=f"{name} ({spread})"),
                              row=1, col=col)
            fig.add_trace(go.Scatter(x=layers, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                     line={"color": _color(index)}, showlegend=col == 1,
                                     hovertemplate="layer %{x}: %{y:.3f}<extra>" + name + "</extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(title_text="probability" + (" (log scale)" if log_y else ""), row=1, col=1)
    if log_y:
        fig.update_yaxes(type="log")
    fig.update_layout(title=title or "Token-set probability per layer (logit lens)", template="plotly_white")
    return fig


def pies(distribution: pd.DataFrame, layers: Sequence[int] | None = None, title: str | None = None) -> go.Figure:
    """Figure 4: one pie per layer of how often each token is the top-1 decoding.

    Args:
        distribution: from :func:`tv_lens.lens.top1_distribution` (``layer, token, count``).
        layers: which of its layers to draw (default all, in order).
    """
    frame = _need(distribution, "top-1 distribution", ["layer", "token", "count"])
    layers = sorted(dict.fromkeys(frame["layer"].tolist())) if layers is None else list(layers)
    absent = [layer for layer in layers if layer not in set(frame["layer"])]
    if absent or not layers:
        raise InputError(f"Layer(s) {absent} are not in the distribution; it has {sorted(set(frame['layer']))}.")
    n_rows, n_cols = _grid(len(layers), 4)
    fig = make_subplots(rows=n_rows, cols=n_cols, specs=[[{"type": "domain"}] * n_cols] * n_rows,
                        subplot_titles=[f"layer {layer}" for layer in layers])
    for i, layer in enumerate(layers):
        rows = frame[frame["layer"] == layer]
        fig.add_trace(go.Pie(labels=[show_token(t) for t in rows["token"]], values=rows["count"].tolist(),
                             name=f"layer {layer}", textinfo="label+percent", sort=False),
                      row=i // n_cols + 1, col=i % n_cols + 1)
    fig.update_layout(title=title or "Top-1 decodings per layer", template="plotly_white")
    return fig


def lens_heatmap(lens: Any, row: int = 0, value: str = "prob", title: str | None = None) -> go.Figure:
    """Layer × position heatmap of one row of a ``LayerLens``; each cell shows its top-1 token.

    Args:
        lens: from ``lens_over_layers(model, prompt, position="all")`` (or any positions).
        row: which prompt.
        value: cell colour: ``"prob"`` (top-1 probability), ``"entropy"`` or ``"target_prob"``.
    """
    if not hasattr(lens, "top_ids"):
        raise InputError(f"lens_heatmap takes a LayerLens, got {type(lens).__name__}.")
    if lens.top_ids.numel() == 0:
        raise TaskError("Nothing to plot: the lens result is empty.")
    if not 0 <= row < lens.n_rows:
        raise InputError(f"row {row} is out of range: the result has {lens.n_rows} rows.")
    grids = {"prob": lens.top_probs[..., 0], "entropy": lens.entropy, "target_prob": lens.target_prob}
    if value not in grids or grids[value] is None:
        raise InputError(f"value must be one of {[k for k, v in grids.items() if v is not None]}, not {value!r}.")
    keep = lens.valid[row].nonzero().flatten().tolist()
    if not keep:
        raise TaskError(f"Row {row} has no real (non-padding) positions.")
    z = grids[value][row][:, keep]                                  # [layer, pos]
    text = [[show_token(lens.token_strings[int(lens.top_ids[row, li, p, 0])]) for p in keep]
            for li in range(len(lens.layers))]
    # Cell text stays readable: wide enough columns (60 px, 36 px past 30 positions, with tokens cut to 5
    # characters there), a row height per layer, and past MAX_CELL_TEXT_COLUMNS positions tokens in the hover only.
    n_pos, n_layers = len(keep), len(lens.layers)
    show_text, narrow = n_pos <= MAX_CELL_TEXT_COLUMNS, n_pos > 30
    cells = [[t if not narrow or len(t) <= 5 else t[:4] + "…" for t in layer] for layer in text]
    column = 36 if narrow else 60
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=list(range(n_pos)), y=list(lens.layers), text=cells,
                               customdata=text, texttemplate="%{text}" if show_text else None,
                               textfont={"size": 8 if narrow else 10}, colorscale="Blues", colorbar={"title": value},
                               hovertemplate="layer %{y}, position %{x}: %{customdata} (%{z:.3f})<extra></extra>"))
    fig.update_xaxes(tickmode="array", tickvals=list(range(n_pos)),
                     ticktext=[show_token(lens.input_tokens[row][p]) for p in keep], title_text="input token",
                     tickangle=-60, tickfont={"size": 8 if narrow else 10})
    fig.update_yaxes(title_text="layer")
    fig.update_layout(title=title or f"Logit lens, top-1 decoding (colour: {value})"
                      + ("" if show_text else f" — hover for tokens ({n_pos} positions)"),
                      template="plotly_white", width=max(700, column * n_pos + 200) if show_text else 1400,
                      height=max(400, 22 * n_layers + 200))
    return fig


#: ``lens_heatmap`` writes each cell's top-1 token up to this many position columns; beyond, tokens are in the hover.
MAX_CELL_TEXT_COLUMNS = 80


# ---------------------------------------------------------------------------------------------- evaluation
def _baseline_values(value: Any, name: str) -> dict[str, float] | float:
    if hasattr(value, "scores") and hasattr(value, "predictions"):  # an EvalResult
        scores = value.scores[value.scores["method"] == name]
        if scores.empty:
            raise InputError(f"The EvalResult given for baseline {name!r} has no {name!r} rows; name the baseline "
                             f"after one of its methods {sorted(set(value.scores['method']))}.")
        return scores.groupby("task")["accuracy"].mean().to_dict()
    if isinstance(value, pd.Series):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return float(value)


def sweep(sweep_result: Any, baselines: Mapping[str, Any] | None = None, title: str | None = None) -> go.Figure:
    """Figure 11: accuracy per layer for each task (mean over seeds), one panel per task, with baselines as dotted
    horizontal lines and the selected layer as a dashed vertical line.

    Args:
        sweep_result: a ``SweepResult``.
        baselines: ``{name: value}``; a value is one float for every task, ``{task: float}``, a Series, or an
            ``EvalResult`` (its rows whose method is ``name``, averaged over seeds), e.g. ``{"xbase": result}``.
    """
    scores = _need(getattr(sweep_result, "scores", None), "sweep scores", ["task", "layer", "accuracy"])
    per_task = scores.groupby(["task", "layer"], sort=False)["accuracy"].mean().reset_index()
    tasks = list(dict.fromkeys(per_task["task"]))
    resolved = {name: _baseline_values(value, name) for name, value in (baselines or {}).items()}
    n_rows, n_cols = _grid(len(tasks), 3)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=tasks, shared_yaxes=True)
    best = getattr(sweep_result, "best", None)
    for i, task in enumerate(tasks):
        rows = per_task[per_task["task"] == task].sort_values("layer")
        layers = rows["layer"].tolist()
        where = {"row": i // n_cols + 1, "col": i % n_cols + 1}
        fig.add_trace(go.Scatter(x=layers, y=rows["accuracy"].tolist(), mode="lines+markers", name="patched",
                                 legendgroup="patched", showlegend=i == 0, line={"color": _color(0)},
                                 meta={"task": task}), **where)
        for b, (name, value) in enumerate(resolved.items(), start=1):
            level = value.get(task) if isinstance(value, dict) else value
            if level is None:
                continue
            fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[level, level], mode="lines", name=name,
                                     legendgroup=name, showlegend=i == 0,
                                     line={"dash": "dot", "color": _color(b)}, meta={"task": task}), **where)
        _constant_markers(fig, rows, getattr(sweep_result, "answers", None), task, i == 0, where)
        if best is not None:
            fig.add_vline(x=best, line_dash="dash", line_color="grey", **where)
    fig.update_yaxes(title_text="accuracy", col=1)
    fig.update_xaxes(title_text="layer", row=n_rows)
    note = sweep_result.constant_note() if hasattr(sweep_result, "constant_note") else ""
    heading = title or f"Accuracy per patched layer (selected layer: {best})"
    fig.update_layout(title=heading + (f"<br><sup>⚠ {note}</sup>" if note else ""), template="plotly_white")
    return fig


def _constant_markers(fig: go.Figure, accuracy: pd.DataFrame, answers: pd.DataFrame | None, task: str,
                      legend: bool, where: dict) -> None:
    """Red crosses on the layers where one first answer covers ≥ 90% of the task's queries (any seed)."""
    if answers is None or answers.empty:
        return
    mine = answers[answers["task"] == task].sort_values("top_share", ascending=False)
    flagged = mine.groupby("layer").agg(top_share=("top_share", "max"), top_answer=("top_answer", "first"))
    flagged = flagged[flagged["top_share"] >= 0.9].join(accuracy.set_index("layer")["accuracy"])
    if flagged.empty:
        return
    fig.add_trace(go.Scatter(
        x=flagged.index.tolist(), y=flagged["accuracy"].tolist(), mode="markers", name="one answer ≥ 90%",
        legendgroup="constant", showlegend=legend, marker={"symbol": "x", "size": 10, "color": "crimson"},
        text=[f"{a!r}: {s:.0%}" for a, s in zip(flagged["top_answer"], flagged["top_share"])],
        hovertemplate="layer %{x}: answers %{text} of the queries<extra></extra>", meta={"task": task}), **where)


def scaling(frame: pd.DataFrame, x: str | None = None, y: str = "accuracy", color: str = "method",
            title: str | None = None) -> go.Figure:
    """Figure 8: mean accuracy (± std over repeats as error bars) against the number of input-output examples
    behind the vector, as the paper plots it.

    Args:
        frame: from :func:`tv_lens.evaluate.sample_efficiency` (``r, n_examples, repeat, method, accuracy``).
        x: the x column; default ``"n_examples"`` (the paper's axis), ``"r"`` (prompts averaged) when the frame
            has no example counts.
    """
    if x is None:
        has_examples = "n_examples" in getattr(frame, "columns", []) and frame["n_examples"].notna().all()
        x = "n_examples" if has_examples else "r"
    frame = _need(frame, "sample-efficiency frame", [x, y, color])
    stats = frame.groupby([color, x], sort=False)[y].agg(["mean", "std"]).reset_index()
    fig = go.Figure()
    for index, name in enumerate(dict.fromkeys(stats[color])):
        rows = stats[stats[color] == name].sort_values(x)
        fig.add_trace(go.Scatter(x=rows[x].tolist(), y=rows["mean"].tolist(), mode="lines+markers", name=str(name),
                                 line={"color": _color(index)},
                                 error_y={"type": "data", "array": rows["std"].fillna(0).tolist(), "visible": True}))
    fig.update_xaxes(title_text={"n_examples": "number of examples", "r": "prompts averaged (r)"}.get(x, x),
                     type="log")
    fig.update_yaxes(title_text=y)
    fig.update_layout(title=title or f"{y} vs {x}", template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------- geometry
def similarity_heatmap(matrix: Any, title: str | None = None, zmin: float = -1.0, zmax: float = 1.0) -> go.Figure:
    """A cosine-similarity matrix as an annotated heatmap.

    Args:
        matrix: a DataFrame from :func:`tv_lens.geometry.similarity_matrix`, or a ``MatchedSimilarity``.
    """
    if hasattr(matrix, "matrix") and hasattr(matrix, "by_task"):
        matrix = matrix.matrix
    matrix = _need(matrix, "similarity matrix")
    values = matrix.to_numpy().tolist()
    fig = go.Figure(go.Heatmap(z=values, x=[str(c) for c in matrix.columns], y=[str(i) for i in matrix.index],
                               text=[[f"{v:.2f}" for v in row] for row in values], texttemplate="%{text}",
                               zmin=zmin, zmax=zmax, colorscale="RdBu", reversescale=True,
                               colorbar={"title": "cosine"}))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or "Cosine similarity", template="plotly_white")
    return fig


def vector_map(embedding: pd.DataFrame, layers: Sequence[int] | None = None, color: str = "task",
               symbol: str | None = "modality", title: str | None = None) -> go.Figure:
    """Scatter of a 2-D embedding of task vectors, one panel per layer.

    Args:
        embedding: from :func:`tv_lens.geometry.embed_vectors` (``layer, x, y`` + label columns).
        color / symbol: columns that pick the colour and the marker (``symbol=None``: one marker).
    """
    needed = ["layer", "x", "y", color] + ([symbol] if symbol else [])
    frame = _need(embedding, "embedding", needed)
    layers = sorted(dict.fromkeys(frame["layer"].tolist())) if layers is None else list(layers)
    if not layers or any(layer not in set(frame["layer"]) for layer in layers):
        raise InputError(f"Layers {layers} are not all in the embedding; it has {sorted(set(frame['layer']))}.")
    n_rows, n_cols = _grid(len(layers), 4)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[f"layer {layer}" for layer in layers])
    colors = {value: i for i, value in enumerate(dict.fromkeys(frame[color].astype(str)))}
    symbols = ({value: SYMBOLS[i % len(SYMBOLS)] for i, value in enumerate(dict.fromkeys(frame[symbol].astype(str)))}
               if symbol else {})
    shown: set[str] = set()
    for i, layer in enumerate(layers):
        at_layer = frame[frame["layer"] == layer]
        keys = [color] + ([symbol] if symbol else [])
        for group, rows in at_layer.groupby(keys, sort=False):
            group = group if isinstance(group, tuple) else (group,)
            name = " · ".join(str(g) for g in group)
            fig.add_trace(go.Scatter(
                x=rows["x"].tolist(), y=rows["y"].tolist(), mode="markers", name=name, legendgroup=name,
                showlegend=name not in shown, text=rows["label"].tolist() if "label" in rows else None,
                marker={"color": _color(colors[str(group[0])]),
                        "symbol": symbols[str(group[1])] if symbol else "circle", "size": 9}),
                row=i // n_cols + 1, col=i % n_cols + 1)
            shown.add(name)
    fig.update_layout(title=title or "Task vectors in 2-D", template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------- heads
def cie_heatmap(result: Any, top: int = 10, title: str | None = None) -> go.Figure:
    """Layer × head heatmap of the average causal indirect effect (diverging colours, zero in the middle); the
    ``top`` heads are outlined and ranked in the hover text.

    Args:
        result: a ``CIEResult`` from :func:`tv_lens.heads.causal_indirect_effect`.
        top: how many of the best heads to mark (0: none).
    """
    if not hasattr(result, "effect") or not hasattr(result, "layers"):
        raise InputError(f"cie_heatmap takes a CIEResult, got {type(result).__name__}.")
    effect = result.effect
    if effect.numel() == 0:
        raise TaskError("Nothing to plot: the CIE result is empty.")
    layers, n_heads = list(result.layers), effect.shape[1]
    rank = {head: i + 1 for i, head in enumerate(result.top_heads(top))} if top else {}
    text = [[f"#{rank[(layer, h)]}" if (layer, h) in rank else "" for h in range(n_heads)] for layer in layers]
    bound = float(effect.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=effect.tolist(), x=list(range(n_heads)), y=layers, text=text, texttemplate="%{text}", zmid=0,
        zmin=-bound, zmax=bound, colorscale="RdBu", reversescale=True, colorbar={"title": "CIE"},
        hovertemplate="layer %{y}, head %{x}: %{z:.4f} %{text}<extra></extra>"))
    fig.update_xaxes(title_text="head", tickmode="array", tickvals=list(range(n_heads)))
    fig.update_yaxes(title_text="layer")
    n = getattr(result, "n_prompts", None)
    fig.update_layout(title=title or f"Average indirect effect per head ({n} prompts)", template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------- files
def save(fig: go.Figure, path: str | Path, include_plotlyjs: bool | str = True) -> Path:
    """Write a figure: ``.html`` (self-contained: opens offline; ``include_plotlyjs="cdn"`` for a small file), or
    ``.png`` / ``.svg`` / ``.pdf`` / ``.jpg`` / ``.webp`` when kaleido is installed — and, for kaleido ≥ 1, a Chrome
    or Chromium browser that it drives (system package, or ``plotly_get_chrome`` once).

    Raises:
        ModuleNotFoundError: an image format without kaleido (``pip install kaleido`` plus a Chromium, or save
            ``.html``).
        InputError: another extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not isinstance(fig, go.Figure):
        raise InputError(f"save takes a plotly Figure, got {type(fig).__name__}.")
    from .io import atomic_save   # the file is the old one or the complete new one, never half-written

    if suffix in (".html", ".htm"):
        return atomic_save(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=include_plotlyjs))
    if suffix in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        if importlib.util.find_spec("kaleido") is None:
            raise ModuleNotFoundError(f"Saving {suffix} needs kaleido (`pip install kaleido`) and a Chrome/Chromium "
                                      "browser for it to drive (system package, or `plotly_get_chrome`); save as "
                                      ".html instead, which needs nothing.")
        return atomic_save(path, lambda tmp: fig.write_image(tmp))
    raise InputError(f"Cannot save a figure as {suffix or 'a file without extension'!r}; use .html or .png.")


__all__ = ["cie_heatmap", "lens_heatmap", "phases", "pies", "save", "scaling", "show_token", "similarity_heatmap", "sweep",
           "vector_map"]


# ---------------------------------------------------------------------------------------------- patching (#17)
def _patching_z(result: Any, value: str) -> Any:
    if not hasattr(result, "recovery") or not hasattr(result, "positions"):
        raise InputError(f"Patching plots take a tv_lens.patching.PatchingResult, got {type(result).__name__}.")
    if value not in ("recovery", "scores"):
        raise InputError(f"value must be 'recovery' or 'scores', not {value!r}.")
    z = getattr(result, value)
    if z.numel() == 0:
        raise TaskError("Nothing to plot: the patching result is empty.")
    return z


def patching_grid(result: Any, value: str = "recovery", head: int | None = None, title: str | None = None
                  ) -> go.Figure:
    """Layer × position heatmap of an activation- or attribution-patching grid; columns are labelled with the
    corrupted prompt's tokens (indices such as ``-1`` with the token there too; named columns by their name), and
    image tokens are outlined.

    Args:
        result: a :class:`tv_lens.patching.PatchingResult`, or a
            :class:`~tv_lens.patching_pairs.PairsPatchingResult` (many pairs: the mean per cell, with its 95% CI
            in the hover text; same colours).
        value: ``"recovery"`` (0 = corrupted, 1 = clean; diverging colours around 0) or ``"scores"`` (the metric).
        head: for per-head results, which head to show (default: the sum over heads of ``scores``, the recovery of
            patching them one at a time is not additive, so pick a head for ``"recovery"``).
    """
    z = _patching_z(result, value)
    ci = getattr(result, "ci", None) if value == "recovery" else None
    if result.heads is not None:
        if head is None and value == "recovery":
            raise InputError("A per-head result: pass head=... (or plot it with patching_heads).")
        pick = (lambda t: t[:, :, result.heads.index(head)]) if head is not None else (lambda t: t.sum(-1))
    else:
        pick = (lambda t: t[:, :, 0])  # noqa: E731
    z = pick(z)
    labels = _position_labels(result)
    x = list(range(len(result.positions)))
    bound = float(z.nan_to_num().abs().max()) or 1.0
    colour = {"zmid": 0, "colorscale": "RdBu", "reversescale": True} if value == "recovery" else {
        "colorscale": "Viridis"}
    if ci is not None:
        half = pick(ci)
        custom = [[f"{label} (± {float(h):.3f}, 95% CI over {len(result.pairs)} pairs)" for label, h in
                   zip(labels, row)] for row in half]
    else:
        custom = [labels] * len(result.layers)
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=x, y=list(result.layers), colorbar={"title": value},
                               customdata=custom,
                               hovertemplate="layer %{y}, %{customdata}: %{z:.3f}<extra></extra>",
                               **({"zmin": -bound, "zmax": bound} if value == "recovery" else {}), **colour))
    for first, last in result.image_spans:
        columns = [i for i, pair in enumerate(result.positions) if first <= pair.corrupted[0] <= last]
        if columns:   # an outline, not a fill: a grey veil over a diverging scale reads as "less effect"
            fig.add_shape(type="rect", xref="x", yref="paper", x0=min(columns) - 0.5, x1=max(columns) + 0.5,
                          y0=0, y1=1, line={"color": "black", "width": 2, "dash": "dot"}, fillcolor="rgba(0,0,0,0)")
            fig.add_annotation(x=min(columns) - 0.5, y=1, xref="x", yref="paper", text="image", showarrow=False,
                               xanchor="left", yanchor="bottom")
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=labels, title_text="corrupted prompt position",
                     tickangle=-60)
    fig.update_yaxes(title_text="layer")
    pairs = f", mean over {len(result.pairs)} pairs" if hasattr(result, "pairs") else ""
    fig.update_layout(title=title or f"{result.method} patching of {result.hook} ({result.metric}): {value}{pairs}",
                      template="plotly_white")
    return fig


def _position_labels(result: Any) -> list[str]:
    """Column labels: an index column (``"5: 'A'"``, ``"-1"``) shows its token, a named column its name."""
    tokens = list(result.corrupted_tokens)
    labels = []
    for pair in result.positions:
        first = pair.corrupted[0]
        head = pair.label.split(":")[0].strip()
        if head.lstrip("-").isdigit() and first < len(tokens):
            prefix = head if head.startswith("-") else str(first)
            labels.append(f"{prefix} {show_token(tokens[first])}")
        else:
            labels.append(pair.label)
    return labels


def patching_heads(result: Any, value: str = "recovery", position: int = 0, title: str | None = None
                   ) -> go.Figure:
    """Layer × head heatmap of a per-head patching result (``hook="z"`` or ``"result"``) at one position column."""
    z = _patching_z(result, value)
    if result.heads is None:
        raise InputError(f"patching_heads needs a per-head result (hook='z' or 'result'), not hook={result.hook!r}; "
                         "use patching_grid.")
    if not 0 <= position < len(result.positions):
        raise InputError(f"position {position} is out of range: the result has {len(result.positions)} columns.")
    z = z[:, position, :]
    bound = float(z.nan_to_num().abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=list(result.heads), y=list(result.layers), zmid=0, zmin=-bound,
                               zmax=bound, colorscale="RdBu", reversescale=True, colorbar={"title": value},
                               hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="head", tickmode="array", tickvals=list(result.heads))
    fig.update_yaxes(title_text="layer")
    fig.update_layout(title=title or f"{result.method} patching of heads ({result.hook}) at "
                                     f"{result.positions[position].label}: {value}", template="plotly_white")
    return fig


__all__ += ["patching_grid", "patching_heads"]
