"""A report section for a few image queries: the attention and per-patch lens maps at the chosen layer.

:func:`image_maps_section` computes the maps (:mod:`tv_lens.image_maps`) and draws them over each image
(:mod:`tv_lens.plot_image`); :meth:`ImageSection.to_html` gives an HTML fragment that a report page embeds as it is
(the demo report: after the gallery, with the layer its sweep selected).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .image_maps import ImageMap, attention_map, lens_map
from .plot_image import image_map

WORDS = ("label", "query_input")


@dataclass
class ImageSection:
    """The maps and figures of :func:`image_maps_section`.

    Attributes:
        layer: the layer drawn.
        rows: per query ``(title, attention ImageMap, lens ImageMap)``; each map has only ``layer``.
        figures: per query ``(title, attention figure, lens figure)``.
    """

    layer: int
    rows: list[tuple[str, ImageMap, ImageMap]]
    figures: list[tuple[str, Any, Any]] = field(repr=False)

    def to_html(self, include_plotlyjs: bool | str = False, height: int = 360) -> str:
        """An HTML fragment: a heading, a note and per query the two figures side by side.

        Args:
            include_plotlyjs: ``False`` when the page already loads plotly.js (the demo report's first figure does),
                ``True`` to inline it, ``"cdn"`` to link it.
        """
        parts = [f"<h2>Looking at the image (layer {self.layer})</h2>",
                 ("<p class='note'>For each image query: the attention of the query's delimiter to each image "
                 "patch (mean over heads), and the logit lens on each patch: the probability of the label's first "
                 "token(s), hover for the top-1 decoded token.</p>")]
        first = include_plotlyjs
        for title, attention_fig, lens_fig in self.figures:
            cells = []
            for fig in (attention_fig, lens_fig):
                fig.update_layout(height=height, width=None, autosize=True, margin={"l": 40, "r": 20, "t": 60,
                                                                                     "b": 30})
                cells.append("<div class='figure' style='flex:1;min-width:280px'>" + fig.to_html(
                    full_html=False, include_plotlyjs=first, default_width="100%", default_height=f"{height}px",
                    config={"responsive": True, "displaylogo": False}) + "</div>")
                first = False
            parts.append(f"<h3>{html.escape(title)}</h3><div style='display:flex;gap:1em;flex-wrap:wrap'>"
                         + "".join(cells) + "</div>")
        return "\n".join(parts)


def image_maps_section(model, queries: Sequence[Any], layer: int, words: str = "label", k: int = 3,
                       max_queries: int = 3) -> ImageSection:
    """Attention and lens maps at ``layer`` for a few image queries, drawn over their images.

    Args:
        model: a multimodal :class:`~tv_lens.HookedMultimodalModel` with eager attention.
        queries: :class:`~tv_lens.prompts.Prompt` s with an image (e.g. ``tvl.prompts.queries(task.test,
            modality="image")``); the first ``max_queries`` are used.
        layer: the layer to draw (e.g. the layer a sweep selected).
        words: whose probability the lens maps: ``"label"`` (the answer) or ``"query_input"`` (what the image
            shows, e.g. the country).

    Raises:
        InputError: no queries, a query without an image or without the chosen words.
    """
    if words not in WORDS:
        raise InputError(f"words={words!r}: use one of {WORDS}.")
    chosen = list(queries)[:max_queries]
    if not chosen:
        raise InputError("No image queries to map.")
    rows, figures = [], []
    for query in chosen:
        word = getattr(query, words, None)
        if not getattr(query, "images", None) or not word:
            raise InputError(f"Each query needs an image and a {words}; got {query!r}.")
        attention = attention_map(model, query, layers=[layer])
        lens = lens_map(model, query, words=[word], layers=[layer], k=k)
        title = f"{query.query_input or ''} → {query.label or ''}".strip(" →")
        rows.append((title, attention, lens))
        figures.append((title, image_map(attention, title=f"{title}: attention from the delimiter"),
                        image_map(lens, title=f"{title}: lens p({word})")))
    return ImageSection(layer, rows, figures)


__all__ = ["ImageSection", "image_maps_section"]
