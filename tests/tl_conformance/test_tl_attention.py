"""``blocks.{l}.attn.hook_attn_scores`` and a writable ``blocks.{l}.attn.hook_pattern`` (TransformerLens semantics),
served by tv_lens's hooked eager attention registered with transformers' ``AttentionInterface``: the scores
softmax to the pattern, a hook on either changes the output exactly as a manual computation from the cached
values says, and with no such hook the forward pass is HF's own."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import two_prompts

import tv_lens as tvl
from tv_lens.errors import UnsupportedModelError
from tv_lens.testing import available_families, tiny_model

from .conftest import tiny

TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52, 53, 54, 55, 56]])
LAYER = 1


def _scores_and_pattern(model, layer=LAYER):
    names = [f"blocks.{layer}.attn.hook_attn_scores", f"blocks.{layer}.attn.hook_pattern",
             f"blocks.{layer}.attn.hook_v"]
    _, cache = model.run_with_cache(TOKENS, names_filter=names)
    return [cache[n] for n in names]


def _z_from(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Manual attention output ``[batch, q, head, d_head]`` from a pattern ``[batch, head, q, k]`` and the values
    ``[batch, k, kv_head, d_head]`` (grouped-query values repeated per head)."""
    v = v.repeat_interleave(pattern.shape[1] // v.shape[2], dim=2)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


def _run_with_z(model, z: torch.Tensor, layer=LAYER) -> torch.Tensor:
    return model.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", lambda x, hook: z)])


@torch.no_grad()
def test_scores_softmax_to_the_pattern_and_are_causally_masked(model):
    scores, pattern, _ = _scores_and_pattern(model)
    assert scores.shape == pattern.shape == (2, model.cfg.n_heads, TOKENS.shape[1], TOKENS.shape[1])
    torch.testing.assert_close(scores.softmax(-1), pattern, atol=1e-6, rtol=0)
    future = torch.ones(TOKENS.shape[1], TOKENS.shape[1], dtype=torch.bool).triu(1)
    assert (scores[..., future] == float("-inf")).all(), "masked keys are -inf, as in TransformerLens"
    assert torch.isfinite(scores[..., ~future]).all()
    assert (pattern[..., future] == 0).all()


@torch.no_grad()
def test_zeroing_the_score_of_a_key_changes_logits_as_computed_by_hand(model):
    scores, _, v = _scores_and_pattern(model)
    clean = model(TOKENS)

    def zero_bos(x, hook):
        x = x.clone()
        x[..., 0] = 0.0   # key 0 (BOS) is visible to every query
        return x

    hooked = model.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.{LAYER}.attn.hook_attn_scores", zero_bos)])
    manual_scores = scores.clone()
    manual_scores[..., 0] = 0.0
    by_hand = _run_with_z(model, _z_from(manual_scores.softmax(-1), v))
    torch.testing.assert_close(hooked, by_hand, atol=1e-5, rtol=1e-5)
    assert (hooked - clean).abs().max() > 1e-3
    assert model._torch_handles == {}


@torch.no_grad()
def test_writing_a_uniform_pattern_changes_the_output_as_computed_by_hand(model):
    _, pattern, v = _scores_and_pattern(model)
    n = TOKENS.shape[1]
    uniform = torch.ones(n, n).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand_as(pattern).contiguous()
    clean = model(TOKENS)
    written = model.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.{LAYER}.attn.hook_pattern",
                                                       lambda x, hook: uniform)])
    torch.testing.assert_close(written, _run_with_z(model, _z_from(uniform, v)), atol=1e-5, rtol=1e-5)
    assert (written - clean).abs().max() > 1e-3
    # a pattern hook that returns its input changes nothing
    same = model.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.{LAYER}.attn.hook_pattern", lambda x, hook: x)])
    assert torch.equal(same, clean)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@torch.no_grad()
