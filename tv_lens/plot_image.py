"""Draw an :class:`~tv_lens.image_maps.ImageMap` over the image itself (plotly).

The image is the figure's background (in its own pixel coordinates); the map is a semi-transparent heatmap whose
cells are the image tokens' pixel boxes; hovering a cell shows the token index, the value, its grid place and the
decoded token (lens maps). A map of several layers gets a slider over layers. Takes results, never a model.

Views that overlap on the picture are drawn one at a time (``view=``): LLaVA-NeXT's ``"base"`` and ``"high-res"``,
Idefics3's ``"tiles"`` (every tile together) and ``"global"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .errors import InputError, TaskError

_PREFERRED = ("high-res", "tiles", "image")


def _groups(patches: pd.DataFrame) -> pd.Series:
    """The drawable group of each patch row: tiles together, every other view by its name."""
    return patches["view"].where(~patches["view"].str.startswith("tile "), "tiles")


def default_view(image_map: Any) -> str:
    """The view drawn when none is named: the finest one covering the whole image."""
    groups = list(dict.fromkeys(_groups(image_map.geometry.patches)))
    return next((g for g in _PREFERRED if g in groups), groups[0])


def _grid(patches: pd.DataFrame, values: np.ndarray, labels: list[list[Any]]) -> tuple:
    """Cell edges and ``[rows, cols]`` arrays of values and hover data for one view's patches."""
    xs = sorted(set(patches["x0"]) | set(patches["x1"]))
    ys = sorted(set(patches["y0"]) | set(patches["y1"]))
    z = np.full((len(ys) - 1, len(xs) - 1), np.nan)
    custom = np.empty(z.shape + (len(labels[0]) if labels else 0,), dtype=object)
    for i, (x0, y0) in enumerate(zip(patches["x0"], patches["y0"])):
        r, c = ys.index(y0), xs.index(x0)
        z[r, c] = values[i]
        custom[r, c] = labels[i]
    return xs, ys, z, custom


