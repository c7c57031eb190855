"""generate (TL's test_generation_compatibility.py, test_kv_cache.py): a string in gives a string out, the KV cache
is an option, and a steering hook acts the same whichever way it is attached."""

from __future__ import annotations

import pytest
import torch

from tv_lens.errors import IncompatibleArgumentsError


@torch.no_grad()
def test_generate_a_string_returns_the_string(model):
    out = model.generate("Q:a\nA:", max_new_tokens=3)
    assert isinstance(out, str) and out.startswith("Q:a\nA:")
    assert isinstance(model.generate(model.to_tokens("Q:a\nA:"), max_new_tokens=3), torch.Tensor)
    assert model.generate("Q:a\nA:", max_new_tokens=3, use_past_kv_cache=False) == out


@torch.no_grad()
def test_a_steering_hook_acts_the_same_passed_or_attached(model):
    torch.manual_seed(1)
    direction = torch.randn(model.cfg.d_model) * 5
    calls = []

    def steer(resid, hook):
        calls.append(resid.shape[1])
        return resid + direction

    name = "blocks.1.hook_resid_post"
    prompt = "Q:ab\nA:"
    passed = model.generate(prompt, max_new_tokens=4, fwd_hooks=[(name, steer)])
    n_passed = len(calls)
    with model.hooks([(name, steer)]):
        attached = model.generate(prompt, max_new_tokens=4)
    assert passed == attached
    assert n_passed == 4 and calls[1:4] == [1, 1, 1]   # the prompt, then every new token (KV cache)
    calls.clear()
    only_prompt = model.generate(prompt, max_new_tokens=4, fwd_hooks=[(name, steer)], hooks_on="prompt")
    assert len(calls) == 1
    calls.clear()
    with model.hooks([(name, steer)]):
        assert model.generate(prompt, max_new_tokens=4, hooks_on="prompt") == only_prompt
    assert len(calls) == 1
    with pytest.raises(IncompatibleArgumentsError, match="KV cache"):
        model.generate(prompt, max_new_tokens=2, hooks_on="prompt", use_past_kv_cache=False)