def test_without_score_or_pattern_hooks_the_forward_is_hf_eager(kind):
    made = tiny(kind)
    reference = copy.deepcopy(made.model)
    model = tvl.HookedMultimodalModel.from_hf(made.model, tokenizer=made.tokenizer)
    before = model(TOKENS)
    torch.testing.assert_close(before, reference(TOKENS).logits, atol=1e-5, rtol=1e-5)
    if kind == "llama":
        assert torch.equal(before, reference(TOKENS).logits)
    logits, _ = model.run_with_cache(TOKENS, names_filter="blocks.*.attn.hook_attn_scores")
    assert torch.equal(logits, before), "identity score hooks leave the numbers bit-identical"
    assert model.hf_model.config._attn_implementation == "eager" and model._torch_handles == {}
    assert torch.equal(model(TOKENS), before)


@torch.no_grad()
def test_attention_that_bypasses_the_interface_raises_and_cleans_up(fresh):
    """A module that does not call the registered attention function (simulated by switching the config back to
    HF's eager while the hook is attached) makes the hook raise instead of silently not firing."""
    config = fresh.hf_model.config

    def bypass(x, hook):   # fires in layer 0, then later layers run HF's own eager attention
        config._attn_implementation = "eager"
        return x

    with pytest.raises(UnsupportedModelError, match="AttentionInterface"):
        fresh.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_attn_scores", bypass),
                                                (f"blocks.{LAYER}.attn.hook_attn_scores", lambda x, hook: x)])
    assert fresh._torch_handles == {} and config._attn_implementation == "eager"


@torch.no_grad()
def test_sdpa_models_refuse_score_hooks(fresh):
    fresh.hf_model.set_attn_implementation("sdpa")
    with pytest.raises(tvl.errors.IncompatibleArgumentsError, match='attn_implementation="eager"'):
        fresh.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_attn_scores")
    assert fresh._torch_handles == {}


@torch.no_grad()
def test_scores_and_pattern_agree_with_transformer_bridge(pair):
    tl, ours = pair
    _, tl_cache = tl.run_with_cache(TOKENS)
    _, our_cache = ours.run_with_cache(TOKENS, names_filter="blocks.*.attn.hook_*")
    future = torch.ones(TOKENS.shape[1], TOKENS.shape[1], dtype=torch.bool).triu(1)
    for layer in range(ours.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_attn_scores"
        assert name in tl_cache
        torch.testing.assert_close(our_cache[name][..., ~future], tl_cache[name][..., ~future], atol=1e-4, rtol=1e-4)
        assert (our_cache[name][..., future] == float("-inf")).all()
        torch.testing.assert_close(our_cache[f"blocks.{layer}.attn.hook_pattern"],
                                   tl_cache[f"blocks.{layer}.attn.hook_pattern"], atol=1e-5, rtol=1e-5)


VLM_FAMILIES = [f for f in ("llava", "idefics3", "qwen2_vl", "gemma3") if f in available_families()]


@pytest.mark.parametrize("family", VLM_FAMILIES)
@torch.no_grad()
def test_vlm_scores_and_written_pattern_with_images(family):
    """Image prompts (Gemma 3: bidirectional image attention, M-RoPE in Qwen2-VL): the scores softmax to the
    pattern, identity hooks leave the logits bit-identical, a written pattern changes them."""
    made = tiny_model(family)
    hooked = made.hooked()
    inputs, _ = two_prompts(made, hooked, n_images=(1, 1))
    clean = hooked(inputs)
    names = [f"blocks.{layer}.attn.hook_{kind}" for layer in range(hooked.cfg.n_layers)
             for kind in ("attn_scores", "pattern")]
    logits, cache = hooked.run_with_cache(inputs, names_filter=names)
    assert torch.equal(logits, clean)
    for layer in range(hooked.cfg.n_layers):
        scores, pattern = cache[f"blocks.{layer}.attn.hook_attn_scores"], cache[f"blocks.{layer}.attn.hook_pattern"]
        real = torch.isfinite(scores).any(-1)   # padding query rows see no key (all -inf); HF gives them uniform
        assert real.any()
        torch.testing.assert_close(scores.softmax(-1)[real], pattern[real], atol=1e-6, rtol=0)
    halved = hooked.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: p * 0.5)])
    assert (halved - clean).abs().max() > 1e-4
    assert hooked._torch_handles == {} and torch.equal(hooked(inputs), clean)
