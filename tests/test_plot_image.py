"""Maps drawn over their image (tv_lens.plot_image, re-exported as tvl.plot.image_map)."""

from __future__ import annotations

import html
import json
import math
import shutil
import subprocess

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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('load', () => setTimeout(() => {
  const gd = document.querySelector('.plotly-graph-div');
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const background = gd.querySelector('.imagelayer image');
  const heat = gd.querySelector('.hm image');
  Plotly.Fx.hover(gd, {xval: XVAL, yval: YVAL});
  setTimeout(() => {
    const hover = gd.querySelector('.hovertext');
    const pre = document.createElement('pre'); pre.id = 'probe';
    pre.textContent = JSON.stringify({errors: window.__errors,
      background: background ? box(background) : null, href: background ? (background.getAttribute('xlink:href') || background.getAttribute('href') || '').slice(0, 22) : null,
      heat: heat ? box(heat) : null, hover: hover ? hover.textContent : null});
    document.body.appendChild(pre);
  }, 500);
}, 1000));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_overlay_in_headless_chromium_covers_the_image_and_hovers(tmp_path):
    """In a real browser: the picture is drawn under the heatmap, the heatmap covers exactly the picture (a 4×6
    Qwen2-VL grid over the whole image), and hovering a cell shows its token, value and decoded token."""
    model = tiny_model("qwen2_vl").hooked()
    prompt = prompts.query({"input": "x", "output": "y", "image": random_image(48, 32)}, modality="image")
    lmap = image_maps.lens_map(model, prompt, words=["y"])
    fig = tvl.plot.image_map(lmap, layer=2)
    path = tmp_path / "overlay.html"
    patches = lmap.geometry.patches
    cell = patches[(patches["row"] == 3) & (patches["col"] == 2)].iloc[0]
    probe = PROBE.replace("XVAL", str((cell["x0"] + cell["x1"]) / 2)).replace("YVAL", str((cell["y0"] + cell["y1"]) / 2))
    path.write_text(fig.to_html(include_plotlyjs=True).replace("<head>", "<head>" + probe, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
           "--window-size=900,700", "--dump-dom", path.as_uri()]
    dom = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120).stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    state = json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))
    assert state["errors"] == []
    assert state["href"] == "data:image/png;base64,"
    assert state["background"] and state["heat"]
    for edge_background, edge_heat in zip(state["background"], state["heat"]):
        assert abs(edge_background - edge_heat) < 1.5          # the grid covers the whole picture, pixel-aligned
    token = int(cell["token"])
    decoded = lmap.decoded[2][patches["token"].tolist().index(token)]
    assert f"token {token} (image row 3, col 2)" in state["hover"] and repr(decoded) in state["hover"]
    assert "value " in state["hover"]
