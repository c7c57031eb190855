"""The hooked core, for every family with a tiny builder: parity with HF, hooks, positions, generation, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import two_prompts

from tv_lens import HookedMultimodalModel
from tv_lens.errors import (HookNameError, IncompatibleArgumentsError, InputError, LayerOutOfRangeError,
                            PositionError, UnsupportedModelError)
from tv_lens.testing import TEXT_ONLY_FAMILIES, available_families, random_image, tiny_model

FAMILIES = available_families()
VLM_FAMILIES = [f for f in FAMILIES if f not in TEXT_ONLY_FAMILIES]


def _build(name):
    tiny = tiny_model(name)
    return name, tiny, tiny.hooked()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return _build(request.param)


@pytest.fixture(scope="module", params=VLM_FAMILIES)
def vlm_family(request):
    return _build(request.param)


def _batch(family):
    _, tiny, hooked = family
    return two_prompts(tiny, hooked)[0]


@torch.no_grad()
def test_no_hook_logits_equal_hf(family):
    _, tiny, hooked = family
    inputs = _batch(family)
    ref = tiny.model(**inputs, use_cache=False).logits
    assert hooked._torch_handles == {}
    assert torch.allclose(hooked(inputs), ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_cached_resid_post_equals_hf_hidden_states(family):
    _, tiny, hooked = family
    inputs = _batch(family)
    ref = tiny.model(**inputs, output_hidden_states=True, use_cache=False)
    logits, cache = hooked.run_with_cache(inputs)
    n = hooked.cfg.n_layers
    assert (logits - ref.logits).abs().max() <= 1e-5
    assert len(ref.hidden_states) == n + 1
    embed = cache["hook_embed"] + (cache["hook_pos_embed"] if "hook_pos_embed" in cache else 0)
    torch.testing.assert_close(embed, ref.hidden_states[0], atol=1e-6, rtol=0)
    for layer in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], ref.hidden_states[layer + 1],
                                   atol=1e-6, rtol=0)
    # transformers stores the FINAL hidden state after the final norm.
    torch.testing.assert_close(cache["ln_final.hook_normalized"], ref.hidden_states[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(hooked.unembed(hooked.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"])), ref.logits,
                               atol=1e-4, rtol=1e-4)
    assert hooked._torch_handles == {}, "caching hooks must be gone after the run"


@torch.no_grad()
def test_residual_decomposition(family):
    _, _, hooked = family
    _, cache = hooked.run_with_cache(_batch(family), names_filter="blocks.1.*")
    pre, post = cache["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_post"]
    torch.testing.assert_close(pre + cache["blocks.1.hook_attn_out"] + cache["blocks.1.hook_mlp_out"], post,
                               atol=1e-5, rtol=1e-5)
    if hooked.adapter.has_resid_mid:
        torch.testing.assert_close(pre + cache["blocks.1.hook_attn_out"], cache["blocks.1.hook_resid_mid"],
                                   atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("site", ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                  "hook_mlp_out"])
def test_replace_hook_changes_exactly_downstream_positions(family, site):
    _, _, hooked = family
    inputs = _batch(family)
    if site == "hook_resid_mid" and not hooked.adapter.has_resid_mid:
        with pytest.raises(HookNameError):
            hooked.run_with_hooks(inputs, fwd_hooks=[(f"blocks.1.{site}", lambda x, hook: x)])
        return
    clean = hooked(inputs)
    seq = clean.shape[1]
    pos = seq - 4

    def replace(resid, hook):
        resid = resid.clone()
        resid[:, pos] = torch.randn_like(resid[:, pos]) * 5
        return resid

    patched = hooked.run_with_hooks(inputs, fwd_hooks=[(f"blocks.1.{site}", replace)])
    changed = (patched - clean).abs().amax(dim=2) > 1e-6
    real = inputs["attention_mask"].bool()  # left-pad positions attend everywhere; only real tokens count
    assert not (changed[:, :pos] & real[:, :pos]).any(), "positions before the patch must not change"
    assert changed[:, pos:].all(), "the patched position and every later one must change"
    assert hooked._torch_handles == {}


@torch.no_grad()
def test_image_positions_one_and_two_images(vlm_family):
    _, tiny, hooked = vlm_family
    assert hooked.image_placeholder is not None and hooked.cfg.is_multimodal
    n_images = (1, 2)
    limit = hooked.adapter.max_images_per_prompt
    if limit is not None and limit < 2:
        # Fuyu: its processor lays out one image, before the text; a second one must be refused, clearly.
        w, h = tiny.image_size
        ph = hooked.image_placeholder
        with pytest.raises(InputError, match="at most 1 image"):
            hooked.prepare([ph + ph + "Q:\nA:"], images=[random_image(w, h), random_image(w, h, seed=1)])
        n_images = (1, 1)
    inputs, images = two_prompts(tiny, hooked, n_images=n_images)
    pos = hooked.positions(inputs)
    assert [len(row) for row in pos.images] == list(n_images)
    image_id = hooked.cfg.image_token_id
    for r, row in enumerate(pos.images):
        flat = torch.cat(row)
        assert (inputs["input_ids"][r, flat] == image_id).all()
        assert int((inputs["input_ids"][r] == image_id).sum()) == flat.numel()
        assert all(int(a.max()) < int(b.min()) for a, b in zip(row, row[1:])), "spans in order"
    assert int(pos.last[0]) == inputs["input_ids"].shape[1] - 1
    # The image features land exactly on the image spans: zeroing them changes hook_embed there and nowhere else.
    expected = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for r, row in enumerate(pos.images):
        expected[r, torch.cat(row)] = True
    _, clean = hooked.run_with_cache(inputs, names_filter="hook_embed")
    _, zeroed = hooked.run_with_cache(inputs, names_filter="hook_embed",
                                      fwd_hooks=[("hook_image_features", lambda feats, hook: feats * 0)])
    changed = (clean["hook_embed"] - zeroed["hook_embed"]).abs().amax(-1) > 0
    assert not (changed & ~expected).any(), "only image tokens may carry image features"
    # (LLaVA-NeXT's learned row-end tokens sit inside the spans but do not come from the projector.)
    assert changed.sum() >= 0.5 * expected.sum()


@torch.no_grad()
def test_positions_filter_keeps_only_requested(family):
    _, _, hooked = family
    inputs = _batch(family)
    _, full = hooked.run_with_cache(inputs, names_filter="blocks.*.hook_resid_post")
    _, last = hooked.run_with_cache(inputs, names_filter="blocks.*.hook_resid_post", positions="last")
    _, some = hooked.run_with_cache(inputs, names_filter="blocks.0.hook_resid_post", positions=[-1, -3])
    for name in full.keys():
        assert last[name].shape == (2, 1, hooked.cfg.d_model)   # a one-position cache keeps its position axis
        torch.testing.assert_close(last[name], full[name][:, -1:])
    assert some["blocks.0.hook_resid_post"].shape == (2, 2, hooked.cfg.d_model)
    torch.testing.assert_close(some["blocks.0.hook_resid_post"][:, 1], full["blocks.0.hook_resid_post"][:, -3])


@torch.no_grad()
def test_stop_at_layer_runs_no_later_layer(family):
    _, _, hooked = family
    inputs = _batch(family)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
               for i, layer in enumerate(hooked._mods.layers)]
    try:
        resid, cache = hooked.run_with_cache(inputs, names_filter="blocks.*.hook_resid_post", stop_at_layer=2)
    finally:
        for h in handles:
            h.remove()
    # TransformerLens: the residual entering block 2 (= block 1's output)
    torch.testing.assert_close(resid, cache["blocks.1.hook_resid_post"])
    assert ran == [0, 1]
    assert sorted(cache.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    with pytest.raises(IncompatibleArgumentsError):
        hooked.run_with_cache(inputs, names_filter="blocks.2.hook_resid_post", stop_at_layer=2)


@torch.no_grad()
def test_generate_with_patch_matches_full_prefix_recompute(family):
    _, _, hooked = family
    inputs = _batch(family)
    torch.manual_seed(0)
    direction = torch.randn(hooked.cfg.d_model) * 3
    pos = inputs["input_ids"].shape[1] - 2

    def patch(resid, hook):
        resid = resid.clone()
        resid[:, pos] = direction
        return resid

    fast = hooked.generate(inputs, max_new_tokens=4, fwd_hooks=[("blocks.1.hook_resid_post", patch)],
                           return_new_tokens_only=True, hooks_on="prompt")
    # The paper's loop: no KV cache, the whole (patched) prefix re-run for every new token.
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    slow = []
    eos, pad = hooked.hf_model.generation_config.eos_token_id, hooked.tokenizer.pad_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(4):
        step_inputs = {"input_ids": ids, "attention_mask": mask, **extra}
        logits = hooked.run_with_hooks(step_inputs, fwd_hooks=[("blocks.1.hook_resid_post", patch)])
        nxt = torch.where(done, pad, logits[:, -1].argmax(-1))  # finished rows are padded, as generate does
        done |= torch.isin(nxt, torch.tensor(sorted(eos), dtype=nxt.dtype))
        slow.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
    assert torch.equal(fast, torch.stack(slow, dim=1))
    unpatched = hooked.generate(inputs, max_new_tokens=4, return_new_tokens_only=True)
    assert hooked._torch_handles == {}
    assert unpatched.shape == fast.shape


def test_hooks_removed_after_exception_in_hook(family):
    _, _, hooked = family
    inputs = _batch(family)

    def boom(resid, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hooked.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    assert hooked._torch_handles == {}
    assert all(not hp.fwd_hooks for hp in hooked.hook_dict.values())
    with pytest.raises(RuntimeError):
        with hooked.hooks([("blocks.0.hook_attn_out", boom)]):
            hooked(inputs)
    assert hooked._torch_handles == {}


def test_bad_input_errors(family):
    _, tiny, hooked = family
    inputs = _batch(family)
    with pytest.raises(HookNameError, match="blocks.0.hook_resid_post"):
        hooked.run_with_cache(inputs, names_filter="blocks.0.hook_resid_pots")
    with pytest.raises(LayerOutOfRangeError):
        hooked.layer_index(hooked.cfg.n_layers)
    with pytest.raises(LayerOutOfRangeError):
        hooked.run_with_cache(inputs, stop_at_layer=hooked.cfg.n_layers + 1)
    with pytest.raises(PositionError):
        hooked.run_with_cache(inputs, positions=inputs["input_ids"].shape[1])
    with pytest.raises(PositionError):
        hooked.run_with_cache(inputs, positions="nowhere")
    if hooked.image_placeholder is not None:
        w, h = tiny.image_size
        with pytest.raises(InputError, match="placeholder"):
            hooked.prepare([f"Q:{hooked.image_placeholder}\nA:"], images=[random_image(w, h), random_image(w, h)])


def test_unsupported_model_lists_families():
    with pytest.raises(UnsupportedModelError, match="causal_lm"):
        HookedMultimodalModel.from_hf(torch.nn.Linear(2, 2))


@torch.no_grad()
def test_from_pretrained_local_folder(tmp_path):
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    hooked = HookedMultimodalModel.from_pretrained(str(tmp_path), dtype="float32")
    inputs = hooked.prepare(["Q:a\nA:"])
    torch.testing.assert_close(hooked(inputs), tiny.model(**inputs).logits)
    assert hooked.cfg.model_name == str(tmp_path)


def test_inputs_without_data_are_refused(family):
    _, _, hooked = family
    inputs = _batch(family)
    meta = {k: (v.to("meta") if k == "attention_mask" else v) for k, v in inputs.items()}
    with pytest.raises(InputError, match="meta device"):
        hooked(meta)
