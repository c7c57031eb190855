"""Tokenization: prepend_bos (TL's test_prepend_bos.py), padding side (test_tokenizer_padding_side.py), to_tokens /
to_str_tokens / get_token_position / to_single_str_token / set_tokenizer (test_tokenization_methods.py)."""

from __future__ import annotations

import pytest
import torch

from tv_lens.errors import ContextLengthError, InputError, PositionError


def test_default_prepend_bos_true_then_explicit_true_gives_one_bos(fresh):
    bos = fresh.tokenizer.bos_token_id
    fresh.cfg.default_prepend_bos = True
    for tokens in (fresh.to_tokens("abc"), fresh.to_tokens("abc", prepend_bos=True)):
        assert tokens[0, 0] == bos and tokens[0, 1] != bos
    assert fresh.to_tokens("abc", prepend_bos=False)[0, 0] != bos
    fresh.cfg.default_prepend_bos = False
    assert fresh.to_tokens("abc")[0, 0] != bos
    with_bos = fresh.to_tokens("abc", prepend_bos=True)
    assert with_bos[0, 0] == bos and with_bos.shape[1] == fresh.to_tokens("abc").shape[1] + 1


def test_tokenizer_padding_side_is_honoured(fresh):
    pad = fresh.tokenizer.pad_token_id
    assert fresh.to_tokens(["a", "abcd"])[0, 0] == pad          # our default: left
    fresh.tokenizer.padding_side = "right"
    right = fresh.to_tokens(["a", "abcd"])
    assert right[0, -1] == pad and right[0, 0] != pad
    assert fresh.to_tokens(["a", "abcd"], padding_side="left")[0, 0] == pad   # the argument wins
    assert fresh.prepare(["a", "abcd"])["input_ids"][0, 0] == pad   # prompt batches for generation stay left


@torch.no_grad()
def test_padded_rows_give_the_logits_of_the_row_alone(model):
    for side in ("left", "right"):
        tokens = model.to_tokens(["Q:a\nA:b", "Q:abcde\nA:b"], padding_side=side)
        batch = model(tokens, padding_side=side)
        alone = model("Q:a\nA:b")
        n = alone.shape[1]
        row = batch[0, -n:] if side == "left" else batch[0, :n]
        torch.testing.assert_close(row, alone[0], atol=1e-4, rtol=1e-4)


def test_to_str_tokens_squeezes_a_one_row_batch(model):
    tokens = model.to_tokens("Q:ab")
    assert model.to_str_tokens(tokens) == model.to_str_tokens(tokens[0]) == model.to_str_tokens("Q:ab")


def test_to_single_str_token_and_get_token_position(model):
    token = model.to_single_token("a")
    assert model.to_single_str_token(token) == "a"
    assert model.get_token_position("a", "Q:bab", mode="last") == model.to_tokens("Q:bab").shape[1] - 2
    with pytest.raises(AssertionError):   # TransformerLens raises AssertionError
        model.get_token_position("z", "Q:ab")
    with pytest.raises(PositionError):
        model.get_token_position("z", "Q:ab")


def test_truncation_is_an_option_and_the_error_names_it(model):
    text = "ab" * (model.cfg.n_ctx + 5)
    with pytest.raises(ContextLengthError, match="truncate=True"):
        model.to_tokens(text)
    assert model.to_tokens(text, truncate=True).shape[1] == model.cfg.n_ctx


def test_set_tokenizer(fresh):
    tokenizer = fresh.tokenizer
    tokenizer.padding_side = "right"
    fresh.set_tokenizer(tokenizer, default_padding_side="left")
    assert fresh.tokenizer.padding_side == "left"
    with pytest.raises(InputError):
        fresh.set_tokenizer(tokenizer, default_padding_side="middle")


@torch.no_grad()
def test_a_full_explicit_mask_on_text_is_used_and_a_hole_removes_the_token(model):
    prompts = ["Q:a\nA:b", "Q:abcde\nA:b"]
    tokens = model.to_tokens(prompts, padding_side="right")
    full = torch.ones_like(tokens)
    torch.testing.assert_close(model(prompts, attention_mask=full, padding_side="right"),
                               model(tokens, attention_mask=full))
    # a zero column = the token was never there (TL's test_attention_mask.py), positions included
    drop = 3
    mask = full.clone()
    mask[:, drop] = 0
    edited = torch.cat([tokens[:, :drop], tokens[:, drop + 1:]], dim=1)
    out = model(tokens, attention_mask=mask)
    torch.testing.assert_close(torch.cat([out[:, :drop], out[:, drop + 1:]], dim=1),
                               model(edited, attention_mask=torch.ones_like(edited)), atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="shape"):
        model(prompts, attention_mask=full[:, :-1])


@torch.no_grad()
def test_right_padded_tokens_with_no_mask_and_a_full_mask_agree(fresh):
    fresh.tokenizer.padding_side = "right"
    tokens = fresh.to_tokens(["Q:a\nA:b", "Q:abcde\nA:b"])
    assert tokens[0, -1] == fresh.tokenizer.pad_token_id
    torch.testing.assert_close(fresh(tokens), fresh(tokens, attention_mask=torch.ones_like(tokens)))
    # the padding still never counts in the loss
    loss = fresh(tokens, return_type="loss", loss_per_token=True)
    assert torch.all(loss[0, -3:] == 0)
