"""Every TransformerLens habit works on HookedMultimodalModel, or raises a typed error naming the fix (issue 13)."""

from __future__ import annotations

import threading

import pytest
import torch

import tv_lens as tvl
from tv_lens.errors import (ConcurrentUseError, IncompatibleArgumentsError, InputError, PatchNotFiredError,
                            PositionError, UnsupportedModelError)
from tv_lens.testing.causal_lm import build_gpt2, build_llama


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def hooked(request):
    torch.manual_seed(0)
    tiny = (build_llama if request.param == "llama" else build_gpt2)()
    return tvl.HookedMultimodalModel.from_hf(tiny.model, tokenizer=tiny.tokenizer)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    tiny = build_llama()
    return tvl.HookedMultimodalModel.from_hf(tiny.model, tokenizer=tiny.tokenizer)


# ---------------------------------------------------------------------------------------------- keywords
@pytest.mark.parametrize("typo, nearest", [("names_filters", "names_filter"), ("fwd_hook", "fwd_hooks"),
                                           ("return_typ", "return_type")])
def test_unknown_keyword_raises_typeerror_naming_the_nearest(llama, typo, nearest):
    with pytest.raises(TypeError, match=nearest):
        llama.run_with_cache("Q:a\nA:", **{typo: None})


def test_forward_typo_is_not_swallowed(llama):
    with pytest.raises(TypeError, match="stop_at_layer"):
        llama("Q:a\nA:", stop_at_layr=1)


@torch.no_grad()
def test_return_types(hooked):
    toks = hooked.to_tokens("Q:France\nA:Paris")
    logits = hooked(toks)
    assert logits.shape == (1, toks.shape[1], hooked.cfg.d_vocab)
    loss = hooked(toks, return_type="loss")
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], toks[0, 1:])
    torch.testing.assert_close(loss, expected)
    both = hooked(toks, return_type="both")
    torch.testing.assert_close(both[0], logits) and torch.testing.assert_close(both[1], loss)
    assert hooked(toks, return_type=None) is None
    per_token = hooked(toks, return_type="loss", loss_per_token=True)
    assert per_token.shape == (1, toks.shape[1] - 1)
    torch.testing.assert_close(per_token.mean(), loss)
    with pytest.raises(IncompatibleArgumentsError):
        hooked(toks, return_type="probs")


@torch.no_grad()
def test_stop_at_layer_returns_the_residual_entering_that_layer(hooked):
    toks = hooked.to_tokens("Q:France\nA:")
    _, cache = hooked.run_with_cache(toks, names_filter="blocks.1.hook_resid_pre")
    out = hooked(toks, stop_at_layer=1)
    torch.testing.assert_close(out, cache["blocks.1.hook_resid_pre"])


@torch.no_grad()
def test_prepend_bos_and_padding_side(llama):
    bos = llama.tokenizer.bos_token_id
    with_bos = llama.to_tokens("abc", prepend_bos=True)
    without = llama.to_tokens("abc", prepend_bos=False)
    assert with_bos[0, 0] == bos and without[0, 0] != bos
    assert with_bos.shape[1] == without.shape[1] + 1
    pad = llama.tokenizer.pad_token_id
    right = llama.to_tokens(["a", "abcd"], padding_side="right")
    left = llama.to_tokens(["a", "abcd"], padding_side="left")
    assert right[0, -1] == pad and left[0, 0] == pad
    with pytest.raises(IncompatibleArgumentsError):
        llama.to_tokens("a", padding_side="middle")


