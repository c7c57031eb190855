"""Image-token geometry (tv_lens.image_geometry) against each family's own processor and model.

The decisive check: with the vision encoder's mixing layers removed, an image token's embedding depends only on the
pixels of its own patch(es), so comparing an image whose left (or top) half is black with an all-black image of the
same size tells which tokens the processor and model put over the black half. The geometry must say the same.
"""

from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image

from tv_lens.errors import ImageLayoutError, InputError
from tv_lens.image_geometry import image_geometry
from tv_lens.testing import random_image, tiny_model

SIZES = [(48, 32), (32, 48), (64, 64), (100, 30), (40, 56)]
SPATIAL = ["llava", "llava_next", "llava_onevision", "idefics3", "smolvlm", "fuyu", "qwen2_vl", "qwen2_5_vl",
           "gemma3"]
# the module lists holding each vision tower's mixing layers (attention across patches)
_MIXERS = ("vision_tower.vision_model.encoder.layers", "vision_tower.encoder.layers", "vision_model.encoder.layers", "visual.blocks")


def _local_vision(hf_model) -> None:
    """Make the vision transformer's layers identities (every Linear zeroed: attention and MLP add nothing to the
    residual), so every image token reads only its own patches."""
    for path in _MIXERS:
        layers = hf_model.model
        try:
            for part in path.split("."):
                layers = getattr(layers, part)
        except AttributeError:
            continue
        with torch.no_grad():
            for module in layers.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.zero_()
                    if module.bias is not None:
                        module.bias.zero_()


def _half_black(size: tuple[int, int], side: str) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, w // 2, h) if side == "left" else (0, 0, w, h // 2))
    return image


def _text(model) -> str:
    return (model.image_placeholder + "Q:\nA:") if model.adapter.images_first else ("Q:" + model.image_placeholder
                                                                                    + "\nA:")


@functools.cache
def _plain(family: str):
    kw = {"do_image_splitting": True} if family in ("idefics3", "smolvlm") else {}
    return tiny_model(family, **kw).hooked()


@pytest.fixture(scope="module", params=SPATIAL)
def local_model(request):
    kw = {"do_image_splitting": True} if request.param in ("idefics3", "smolvlm") else {}
    tiny = tiny_model(request.param, **kw)
    _local_vision(tiny.model)
    return tiny.hooked()


def _embeds(model, image) -> torch.Tensor:
    _, cache = model.run_with_cache(_text(model), images=[image], names_filter="hook_embed")
    return cache["hook_embed"][0]


def _check_pattern(model, geometry_fn, size, side: str) -> None:
    pattern, black = _half_black(size, side), Image.new("RGB", size, (0, 0, 0))
    (geometry,) = geometry_fn(model, _text(model), images=[pattern])
    distance = (_embeds(model, pattern) - _embeds(model, black)).norm(dim=-1)
    patches = geometry.patches
    w, h = size
    lo, hi = ("x0", "x1") if side == "left" else ("y0", "y1")
    half = (w if side == "left" else h) / 2
    inside, outside = patches[patches[hi] <= half], patches[patches[lo] >= half]
    assert len(inside) and len(outside), "the pattern should cover some tokens and miss others"
    d_in = distance[torch.tensor(inside["token"].tolist())]
    d_out = distance[torch.tensor(outside["token"].tolist())]
    assert float(d_in.max()) < float(d_out.min()), (
        f"{model.cfg.family} {size} {side} half black: tokens the geometry puts on the black half differ from an "
        f"all-black image by up to {float(d_in.max()):.3g}, tokens it puts on the white half by as little as "
        f"{float(d_out.min()):.3g}")


@pytest.mark.parametrize("size", SIZES)
def test_black_left_half_lands_where_the_geometry_says(local_model, size):
    _check_pattern(local_model, image_geometry, size, "left")


@pytest.mark.parametrize("size", [(48, 32), (32, 48)])
def test_black_top_half_lands_where_the_geometry_says(local_model, size):
    _check_pattern(local_model, image_geometry, size, "top")


