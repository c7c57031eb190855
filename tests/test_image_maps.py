"""Per-patch image maps (tv_lens.image_maps): every value equals what the cache holds at those indices."""

from __future__ import annotations

import pytest
import torch

from tv_lens import hooks, image_maps, patching, prompts
from tv_lens.errors import ImageLayoutError, IncompatibleArgumentsError, InputError
from tv_lens.testing import random_image, tiny_model

FAMILIES = ["llava", "idefics3", "qwen2_vl"]


def _model(family):
    kw = {"do_image_splitting": True} if family == "idefics3" else {}
    return tiny_model(family, **kw).hooked()


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return _model(request.param)


def _prompt(seed: int = 0, size=(48, 32)):
    item = {"input": "cat", "output": "cat", "image": random_image(*size, seed=seed)}
    demo = {"input": "dog", "output": "dog", "image": random_image(*size, seed=seed + 10)}
    return prompts.icl_prompt([demo], item, demo_modality="text", query_modality="image")


def test_attention_map_equals_the_cached_pattern(model):
    prompt = _prompt()
    amap = image_maps.attention_map(model, prompt)
    _, cache = model.run_with_cache(prompt)
    delimiter = int(model.positions(prompts.encode(model, [prompt])).named[0]["final_delimiter"][0])
    tokens = amap.geometry.patches["token"].tolist()
    assert amap.values.shape == (model.cfg.n_layers, len(tokens))
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        want = torch.stack([pattern[:, delimiter, t] for t in tokens], dim=-1).mean(0)
        torch.testing.assert_close(amap.at(layer), want.float())
    kept = image_maps.attention_map(model, prompt, heads=[1, 3], layers=[2], source="last")
    pattern = cache["blocks.2.attn.hook_pattern"][0]
    last = int(model.positions(prompts.encode(model, [prompt])).last[0])
    torch.testing.assert_close(kept.at(2, head=3), pattern[3, last, tokens].float())
    summed = image_maps.attention_map(model, prompt, heads="sum", layers=[0])
    torch.testing.assert_close(summed.at(0), cache["blocks.0.attn.hook_pattern"][0][:, delimiter, tokens].sum(0))


def test_lens_map_equals_the_lens_on_cached_residuals(model):
    prompt = _prompt()
    lmap = image_maps.lens_map(model, prompt, words=["c"], k=2)
    _, cache = model.run_with_cache(prompt)
    tokens = lmap.geometry.patches["token"].tolist()
    c_id = model.tokenizer.convert_tokens_to_ids("c")
    for layer in range(model.cfg.n_layers):
        resid = cache[f"blocks.{layer}.hook_resid_post"][0, tokens]
        probs = model.unembed(model.ln_final(resid)).float().softmax(-1)
        torch.testing.assert_close(lmap.at(layer), probs[:, c_id], rtol=1e-4, atol=1e-6)
        top1 = probs.argmax(-1).tolist()
        assert lmap.decoded[layer] == [model.tokenizer.decode([i]) for i in top1]
    frame = lmap.top_k
    assert len(frame) == model.cfg.n_layers * len(tokens) * 2 and set(frame["token"]) == set(tokens)
    tidy = lmap.to_frame()
    assert len(tidy) == model.cfg.n_layers * len(tokens)
    assert {"layer", "token", "row", "col", "view", "x0", "value", "decoded"} <= set(tidy.columns)