def image_map(image_map: Any, layer: int | None = None, head: int | None = None, view: str | None = None,
              opacity: float = 0.55, colorscale: str = "Viridis", zmin: float | None = None,
              zmax: float | None = None, title: str | None = None) -> go.Figure:
    """The map drawn on its image.

    Args:
        image_map: an :class:`~tv_lens.image_maps.ImageMap` (``TaskVectorEffect.difference`` too).
        layer: one layer; ``None``: every layer of the map, with a slider.
        head: for maps that kept heads.
        view: which view to draw (``"image"``, ``"high-res"``, ``"base"``, ``"tiles"``, ``"global"``); default
            :func:`default_view`.
        opacity: of the heatmap over the image.
        zmin, zmax: colour range (default: the drawn values' range over all layers, so the slider compares).

    Returns:
        A ``plotly.graph_objects.Figure``: a layout image underneath, one ``Heatmap`` per layer.

    Raises:
        InputError: not an ImageMap, an unknown view, a layer not in the map. TaskError: an empty map.
    """
    if not hasattr(image_map, "geometry") or not hasattr(image_map, "values"):
        raise InputError(f"image_map takes a tv_lens.image_maps.ImageMap, got {type(image_map).__name__}.")
    if image_map.values.numel() == 0:
        raise TaskError("Nothing to plot: the map is empty.")
    geometry = image_map.geometry
    patches = geometry.patches
    groups = _groups(patches)
    view = view or default_view(image_map)
    if view not in set(groups):
        raise InputError(f"No view {view!r} in this map; draw one of {sorted(set(groups))}.")
    keep = (groups == view).to_numpy()
    layers = image_map.layers if layer is None else [layer]
    rows = np.stack([image_map.at(l, head).detach().cpu().double().numpy()[keep] for l in layers])
    low = float(np.nanmin(rows)) if zmin is None else zmin
    high = float(np.nanmax(rows)) if zmax is None else zmax
    chosen = patches[keep].reset_index(drop=True)
    fig = go.Figure()
    for k, l in enumerate(layers):
        li = image_map.layers.index(l)
        decoded = image_map.decoded[li] if image_map.decoded is not None else None
        labels = [[int(t), int(r), int(c), v, (repr(decoded[j]) if decoded else "")]
                  for j, (t, r, c, v) in enumerate(zip(patches["token"], patches["row"], patches["col"],
                                                        patches["view"])) if keep[j]]
        xs, ys, z, custom = _grid(chosen, rows[k], labels)
        fig.add_trace(go.Heatmap(
            x=xs, y=ys, z=z, customdata=custom, zmin=low, zmax=high, colorscale=colorscale, opacity=opacity,
            visible=(k == len(layers) - 1) if len(layers) > 1 else True, name=f"layer {l}",
            colorbar={"thickness": 14},
            hovertemplate=("token %{customdata[0]} (%{customdata[3]} row %{customdata[1]}, col %{customdata[2]})"
                           "<br>value %{z:.4g}<br>%{customdata[4]}<extra>layer " + str(l) + "</extra>")))
    width, height = geometry.image_size
    if geometry.image is not None:
        fig.add_layout_image({"source": geometry.image, "xref": "x", "yref": "y", "x": 0, "y": 0, "sizex": width, "sizey": height,
                                  "sizing": "stretch", "layer": "below"})
    fig.update_xaxes(range=[0, width], showgrid=False, constrain="domain",
                     title=f"{geometry.family} image[{geometry.image_index}], view {view} (pixels)")
    fig.update_yaxes(range=[height, 0], showgrid=False, scaleanchor="x", constrain="domain")
    heading = title or image_map.what
    if len(layers) > 1:
        steps = [{"method": "update", "label": str(l),
                      "args": [{"visible": [i == k for i in range(len(layers))]},
                            {"title": {"text": f"{heading}, layer {l}"}}]} for k, l in enumerate(layers)]
        fig.update_layout(sliders=[{"active": len(layers) - 1, "steps": steps, "currentvalue": {"prefix": "layer "}}])
        heading = f"{heading}, layer {layers[-1]}"
    else:
        heading = f"{heading}, layer {layers[0]}"
    fig.update_layout(title=heading, template="plotly_white", plot_bgcolor="white", margin={"t": 60})
    return fig


def image_maps_row(maps: list[Any], layer: int, view: str | None = None, titles: list[str] | None = None,
                   opacity: float = 0.55) -> go.Figure:
    """Several maps of one layer side by side (e.g. ``TaskVectorEffect.before`` / ``after``), each on its image,
    each with its own colour range."""
    from plotly.subplots import make_subplots

    if not maps:
        raise TaskError("Nothing to plot: no maps.")
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=titles or [m.what for m in maps],
                        horizontal_spacing=0.08)
    for k, m in enumerate(maps):
        single = image_map(m, layer=layer, view=view, opacity=opacity)
        trace = single.data[0]
        trace.update(colorbar={"x": (k + 1) / len(maps) - 0.02, "len": 0.8, "title": None})
        fig.add_trace(trace, row=1, col=k + 1)
        width, height = m.geometry.image_size
        axis = "" if k == 0 else str(k + 1)
        if m.geometry.image is not None:
            fig.add_layout_image({"source": m.geometry.image, "xref": f"x{axis}", "yref": f"y{axis}", "x": 0, "y": 0,
                                      "sizex": width, "sizey": height, "sizing": "stretch", "layer": "below"})
        fig.update_xaxes(range=[0, width], showgrid=False, row=1, col=k + 1)
        fig.update_yaxes(range=[height, 0], showgrid=False, scaleanchor=f"x{axis}", row=1, col=k + 1)
    fig.update_layout(title=f"layer {layer}", template="plotly_white")
    return fig


__all__ = ["default_view", "image_map", "image_maps_row"]
