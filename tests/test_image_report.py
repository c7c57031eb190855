"""The report section of image maps (tv_lens.image_report) for a few image queries."""

from __future__ import annotations

import pytest
import torch

from tv_lens import image_maps, prompts
from tv_lens.errors import InputError
from tv_lens.image_report import image_maps_section
from tv_lens.testing import random_image, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava").hooked()


def _queries(n: int):
    items = [{"input": f"c{i}", "output": f"a{i}", "image": random_image(32, 32, seed=i)} for i in range(n)]
    return prompts.queries(items, modality="image")


def test_section_has_both_maps_at_the_layer_for_each_query(model):
    queries = _queries(4)
    section = image_maps_section(model, queries, layer=1, max_queries=2)
    assert [title for title, _, _ in section.rows] == ["c0 → a0", "c1 → a1"]
    for query, (_, attention, lens) in zip(queries, section.rows):
        assert attention.layers == [1] and lens.layers == [1]
        torch.testing.assert_close(attention.values, image_maps.attention_map(model, query, layers=[1]).values)
        assert lens.what == f"p({query.label})"
    fragment = section.to_html()
    assert fragment.startswith("<h2>Looking at the image (layer 1)</h2>")
    assert fragment.count("class='figure'") == 4 and "<html" not in fragment
    assert "plotly.js v" not in fragment and "cdn.plot.ly" not in section.to_html(include_plotlyjs=False)
    assert "c1 → a1" in fragment


def test_section_refuses_what_it_cannot_map(model):
    with pytest.raises(InputError, match="No image queries"):
        image_maps_section(model, [], layer=0)
    with pytest.raises(InputError, match="words="):
        image_maps_section(model, _queries(1), layer=0, words="answer")
    text_query = prompts.query({"input": "x", "output": "y"}, modality="text")
    with pytest.raises(InputError, match="needs an image"):
        image_maps_section(model, [text_query], layer=0)