def test_patching_map_cell_equals_a_manual_patch():
    model = _model("llava")
    clean, corrupted = _prompt(seed=1), _prompt(seed=2)
    metric = patching.probability(model, "c")
    pmap, result = image_maps.patching_map(model, clean, corrupted, metric, layers=[1], progress=False)
    tokens = pmap.geometry.patches["token"].tolist()
    assert pmap.values.shape == (1, len(tokens))
    cell = 5
    _, clean_cache = model.run_with_cache(clean, names_filter="blocks.1.hook_resid_pre")
    value = clean_cache["blocks.1.hook_resid_pre"][0, tokens[cell]]
    patch = hooks.patch(value, at=tokens[cell])
    logits = model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_resid_pre", patch)])
    score = float(metric(logits[:, -1]))
    want = (score - result.corrupted_metric) / (result.clean_metric - result.corrupted_metric)
    assert float(pmap.at(1)[cell]) == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_attribution_patching_map_is_the_attribution_grid_over_the_patches():
    model = _model("idefics3")
    clean, corrupted = _prompt(seed=1), _prompt(seed=2)
    metric = patching.probability(model, "c")
    pmap, result = image_maps.patching_map(model, clean, corrupted, metric, method="attribution")
    tokens = pmap.geometry.patches["token"].tolist()
    assert result.method == "attribution" and [p.corrupted[0] for p in result.positions] == tokens
    torch.testing.assert_close(pmap.values, result.recovery[:, :, 0].float())
    with pytest.raises(InputError, match="method="):
        image_maps.patching_map(model, clean, corrupted, metric, method="gradient")


def test_patching_map_refuses_images_of_different_layouts():
    model = _model("qwen2_vl")
    with pytest.raises(InputError, match="same token layout"):
        image_maps.patching_map(model, _prompt(size=(48, 32)), _prompt(size=(64, 64)),
                                patching.probability(model, "c"), progress=False)


def test_task_vector_effect_changes_only_layers_after_the_patch(model):
    prompt = _prompt()
    vector = torch.randn(model.cfg.d_model) * 10
    effect = image_maps.task_vector_effect(model, prompt, vector, layer=0)
    torch.testing.assert_close(effect.before.values, image_maps.attention_map(model, prompt).values)
    assert torch.equal(effect.after.values[0], effect.before.values[0])     # layer 0 attends before the patch
    assert not torch.allclose(effect.after.values[1:], effect.before.values[1:])
    patch = hooks.patch(vector, at="query_delimiter")
    manual = image_maps.attention_map(model, prompt, fwd_hooks=[("blocks.0.hook_resid_post", patch)])
    torch.testing.assert_close(effect.after.values, manual.values)
    frame = effect.to_frame()
    assert set(frame["condition"]) == {"without patch", "with patch"}
    torch.testing.assert_close(effect.difference.values, effect.after.values - effect.before.values)


def test_task_vector_effect_refuses_patches_that_cannot_act():
    model = _model("llava")
    prompt = _prompt()
    with pytest.raises(IncompatibleArgumentsError, match="after every image token"):
        image_maps.task_vector_effect(model, prompt, torch.ones(model.cfg.d_model), layer=0, view="lens")
    with pytest.raises(IncompatibleArgumentsError, match="after the attending position"):
        image_maps.task_vector_effect(model, prompt, torch.ones(model.cfg.d_model), layer=0, at="last",
                                      source="delimiter[0]")
    effect = image_maps.task_vector_effect(model, prompt, torch.ones(model.cfg.d_model), layer=0, view="lens",
                                           at="image[-1]", mode="add", layers=[1, 2])
    assert not torch.allclose(effect.after.values, effect.before.values)


def test_bad_arguments_raise_typed_errors():
    model = _model("llava")
    prompt = _prompt()
    with pytest.raises(InputError, match="heads"):
        image_maps.attention_map(model, prompt, heads="max")
    with pytest.raises(InputError, match="heads"):
        image_maps.attention_map(model, prompt, heads=[99])
    with pytest.raises(IncompatibleArgumentsError, match="before the image"):
        image_maps.attention_map(model, prompt, source=0)
    with pytest.raises(InputError, match="image=3"):
        image_maps.attention_map(model, prompt, image=3)
    with pytest.raises(IncompatibleArgumentsError, match="view="):
        image_maps.task_vector_effect(model, prompt, torch.ones(model.cfg.d_model), layer=0, view="sideways")
    amap = image_maps.attention_map(model, prompt, layers=[1])
    with pytest.raises(InputError, match="not in this map"):
        amap.at(0)


def test_idefics2_maps_say_why_there_is_no_layout():
    model = tiny_model("idefics2").hooked()
    with pytest.raises(ImageLayoutError, match="perceiver"):
        image_maps.attention_map(model, "Q:<image>\nA:", images=[random_image(32, 32)], source="last")
