"""Maps drawn over their image (tv_lens.plot_image, re-exported as tvl.plot.image_map)."""

from __future__ import annotations

import math

import pytest
import torch

import tv_lens as tvl
from tv_lens import image_maps, prompts
from tv_lens.errors import InputError, TaskError
from tv_lens.testing import random_image, tiny_model


@pytest.fixture(scope="module")
def lens_map():
    model = tiny_model("llava_next").hooked()
    prompt = prompts.query({"input": "x", "output": "y", "image": random_image(48, 32)}, modality="image")
    return image_maps.lens_map(model, prompt, words=["y"])


def test_cells_hold_each_tokens_value_at_its_box(lens_map):
    fig = tvl.plot.image_map(lens_map, layer=1)
    (heatmap,) = fig.data
    patches = lens_map.geometry.view("high-res")
    values = lens_map.at(1)[torch.tensor((lens_map.geometry.patches["view"] == "high-res").to_numpy())]
    xs, ys = list(heatmap.x), list(heatmap.y)
    assert len(xs) == patches["col"].max() + 2 and len(ys) == patches["row"].max() + 2
    for (_, row), value in zip(patches.iterrows(), values.tolist()):
        r, c = ys.index(row["y0"]), xs.index(row["x0"])
        assert heatmap.z[r][c] == pytest.approx(value)
        token, grid_row, grid_col, view, decoded = heatmap.customdata[r][c]
        assert (token, grid_row, grid_col, view) == (row["token"], row["row"], row["col"], "high-res")
        assert decoded == repr(lens_map.decoded[1][lens_map.geometry.patches["token"].tolist().index(token)])
    assert "token %{customdata[0]}" in heatmap.hovertemplate and "value %{z" in heatmap.hovertemplate
    assert 0 < heatmap.opacity < 1


def test_the_image_is_the_background_in_its_own_pixels(lens_map):
    fig = tvl.plot.image_map(lens_map, layer=0)
    (image,) = fig.layout.images
    assert (image.sizex, image.sizey, image.layer) == (48, 32, "below")
    assert image.source.startswith("data:image/png;base64,")
    assert tuple(fig.layout.yaxis.range) == (32, 0)          # image rows go down


def test_every_layer_gets_a_slider_step(lens_map):
    fig = tvl.plot.image_map(lens_map)
    assert len(fig.data) == len(lens_map.layers)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == [str(layer) for layer in lens_map.layers]
    assert sum(trace.visible for trace in fig.data) == 1
    lows = {trace.zmin for trace in fig.data}
    assert len(lows) == 1 and not math.isnan(lows.pop())    # one colour range across layers


def test_views_are_drawn_one_at_a_time(lens_map):
    base = tvl.plot.image_map(lens_map, layer=0, view="base")
    assert base.data[0].z.shape == (4, 4)
    with pytest.raises(InputError, match="No view"):
        tvl.plot.image_map(lens_map, view="global")


def test_tiles_form_one_grid_over_the_image():
    model = tiny_model("idefics3", do_image_splitting=True).hooked()
    prompt = prompts.query({"input": "x", "output": "y", "image": random_image(48, 32)}, modality="image")
    amap = image_maps.attention_map(model, prompt, source="last")
    fig = tvl.plot.image_map(amap, layer=2)
    assert fig.data[0].z.shape == (4, 4) and not any(math.isnan(v) for row in fig.data[0].z for v in row)
    assert tvl.plot.image_map(amap, layer=2, view="global").data[0].z.shape == (2, 2)


def test_side_by_side_maps(lens_map):
    fig = tvl.plot.image_maps_row([lens_map, lens_map], layer=1, titles=["a", "b"])
    assert len(fig.data) == 2 and len(fig.layout.images) == 2


def test_bad_inputs_raise(lens_map):
    with pytest.raises(InputError, match="ImageMap"):
        tvl.plot.image_map({"values": 1})
    with pytest.raises(InputError, match="not in this map"):
        tvl.plot.image_map(lens_map, layer=99)
    with pytest.raises(TaskError):
        tvl.plot.image_maps_row([], layer=0)