@torch.no_grad()
def test_padded_token_tensor_gets_its_attention_mask(hooked):
    """The short row of a left-padded batch gives the same last-token logits as running it alone."""
    short, long = "Q:Peru\nA:", "Q:France\nA:Paris\n\nQ:Spain\nA:"
    batch = hooked(hooked.to_tokens([short, long]))
    alone = hooked(hooked.to_tokens(short))
    torch.testing.assert_close(batch[0, -1], alone[0, -1], atol=1e-5, rtol=1e-5)
    right = hooked(hooked.to_tokens([short, long], padding_side="right"), padding_side="right")
    n = hooked.to_tokens(short).shape[1]
    torch.testing.assert_close(right[0, n - 1], alone[0, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_remove_batch_dim_and_return_cache_object(llama):
    _, cache = llama.run_with_cache("Q:a\nA:", names_filter="blocks.0.hook_resid_post", remove_batch_dim=True)
    assert cache["blocks.0.hook_resid_post"].ndim == 2 and not cache.has_batch_dim
    _, plain = llama.run_with_cache("Q:a\nA:", names_filter="blocks.0.hook_resid_post", return_cache_object=False)
    assert type(plain) is dict
    with pytest.raises(IncompatibleArgumentsError, match="batch of one"):
        llama.run_with_cache(["a", "b"], remove_batch_dim=True)


# ---------------------------------------------------------------------------------------------- backward hooks
def test_backward_hooks_fire_alone_and_match_autograd(hooked):
    toks = hooked.to_tokens("Q:France\nA:Paris")
    name = "blocks.1.hook_resid_post"
    grads = {}
    with hooked.hooks(bwd_hooks=[(name, lambda g, hook: grads.__setitem__("g", g.detach()))]):
        hooked(toks, return_type="loss").backward()
    kept = {}

    def keep(t, hook):
        t.retain_grad()
        kept["t"] = t

    with hooked.hooks([(name, keep)]):
        hooked(toks, return_type="loss").backward()
    torch.testing.assert_close(grads["g"], kept["t"].grad)
    hooked.zero_grad(set_to_none=True)


def test_add_hook_bwd_and_incl_bwd(llama):
    toks = llama.to_tokens("Q:France\nA:Paris")
    seen = []
    llama.add_hook("blocks.0.hook_mlp_out", lambda g, hook: seen.append(g.shape), dir="bwd")
    try:
        llama(toks, return_type="loss").backward()
    finally:
        llama.reset_hooks()
    assert seen == [(1, toks.shape[1], llama.cfg.d_model)]
    loss, cache = llama.run_with_cache(toks, names_filter="blocks.*.hook_resid_post", incl_bwd=True,
                                       return_type="loss")
    assert loss.ndim == 0 and "blocks.2.hook_resid_post_grad" in cache
    assert cache["blocks.2.hook_resid_post_grad"].shape == cache["blocks.2.hook_resid_post"].shape
    assert llama._torch_handles == {}
    llama.zero_grad(set_to_none=True)


def test_unfired_backward_hook_raises(llama):
    with pytest.raises(PatchNotFiredError, match="backward"):
        with llama.hooks(bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: None)]):
            llama("Q:a\nA:")   # no .backward()
    with pytest.raises(IncompatibleArgumentsError, match="backward"):
        llama.run_with_hooks("Q:a", bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: None)])
    assert llama._torch_handles == {}


# ---------------------------------------------------------------------------------------------- unembed / ln_final
@torch.no_grad()
def test_unembed_has_no_final_norm_and_ln_final_is_callable(hooked):
    toks = hooked.to_tokens("Q:France\nA:")
    n = hooked.cfg.n_layers
    logits, cache = hooked.run_with_cache(toks, names_filter=[f"blocks.{n - 1}.hook_resid_post",
                                                              "ln_final.hook_normalized", "ln_final.hook_scale"])
    torch.testing.assert_close(hooked.unembed(cache["ln_final.hook_normalized"]), logits)
    resid = cache[f"blocks.{n - 1}.hook_resid_post"]
    torch.testing.assert_close(hooked.ln_final(resid), cache["ln_final.hook_normalized"])
    assert not torch.allclose(hooked.unembed(resid), logits, atol=1e-3)
    scale = cache["ln_final.hook_scale"]
    assert scale.shape == (1, toks.shape[1], 1)
    centred = resid - resid.mean(-1, keepdim=True) if hooked.cfg.normalization_type == "LN" else resid
    normalized = hooked.ln_final(resid)
    w = hooked.ln_final.w
    torch.testing.assert_close(centred / scale * w + (hooked.ln_final.b if hooked.cfg.normalization_type == "LN"
                                                      else 0), normalized, atol=1e-5, rtol=1e-4)
    with pytest.raises(IncompatibleArgumentsError, match="read, not patched"):
        hooked.run_with_hooks(toks, fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s * 2)])


