"""The SAME TransformerLens script on TransformerLens's own model and on HookedMultimodalModel, identical weights.

TransformerLens 4.x removed ``HookedTransformer``; its model is ``TransformerBridge`` (raw HF numerics unless
``enable_compatibility_mode()``). We boot it on a deep copy of the very HF model we wrap (a tiny GPT-2 and a tiny
Llama from tv_lens.testing), run one script on both, and compare everything both name: logits, loss, every cached
activation, backward-hook gradients, the ActivationCache analysis methods and ``test_prompt``'s printout.
"""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch

import tv_lens as tvl
from tv_lens.testing.causal_lm import build_gpt2, build_llama

TOL = 1e-4
_TL_NAMES = {"gpt2": "gpt2", "llama": "meta-llama/Llama-3.2-1B"}   # picks TL's architecture adapter; no download


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tiny = (build_gpt2 if request.param == "gpt2" else build_llama)()
    tiny.model.eval()
    with torch.no_grad():   # trained-looking norms: unit weights would hide where a norm's weight is applied
        for name, param in tiny.model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.add_(0.3 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp(request.param)
    tiny.tokenizer.save_pretrained(folder)   # TL re-loads the tokenizer by its name_or_path
    tl = bridge_mod.TransformerBridge.boot_transformers(_TL_NAMES[request.param], hf_model=copy.deepcopy(tiny.model),
                                                        tokenizer=AutoTokenizer.from_pretrained(folder))
    ours = tvl.HookedMultimodalModel.from_hf(tiny.model, tokenizer=tiny.tokenizer)
    return tl, ours


def _max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])


@torch.no_grad()
def test_logits_loss_and_every_shared_activation(pair):
    tl, ours = pair
    assert _max_diff(tl(TOKENS), ours(TOKENS)) <= TOL
    assert abs(tl(TOKENS, return_type="loss").item() - ours(TOKENS, return_type="loss").item()) <= TOL
    _, tl_cache = tl.run_with_cache(TOKENS)
    _, our_cache = ours.run_with_cache(TOKENS, names_filter=lambda name: True)
    shared = sorted(set(tl_cache.keys()) & set(our_cache.keys()))
    # TL's hook_normalized is the normalized x BEFORE the norm's weight (and bias); ours is the norm's output, so
    # that unembed(cache["ln_final.hook_normalized"]) gives the logits. Ours = TL's * w + b, checked here.
    shared.remove("ln_final.hook_normalized")
    torch.testing.assert_close(our_cache["ln_final.hook_normalized"],
                               tl_cache["ln_final.hook_normalized"] * ours.ln_final.w + ours.ln_final.b
                               if ours.cfg.normalization_type == "LN"
                               else tl_cache["ln_final.hook_normalized"] * ours.ln_final.w, atol=TOL, rtol=TOL)
    assert len(shared) >= 12 * ours.cfg.n_layers // 1 - 2 * ours.cfg.n_layers
    diffs = {name: _max_diff(tl_cache[name], our_cache[name]) for name in shared}
    assert max(diffs.values()) <= TOL, {k: v for k, v in diffs.items() if v > TOL}


@torch.no_grad()
def test_cache_analysis_methods_agree(pair):
    tl, ours = pair
    _, a = tl.run_with_cache(TOKENS)
    _, b = ours.run_with_cache(TOKENS, names_filter=lambda name: True)
    for method in ("accumulated_resid", "decompose_resid", "stack_head_results"):
        for apply_ln in (False, True):
            x = getattr(a, method)(layer=-1, apply_ln=apply_ln)
            y = getattr(b, method)(layer=-1, apply_ln=apply_ln)
            assert _max_diff(x, y) <= TOL, (method, apply_ln)
    attrs_tl = a.logit_attrs(a.decompose_resid(layer=-1), tokens=torch.tensor([5]))
    attrs_ours = b.logit_attrs(b.decompose_resid(layer=-1), tokens=torch.tensor([5]))
    assert _max_diff(attrs_tl, attrs_ours) <= TOL


def test_backward_hook_gradients_agree(pair):
    tl, ours = pair
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.attn.hook_z"]
    grads: dict[str, dict[str, torch.Tensor]] = {"tl": {}, "ours": {}}
    for key, model in (("tl", tl), ("ours", ours)):
        def saver(name, key=key):   # keyed by the name asked for: TL's bridge calls aliases by their own names
            return lambda grad, hook: grads[key].__setitem__(name, grad.detach().clone())

        with model.hooks(bwd_hooks=[(name, saver(name)) for name in names]):
            model(TOKENS, return_type="loss").backward()
        model.zero_grad(set_to_none=True)
    for name in names:
        assert _max_diff(grads["tl"][name], grads["ours"][name]) <= TOL, name


def test_weights_agree_gqa_expanded(pair):
    tl, ours = pair
    n_rep = ours.cfg.n_heads // tl.W_K.shape[1]
    names = ("W_Q", "W_O", "W_U", "W_E", "W_in", "W_out") + (("b_O",) if ours.cfg.family == "gpt2" else ())
    for name in names:   # TL 4.x raises for bias-free b_O; we give zeros, as HookedTransformer did
        assert _max_diff(getattr(tl, name), getattr(ours, name)) <= TOL, name
    for name in ("W_K", "W_V"):   # TL's bridge keeps the KV-head count; we expand GQA like HookedTransformer did
        assert _max_diff(getattr(tl, name).repeat_interleave(n_rep, dim=1), getattr(ours, name)) <= TOL, name
    for name in ("d_mlp", "n_ctx", "act_fn", "normalization_type", "positional_embedding_type", "d_head"):
        assert getattr(tl.cfg, name) == getattr(ours.cfg, name), name


def test_test_prompt_prints_the_same(pair):
    from transformer_lens.utilities import test_prompt

    outputs = []
    for model in pair:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), torch.no_grad():
            test_prompt("Q:ab\nA:", "c", model, prepend_space_to_answer=False, prepend_bos=False)
        outputs.append(buffer.getvalue())
    assert outputs[0] == outputs[1] and "Top 0th token" in outputs[1]
