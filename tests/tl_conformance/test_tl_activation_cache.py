"""ActivationCache analysis methods at batch > 1 on EVERY family, and direct logit attribution that adds up: the
attributions of a full decomposition sum to the logit difference (TL: after fold_ln; ours: the norm's weight is
applied by the cache, since our weights are the checkpoint's)."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import two_prompts

import tv_lens as tvl
from tv_lens.errors import UnsupportedModelError

FAMILIES = ["llama", "gpt2", "mistral", "qwen2", "gemma3_text", "llava", "llava_next", "idefics2", "idefics3",
            "qwen2_vl", "fuyu", "gemma3"]


def _hooked(family: str):
    torch.manual_seed(0)
    module = {"llama": "causal_lm", "gpt2": "causal_lm", "mistral": "causal_lm", "qwen2": "causal_lm",
              "gemma3_text": "gemma3", "idefics3": "idefics3"}.get(family, family)
    made = getattr(importlib.import_module(f"tv_lens.testing.{module}"), f"build_{family}")()
    made.model.eval()
    with torch.no_grad():
        for name, param in made.model.named_parameters():
            if "norm" in name or ".ln_" in name or "layernorm" in name:
                param.add_(0.3 * torch.randn_like(param))
    processor = getattr(made, "processor", None)
    return made, tvl.HookedMultimodalModel.from_hf(made.model, processor=processor,
                                                   tokenizer=None if processor is not None else made.tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_dla_over_a_full_decomposition_sums_to_the_logit_difference(family):
    made, model = _hooked(family)
    inputs, _ = two_prompts(made, model)
    logits, cache = model.run_with_cache(inputs, names_filter=lambda name: True)
    batch = logits.shape[0]
    assert batch == 2
    right, wrong = torch.tensor([5, 7]), torch.tensor([9, 3])
    rows = torch.arange(batch)
    direction = model.W_U[:, right] - model.W_U[:, wrong]                               # [d_model, batch]
    bias = model.ln_final.b.float() @ direction.float() + (model.b_U[right] - model.b_U[wrong]).float()
    target = (logits[rows, -1, right] - logits[rows, -1, wrong]).float() - bias
    stacks = [cache.decompose_resid(layer=-1, pos_slice=-1), cache.accumulated_resid(layer=-1, pos_slice=-1)[-1:]]
    if family.startswith("gemma3"):   # sandwich norms: head/neuron shares are not additive, and we say so
        with pytest.raises(UnsupportedModelError, match="decompose_resid"):
            cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, expand_neurons=False)
    else:
        stacks.append(cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, expand_neurons=False))
    for stack in stacks:
        attrs = cache.logit_attrs(stack, tokens=right, incorrect_tokens=wrong, pos_slice=-1)
        assert attrs.shape == (stack.shape[0], batch)
        torch.testing.assert_close(attrs.float().sum(0), target, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@torch.no_grad()
def test_every_analysis_method_runs_at_batch_two(family):
    made, model = _hooked(family)
    inputs, _ = two_prompts(made, model)
    _, cache = model.run_with_cache(inputs, names_filter=lambda name: True)
    n, d = model.cfg.n_layers, model.cfg.d_model
    pos = inputs["input_ids"].shape[1]
    for layer in (1, n):   # apply_ln at a middle layer needs blocks.{l}.ln1.hook_scale
        for method in ("accumulated_resid", "decompose_resid"):
            out = getattr(cache, method)(layer=layer, apply_ln=True)
            assert out.shape[1:] == (2, pos, d), (method, layer)
        heads = cache.stack_head_results(layer=layer, apply_ln=True)
        assert heads.shape == (layer * model.cfg.n_heads, 2, pos, d)
    full = cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=True)
    assert full.shape[1:] == (2, pos, d)
    neurons = cache.stack_neuron_results(layer=n, apply_ln=True)
    assert neurons.shape == (n * model.cfg.d_mlp, 2, pos, d)
    total = cache.decompose_resid(layer=n, apply_ln=True).sum(0)
    # the components' shares add up to the final norm's output without its bias
    torch.testing.assert_close(total, cache["ln_final.hook_normalized"] - model.ln_final.b, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_apply_slice_to_batch_dim_slices_every_entry(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:c\nA:d", "Q:e\nA:f"])   # no padding: GPT-2 used to cache a
    # [1, pos, d_model] hook_pos_embed here, which slicing the batch left whole
    _, cache = model.run_with_cache(tokens)
    one = cache.apply_slice_to_batch_dim(1)
    for name in cache.keys():
        assert torch.equal(one[name], cache[name][1]), name
    assert type(one) is type(cache)


@torch.no_grad()
def test_incl_bwd_caches_gradients_with_the_loss(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:abc\nA:b"])
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    assert loss.ndim == 0
    for layer in range(model.cfg.n_layers):
        grad = cache[f"blocks.{layer}.hook_resid_post_grad"]
        assert grad.shape == cache[f"blocks.{layer}.hook_resid_post"].shape and grad.abs().sum() > 0