# ---------------------------------------------------------------------------------------------- weights and cfg
@torch.no_grad()
def test_weights_in_transformer_lens_shapes_reproduce_hook_q_and_z(hooked):
    c = hooked.cfg
    assert hooked.W_U.shape == (c.d_model, c.d_vocab) and hooked.W_E.shape == (c.d_vocab, c.d_model)
    assert hooked.W_Q.shape == hooked.W_K.shape == hooked.W_V.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert hooked.W_O.shape == (c.n_layers, c.n_heads, c.d_head, c.d_model)
    assert hooked.W_in.shape == (c.n_layers, c.d_model, c.d_mlp) and hooked.W_out.shape == (c.n_layers, c.d_mlp,
                                                                                             c.d_model)
    assert hooked.blocks[0].attn.W_Q.data_ptr() != 0
    assert hooked.W_U.data_ptr() == hooked.hf_model.lm_head.weight.data_ptr()   # a view, not a copy
    toks = hooked.to_tokens("Q:France\nA:")
    names = ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z",
             "blocks.1.hook_attn_out", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"]
    _, cache = hooked.run_with_cache(toks, names_filter=names)
    ln1 = hooked._mods.layers[1].input_layernorm if c.family != "gpt2" else hooked._mods.layers[1].ln_1
    x = ln1(cache["blocks.1.hook_resid_pre"] if "blocks.1.hook_resid_pre" in cache else
            hooked.run_with_cache(toks, names_filter="blocks.1.hook_resid_pre")[1]["blocks.1.hook_resid_pre"])
    attn = hooked.blocks[1].attn
    q = torch.einsum("bpm,hmd->bphd", x, attn.W_Q) + attn.b_Q
    torch.testing.assert_close(q, cache["blocks.1.attn.hook_q"], atol=1e-5, rtol=1e-4)
    k = torch.einsum("bpm,hmd->bphd", x, attn._W_K) + attn._b_K
    torch.testing.assert_close(k, cache["blocks.1.attn.hook_k"], atol=1e-5, rtol=1e-4)
    out = torch.einsum("bphd,hdm->bpm", cache["blocks.1.attn.hook_z"], attn.W_O) + attn.b_O
    torch.testing.assert_close(out, cache["blocks.1.hook_attn_out"], atol=1e-5, rtol=1e-4)
    mlp = hooked.blocks[1].mlp
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"] @ mlp.W_out + mlp.b_out, cache["blocks.1.hook_mlp_out"],
                               atol=1e-5, rtol=1e-4)
    assert c.d_mlp and c.n_ctx == 512 and c.act_fn in ("silu", "gelu_new")
    assert c.normalization_type == ("LN" if c.family == "gpt2" else "RMS")
    assert c.positional_embedding_type == ("standard" if c.family == "gpt2" else "rotary")


def test_fields_without_meaning_raise(llama):
    with pytest.raises(UnsupportedModelError, match="W_pos"):
        llama.W_pos
    assert llama.W_K.shape[1] == llama.cfg.n_heads and llama.blocks[0].attn._W_K.shape[0] == 2   # GQA expanded


# ---------------------------------------------------------------------------------------------- tokens
def test_token_helpers(llama):
    tok = llama.to_single_token("a")
    assert isinstance(tok, int)
    with pytest.raises(InputError, match="not one"):
        llama.to_single_token("abc")
    assert llama.get_token_position("b", "abcb") == 1
    assert llama.get_token_position("b", "abcb", mode="last") == 3
    with pytest.raises(PositionError):
        llama.get_token_position("z", "abc")
    rows = llama.to_str_tokens(["ab", "c"])
    assert rows == [["a", "b"], ["c"]]
    assert llama.to_str_tokens("ab") == ["a", "b"]
    assert llama.generate("Q:a\nA:", max_new_tokens=3, return_type="str", verbose=True).startswith("Q:a")


def test_transformer_lens_test_prompt_runs(llama, capsys):
    from transformer_lens.utilities import test_prompt   # TL 4.x (transformer_lens.utils in 2.x)

    test_prompt("Q:ab\nA:", "c", llama, prepend_space_to_answer=False)
    out = capsys.readouterr().out
    assert "Tokenized prompt" in out and "Top 0th token" in out


# ---------------------------------------------------------------------------------------------- cache methods
@torch.no_grad()
def test_activation_cache_methods_work_including_one_position_caches(hooked):
    toks = hooked.to_tokens(["Q:France\nA:", "Q:Spain\nA:"])
    for positions in (None, "last"):
        _, cache = hooked.run_with_cache(toks, positions=positions, names_filter=lambda n: not n.endswith("pattern"))
        n_pos = 1 if positions else toks.shape[1]
        acc = cache.accumulated_resid(apply_ln=True)
        assert acc.shape == (hooked.cfg.n_layers + 1, 2, n_pos, hooked.cfg.d_model)
        last = cache.accumulated_resid(pos_slice=-1)
        assert last.shape == (hooked.cfg.n_layers + 1, 2, hooked.cfg.d_model)   # pos_slice hits positions
        decomposed = cache.decompose_resid(apply_ln=True)
        assert decomposed.shape[1:] == (2, n_pos, hooked.cfg.d_model)
        torch.testing.assert_close(cache.decompose_resid().sum(0), cache["resid_post", -1], atol=1e-4, rtol=1e-4)
        attrs = cache.logit_attrs(decomposed, tokens=torch.tensor([5, 6]))
        assert attrs.shape == (decomposed.shape[0], 2, n_pos)
        heads = cache.stack_head_results(layer=-1)
        assert heads.shape == (hooked.cfg.n_layers * hooked.cfg.n_heads, 2, n_pos, hooked.cfg.d_model)
        cache.compute_head_results()
        full = cache.get_full_resid_decomposition(expand_neurons=False)
        assert full.shape[1:] == (2, n_pos, hooked.cfg.d_model)
        stacked = cache.apply_ln_to_stack(cache.accumulated_resid(), layer=-1)
        assert stacked.shape == acc.shape


