"""Hook points and hook names (TL's test_hooks.py, test_cache_hook_names.py, test_hook_tokens.py,
test_use_attn_result.py, test_split_qkv.py): the names TL users reach for exist, at TL's shapes, and the switches
either work or refuse with a typed error naming the hook points that do the job."""

from __future__ import annotations

import pytest
import torch

from tv_lens.errors import UnsupportedModelError

PER_BLOCK = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
             "attn.hook_v", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale",
             "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


@torch.no_grad()
def test_tl_hook_names_exist_with_tl_shapes(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:abc\nA:b"])
    batch, pos = tokens.shape
    _, cache = model.run_with_cache(tokens)
    assert "hook_tokens" not in cache.keys()   # TL caches it only with cfg.use_hook_tokens
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    d, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    assert torch.equal(cache["hook_tokens"], tokens)
    assert cache["hook_embed"].shape == (batch, pos, d)
    if model.cfg.positional_embedding_type == "standard":
        assert cache["hook_pos_embed"].shape == (batch, pos, d)   # batch-shaped, as in TL
    for layer in range(model.cfg.n_layers):
        for suffix in PER_BLOCK:
            assert f"blocks.{layer}.{suffix}" in cache.keys(), suffix
        assert cache[f"blocks.{layer}.ln1.hook_scale"].shape == (batch, pos, 1)
        assert cache[f"blocks.{layer}.mlp.hook_pre"].shape == (batch, pos, d_mlp)
    assert cache["resid_pre", 0].shape == (batch, pos, d)   # TL's short names
    assert cache["scale", 1, "ln1"].shape == (batch, pos, 1)


@torch.no_grad()
def test_ln1_hook_normalized_is_the_norm_output_and_patching_it_changes_the_output(model):
    tokens = model.to_tokens("Q:ab\nA:c")
    _, cache = model.run_with_cache(tokens)
    resid = cache["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"], model.blocks[1].ln1(resid))
    clean = model(tokens)
    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.ln1.hook_normalized", lambda x, hook: x * 0)])
    assert (patched - clean).abs().max() > 1e-3


@torch.no_grad()
def test_hook_tokens_can_replace_the_tokens(model):
    tokens = model.to_tokens("Q:ab\nA:c")
    other = model.to_tokens("Q:cd\nA:a")
    swapped = model.run_with_hooks(tokens, fwd_hooks=[("hook_tokens", lambda t, hook: other)])
    torch.testing.assert_close(swapped, model(other))


@torch.no_grad()
def test_mlp_in_is_the_mlp_blocks_input(fresh):
    tokens = fresh.to_tokens("Q:ab\nA:c")
    _, default = fresh.run_with_cache(tokens)
    assert "blocks.0.hook_mlp_in" not in default.keys()
    fresh.set_use_hook_mlp_in(True)
    _, cache = fresh.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.0.hook_mlp_in"], cache["blocks.0.hook_resid_mid"])


@torch.no_grad()
def test_set_use_attn_result_caches_each_heads_output(fresh):
    tokens = fresh.to_tokens("Q:ab\nA:c")
    _, before = fresh.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in before.keys()
    fresh.set_use_attn_result(True)
    _, cache = fresh.run_with_cache(tokens)
    result = cache["blocks.0.attn.hook_result"]
    torch.testing.assert_close(result.sum(-2) + fresh.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switch", ["set_use_split_qkv_input", "set_use_attn_in"])
def test_per_head_input_switches_refuse_naming_the_alternative(model, switch):
    getattr(model, switch)(False)   # the default is fine
    with pytest.raises(UnsupportedModelError, match="hook_q"):
        getattr(model, switch)(True)


@torch.no_grad()
def test_pos_slice_in_run_with_cache(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:abc\nA:b"])
    _, full = model.run_with_cache(tokens)
    for pos_slice in (0, -1, 3):
        _, cache = model.run_with_cache(tokens, pos_slice=pos_slice)
        for name in ("hook_embed", "blocks.0.hook_resid_post", "blocks.1.attn.hook_q"):
            assert cache[name].shape[1] == 1
            torch.testing.assert_close(cache[name][:, 0], full[name][:, pos_slice])
    _, cache = model.run_with_cache(tokens, pos_slice=(1, 4))
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"][:, 1:4])
