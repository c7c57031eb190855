"""Model-level parts and analysis TL users call (TL's test_hooked_transformer.py, test_head_detector.py,
FactoredMatrix tests): embed / pos_embed / unembed modules, OV / QK, head labels, composition scores."""

from __future__ import annotations

import pytest
import torch

from tv_lens.errors import UnsupportedModelError


@torch.no_grad()
def test_embed_pos_embed_unembed_are_modules_that_rebuild_the_forward(model):
    tokens = model.to_tokens(["Q:a\nA:b", "Q:abc\nA:b"])
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(model.unembed, torch.nn.Module) and isinstance(model.embed, torch.nn.Module)
    torch.testing.assert_close(model.unembed.W_U, model.W_U)
    torch.testing.assert_close(model.unembed(cache["ln_final.hook_normalized"]), logits)
    if model.cfg.positional_embedding_type == "standard":
        torch.testing.assert_close(model.embed(tokens), cache["hook_embed"])
        mask = model.as_inputs(tokens)["attention_mask"].bool()
        pos = model.pos_embed(tokens, attention_mask=mask)
        torch.testing.assert_close(pos[mask], cache["hook_pos_embed"][mask])   # real tokens: counted from 0
        assert torch.all(pos[~mask] == 0)                                      # padding: zeros, as in TL
    else:
        torch.testing.assert_close(model.embed(tokens), cache["hook_embed"])
        with pytest.raises(UnsupportedModelError, match="rotary"):
            model.pos_embed(tokens)


@torch.no_grad()
def test_ov_qk_head_labels_and_composition(model):
    n, h, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    assert model.OV.shape == (n, h, d, d) and model.QK.shape == (n, h, d, d)
    torch.testing.assert_close(model.OV[1, 2].AB, model.W_V[1, 2] @ model.W_O[1, 2])
    torch.testing.assert_close(model.QK[0, 1].AB, model.W_Q[0, 1] @ model.W_K[0, 1].T)
    labels = model.all_head_labels()
    assert len(labels) == n * h and labels[h + 1] == "L1H1"
    scores = model.all_composition_scores("Q")
    assert scores.shape == (n, h, n, h)
    assert torch.all(scores[1, :, 0] == 0) and torch.all(scores[0, :, 1] > 0)   # only later heads
    a, b = model.OV[0, 1].AB, model.QK[1, 2].AB
    expected = (a @ b).norm() / (a.norm() * b.norm())
    torch.testing.assert_close(scores[0, 1, 1, 2], expected.float(), atol=1e-4, rtol=1e-4)