# ---------------------------------------------------------------------------------------------- one input path
def test_every_entry_point_takes_the_same_inputs(llama):
    text = ["Q:France\nA:", "Q:Spain\nA:"]
    tokens = llama.to_tokens(text)
    batch = llama.prepare(text)
    with torch.no_grad():
        ref = llama(text)
        torch.testing.assert_close(llama(tokens), ref)
        torch.testing.assert_close(llama(batch), ref)
        torch.testing.assert_close(llama.run_with_cache(text, names_filter="hook_embed")[0], ref)
        torch.testing.assert_close(llama.run_with_hooks(tokens), ref)
    assert llama.to_str_tokens(batch) == llama.to_str_tokens(tokens)
    assert llama.positions(text).last.tolist() == llama.positions(tokens).last.tolist()
    with pytest.raises(IncompatibleArgumentsError, match="images="):
        llama(tokens, images=[object()])


def test_query_delimiter_is_the_query_delimiter_and_delimiter_its_alias():
    from tv_lens.positions import TokenPositions, resolve

    named = [{"final_delimiter": [9], "demo_delimiters": [3, 6]}]
    pos = TokenPositions(seq_len=12, last=torch.tensor([11]), images=[[]], named=named)
    assert resolve("query_delimiter", pos).tolist() == [9] == resolve("delimiter", pos).tolist()
    assert resolve("delimiter[-1]", pos).tolist() == [6]
    with pytest.raises(PositionError):
        resolve("query_delimiter[0]", pos)


# ---------------------------------------------------------------------------------------------- threads
def test_two_threads_at_once_raise_concurrent_use_error(llama):
    entered, release = threading.Event(), threading.Event()

    def block(t, hook):
        entered.set()
        release.wait(timeout=30)

    errors = []

    def first():
        with torch.no_grad():
            llama.run_with_hooks("Q:a\nA:", fwd_hooks=[("blocks.0.hook_resid_post", block)])

    worker = threading.Thread(target=first)
    worker.start()
    assert entered.wait(timeout=30)
    try:
        with pytest.raises(ConcurrentUseError):
            llama("Q:b\nA:")
    except BaseException as err:   # noqa: BLE001 - collected so the worker is always released
        errors.append(err)
    finally:
        release.set()
        worker.join()
    if errors:
        raise errors[0]
    with torch.no_grad():
        llama("Q:b\nA:")   # free again once the first call returned


def test_concepts_page_shows_the_site_table_generated_from_the_table():
    from pathlib import Path

    from tv_lens.core import site_table_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text()
    assert site_table_markdown() in page


@torch.no_grad()
def test_image_prompt_goes_through_every_entry_point_with_images():
    """``run_with_cache("Q:<image>\\nA:", images=[img])`` works without ``prepare``; to_tokens / to_str_tokens show
    the expanded image tokens the model really sees."""
    from tv_lens.testing import random_image
    from tv_lens.testing.llava import build_llava

    torch.manual_seed(0)
    tiny = build_llava()
    vlm = tvl.HookedMultimodalModel.from_hf(tiny.model, processor=tiny.processor)
    img = random_image(*tiny.image_size)
    text = f"Q:{vlm.image_placeholder}\nA:"
    logits, cache = vlm.run_with_cache(text, images=[img], names_filter="blocks.0.hook_resid_post")
    torch.testing.assert_close(vlm(text, images=[img]), logits)
    torch.testing.assert_close(vlm.run_with_hooks(text, images=[img]), logits)
    torch.testing.assert_close(vlm(vlm.prepare(text, images=[img])), logits)
    tokens = vlm.to_tokens(text, images=[img])
    span = vlm.positions(text, images=[img]).images[0][0]
    assert span.numel() > 1 and bool((tokens[0, span] == vlm.cfg.image_token_id).all())
    str_tokens = vlm.to_str_tokens(text, images=[img])
    assert len(str_tokens) == tokens.shape[1] and str_tokens.count(str_tokens[int(span[0])]) >= span.numel()
    out = vlm.generate(text, images=[img], max_new_tokens=2, return_type="tokens")
    assert out.shape[1] == tokens.shape[1] + 2
    with pytest.raises(InputError, match="placeholder"):
        vlm(text)   # an image placeholder with no image says so