def test_a_transposed_geometry_fails_the_pattern_check():
    """The pattern check can fail: the same geometry with rows and columns swapped does."""
    tiny = tiny_model("qwen2_vl")
    _local_vision(tiny.model)
    model = tiny.hooked()

    def transposed(*args, **kwargs):
        geometry = image_geometry(*args, **kwargs)
        for g in geometry:
            f = g.frame
            f[["x0", "y0", "x1", "y1"]] = f[["y0", "x0", "y1", "x1"]].to_numpy() * [1.5, 1 / 1.5, 1.5, 1 / 1.5]
        return geometry

    with pytest.raises(AssertionError):
        _check_pattern(model, transposed, (48, 32), "left")


@pytest.mark.parametrize("family", SPATIAL)
@pytest.mark.parametrize("size", SIZES)
def test_geometry_covers_exactly_the_image_span(family, size):
    model = _plain(family)
    inputs = model.prepare(_text(model), images=[random_image(*size)])
    (geometry,) = image_geometry(model, _text(model), images=[random_image(*size)])
    span = model.positions(inputs).images[0][0].tolist()
    ids = inputs["input_ids"][0]
    frame = geometry.frame
    assert frame["token"].is_monotonic_increasing
    in_span = frame[frame["token"].isin(span)]
    assert set(in_span["token"]) == set(span)
    # every token the geometry lists beyond image[j] is a newline token (Fuyu's |NEWLINE|)
    extra = frame[~frame["token"].isin(span)]
    assert (extra["kind"] == "newline").all()
    if family == "fuyu":
        newline_id = model.tokenizer.convert_tokens_to_ids("|NEWLINE|")
        assert ids[extra["token"].tolist()].eq(newline_id).all() and len(extra) == geometry.views[0].rows
    boxes = geometry.patches[["x0", "y0", "x1", "y1"]]
    assert (boxes["x0"] >= 0).all() and (boxes["x1"] <= size[0]).all() and (boxes["y1"] <= size[1]).all()
    assert (boxes["x1"] > boxes["x0"]).all() and (boxes["y1"] > boxes["y0"]).all()


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
@pytest.mark.parametrize("size", SIZES)
def test_anyres_newline_tokens_sit_where_the_model_writes_image_newline(family, size):
    """The model writes its learned ``image_newline`` vector at the end of each high-res row: exactly there."""
    model = _plain(family)
    image = random_image(*size)
    (geometry,) = image_geometry(model, _text(model), images=[image])
    embeds = _embeds(model, image)
    newline = model.hf_model.model.image_newline.detach()
    is_newline = (embeds - newline).abs().amax(-1) < 1e-6
    where = set(torch.nonzero(is_newline).flatten().tolist())
    frame = geometry.frame
    assert where == set(frame.loc[frame["kind"] == "newline", "token"])
    high = frame[frame["view"] == "high-res"]
    assert (high.groupby("row")["kind"].apply(list).map(lambda k: k[-1] == "newline")).all()


@pytest.mark.parametrize("size", SIZES)
def test_idefics3_tiles_follow_the_row_col_tags(size):
    model = _plain("idefics3")
    inputs = model.prepare(_text(model), images=[random_image(*size)])
    (geometry,) = image_geometry(model, _text(model), images=[random_image(*size)])
    tokens = model.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    for view, frame in geometry.patches.groupby("view"):
        tag = "<global-img>" if view == "global" else "<row_{}_col_{}>".format(*view.split()[1].split(","))
        first = int(frame["token"].min())
        assert tokens[first - 1] == tag
        assert len(frame) == 4 and frame["token"].tolist() == list(range(first, first + 4))
    n_tiles = len(geometry.views) - 1
    assert n_tiles == sum(t.startswith("<row_") for t in tokens)


