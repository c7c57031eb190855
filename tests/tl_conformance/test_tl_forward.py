"""Forward, return types, loss, eval mode, and stop_at_layer / start_at_layer (TL's test_stop_at_layer.py and
test_start_at_layer.py)."""

from __future__ import annotations

import pytest
import torch

from tv_lens.errors import InputError


def test_wrapper_is_in_eval_mode_and_tl_patching_accepts_it(model):
    from transformer_lens import patching

    assert model.training is False and model.hf_model.training is False
    tokens = model.to_tokens("Q:ab\nA:c")
    _, clean = model.run_with_cache(tokens)
    metric = lambda logits: logits[0, -1, 5]   # noqa: E731
    out = patching.get_act_patch_resid_pre(model, tokens, clean, metric)
    assert out.shape == (model.cfg.n_layers, tokens.shape[1])


@torch.no_grad()
def test_run_with_cache_stop_at_layer_returns_the_residual_entering_that_block(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:abc\nA:b"])
    _, full = model.run_with_cache(tokens)
    for layer in range(1, model.cfg.n_layers):
        out, cache = model.run_with_cache(tokens, stop_at_layer=layer)
        torch.testing.assert_close(out, full[f"blocks.{layer}.hook_resid_pre"])
        assert f"blocks.{layer}.hook_resid_post" not in cache.keys()
        assert "blocks.0.hook_resid_post" in cache.keys()


@torch.no_grad()
def test_start_at_layer_continues_from_a_residual(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:abc\nA:b"])
    mask = model.as_inputs(tokens).get("attention_mask")
    full = model(tokens)
    for layer in range(model.cfg.n_layers):
        resid = model(tokens, stop_at_layer=layer)
        torch.testing.assert_close(model(resid, start_at_layer=layer, attention_mask=mask), full)
    embed, toks, shortformer, mask2 = model.input_to_embed(tokens)
    assert shortformer is None and torch.equal(toks, tokens)
    torch.testing.assert_close(model(embed, start_at_layer=0, attention_mask=mask2), full)
    loss = model(embed, start_at_layer=0, attention_mask=mask2, tokens=tokens, return_type="loss")
    torch.testing.assert_close(loss, model(tokens, return_type="loss"))
    middle = model(tokens, stop_at_layer=1)
    torch.testing.assert_close(model(middle, start_at_layer=1, stop_at_layer=2, attention_mask=mask),
                               model(tokens, stop_at_layer=2))
    with pytest.raises(InputError, match="residual"):
        model(tokens, start_at_layer=1)


@pytest.mark.parametrize("option", ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"])
def test_weight_processing_is_refused_naming_the_tl_way(built, option):
    import tv_lens as tvl
    from tv_lens.errors import UnsupportedModelError

    _, made = built
    with pytest.raises(UnsupportedModelError, match="from_pretrained_no_processing"):
        tvl.HookedMultimodalModel.from_hf(made.model, tokenizer=made.tokenizer, **{option: True})
    tvl.HookedMultimodalModel.from_hf(made.model, tokenizer=made.tokenizer, **{option: False})   # what we do


def test_tl_construction_defaults(built):
    import tv_lens as tvl

    _, made = built
    tokenizer = made.tokenizer
    try:
        model = tvl.HookedMultimodalModel.from_hf(made.model, tokenizer=tokenizer, default_prepend_bos=True,
                                                  default_padding_side="right")
        assert model.to_tokens("ab")[0, 0] == tokenizer.bos_token_id
        assert model.to_tokens(["a", "abc"])[0, -1] == tokenizer.pad_token_id
    finally:
        tokenizer.padding_side = "left"   # the tokenizer is shared with the other tests
