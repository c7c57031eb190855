"""The SAME TransformerLens script on TransformerLens's own model and on HookedMultimodalModel, identical weights.

TransformerLens 4.x removed ``HookedTransformer``; its model is ``TransformerBridge`` (raw HF numerics unless
``enable_compatibility_mode()``). We boot it on a deep copy of the very HF model we wrap (a tiny GPT-2 and a tiny
Llama from tv_lens.testing), run one script on both, and compare everything both name: logits, loss, every cached
activation, backward-hook gradients, the ActivationCache analysis methods and ``test_prompt``'s printout.
"""

from __future__ import annotations

import contextlib
import io

import torch

TOL = 1e-4


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
    # The same holds for every block's ln1 / ln2.
    norms = {"ln_final": ours.ln_final} | {f"blocks.{l}.{n}": getattr(ours.blocks[l], n)
                                           for l in range(ours.cfg.n_layers) for n in ("ln1", "ln2")}
    for prefix, norm in norms.items():
        name = f"{prefix}.hook_normalized"
        shared.remove(name)
        expected = tl_cache[name] * norm.w + (norm.b if ours.cfg.normalization_type == "LN" else 0)
        torch.testing.assert_close(our_cache[name], expected, atol=TOL, rtol=TOL)
    # hook_attn_scores: masked keys are -inf in ours (as in HookedTransformer), the dtype's minimum in the bridge
    # (HF's mask); visible keys are compared in test_tl_attention.py.
    shared = [name for name in shared if not name.endswith("attn.hook_attn_scores")]
    assert len(shared) >= 12 * ours.cfg.n_layers // 1 - 2 * ours.cfg.n_layers
    diffs = {name: _max_diff(tl_cache[name], our_cache[name]) for name in shared}
    assert max(diffs.values()) <= TOL, {k: v for k, v in diffs.items() if v > TOL}


@torch.no_grad()
def test_cache_analysis_methods_agree(pair):
    tl, ours = pair
    _, a = tl.run_with_cache(TOKENS)
    _, b = ours.run_with_cache(TOKENS, names_filter=lambda name: True)
    # Applying the final norm: TL's bridge leaves the norm's weight out (TL folds it into W_U when it processes
    # weights); ours keeps the checkpoint's weights and applies it, so ours = TL's * w (a documented difference).
    # accumulated_resid at the final layer runs the whole norm on each entry in both (TL's logit lens): equal.
    w = ours.ln_final.w.detach()
    for method in ("accumulated_resid", "decompose_resid", "stack_head_results"):
        for apply_ln in (False, True):
            x = getattr(a, method)(layer=-1, apply_ln=apply_ln)
            y = getattr(b, method)(layer=-1, apply_ln=apply_ln)
            if apply_ln and method != "accumulated_resid":
                x = x * w
            assert _max_diff(x, y) <= TOL, (method, apply_ln)


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