@pytest.mark.parametrize("size", SIZES)
def test_qwen_grid_is_image_grid_thw_merged(size):
    model = _plain("qwen2_vl")
    inputs = model.prepare(_text(model), images=[random_image(*size)])
    (geometry,) = image_geometry(model, _text(model), images=[random_image(*size)])
    _, h, w = inputs["image_grid_thw"][0].tolist()
    assert (geometry.views[0].rows, geometry.views[0].cols) == (h // 2, w // 2)


def test_several_images_in_one_prompt_each_get_their_own_geometry():
    model = tiny_model("qwen2_vl").hooked()
    text = "Q:" + model.image_placeholder + "\nA:x\n\nQ:" + model.image_placeholder + "\nA:"
    images = [random_image(48, 32), random_image(32, 64)]
    first, second = image_geometry(model, text, images=images)
    assert (first.views[0].rows, first.views[0].cols) == (4, 6)
    assert (second.views[0].rows, second.views[0].cols) == (8, 4)
    assert first.frame["token"].max() < second.frame["token"].min()


def test_onevision_several_images_are_base_views_with_one_newline():
    model = tiny_model("llava_onevision").hooked()
    text = "Q:" + model.image_placeholder + "\nA:x\n\nQ:" + model.image_placeholder + "\nA:"
    first, second = image_geometry(model, text, images=[random_image(48, 32), random_image(32, 32)])
    for g in (first, second):
        assert [v.name for v in g.views] == ["base"]
        assert g.frame["kind"].tolist()[-1] == "newline" and (g.frame["kind"] == "newline").sum() == 1


def test_prompts_carry_their_images():
    from tv_lens.prompts import query

    model = tiny_model("gemma3").hooked()
    prompt = query({"input": "x", "output": "y", "image": random_image(48, 32)}, modality="image")
    (geometry,) = image_geometry(model, prompt)
    assert geometry.image_size == (48, 32) and len(geometry.patches) == 4


def test_idefics2_perceiver_latents_have_no_layout():
    model = tiny_model("idefics2").hooked()
    with pytest.raises(ImageLayoutError, match="perceiver"):
        image_geometry(model, "Q:<image>\nA:", images=[random_image(32, 32)])


def test_text_only_model_has_no_image_layout():
    model = tiny_model("llama").hooked()
    with pytest.raises(ImageLayoutError, match="reads no images"):
        image_geometry(model, "Q:x\nA:")


def test_text_inputs_need_their_images():
    model = tiny_model("llava").hooked()
    inputs = model.prepare("Q:<image>\nA:", images=[random_image(32, 32)])
    with pytest.raises(InputError, match="needs the images"):
        image_geometry(model, inputs)


def test_a_processor_that_disagrees_with_the_arithmetic_raises():
    model = tiny_model("gemma3").hooked()
    model.hf_model.config.mm_tokens_per_image = 9   # the processor still writes 4 tokens per image
    with pytest.raises(ImageLayoutError, match="processor wrote 4"):
        image_geometry(model, _text(model), images=[random_image(32, 32)])


def test_reference_vlm_black_left_half():
    from tv_lens import HookedMultimodalModel
    from tv_lens.reference import load_reference_vlm

    hf_model, processor = load_reference_vlm()
    _local_vision(hf_model)
    model = HookedMultimodalModel.from_hf(hf_model, processor=processor)
    (geometry,) = image_geometry(model, "Q:<image>\nA:", images=[random_image(320, 240)])
    assert (geometry.views[0].rows, geometry.views[0].cols) == (4, 4)
    assert geometry.patches[["x0", "y0", "x1", "y1"]].iloc[-1].tolist() == [240.0, 180.0, 320.0, 240.0]
    for size in [(320, 240), (64, 64)]:
        _check_pattern(model, image_geometry, size, "left")


def test_fuyu_geometry_on_the_processor_path_and_with_two_images():
    model = _plain("fuyu")
    (alone,) = image_geometry(model, "<image>Q:\nA:", images=[random_image(48, 32)])   # the HF processor's layout
    assert (alone.views[0].rows, alone.views[0].cols) == (3, 4) and alone.frame["token"].tolist() == list(range(15))
    text = "Q:<image>\nA:x\n\nQ:<image>\nA:"
    first, second = image_geometry(model, text, images=[random_image(48, 32), random_image(20, 64)])
    inputs = model.prepare(text, images=[random_image(48, 32), random_image(20, 64)])
    newline_id = model.tokenizer.convert_tokens_to_ids("|NEWLINE|")
    for g, shape in ((first, (3, 4)), (second, (4, 2))):
        assert (g.views[0].rows, g.views[0].cols) == shape
        newlines = g.frame.loc[g.frame["kind"] == "newline", "token"].tolist()
        assert inputs["input_ids"][0, newlines].eq(newline_id).all()
