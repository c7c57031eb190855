"""Attention heads: per-head hook points for every family, head patches, causal indirect effects, function vectors."""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import pytest
import torch
from helpers import items as make_items
from helpers import two_prompts

import tv_lens as tvl
from tv_lens import heads as H
from tv_lens import prompts as P
from tv_lens.errors import IncompatibleArgumentsError, PatchNotFiredError, PositionError, VectorError
from tv_lens.testing import available_families, tiny_model

FAMILIES = available_families()
PAIRS = [("France", "Paris"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"), ("Cuba", "Havana"),
         ("Fiji", "Suva"), ("Mali", "Bamako"), ("Oman", "Muscat")]


def _items(with_images=False):
    return make_items(PAIRS, with_images)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").hooked()


@pytest.fixture(scope="module")
def icl(llama):
    prompts = P.icl(_items(), n_shots=3, seed=0)
    return prompts, H.mean_head_activations(llama, prompts, progress=False)


# ------------------------------------------------------------------------------------------------ hook points
@torch.no_grad()
@pytest.mark.parametrize("name", FAMILIES)
def test_head_results_sum_to_the_attention_output(name):
    tiny = tiny_model(name)
    hooked = tiny.hooked()
    inputs, _ = two_prompts(tiny, hooked)
    layer, n_heads, d_head = 1, hooked.cfg.n_heads, hooked.cfg.d_head
    projected = {}
    handle = hooked._mods.o_proj[layer].register_forward_hook(lambda m, a, out: projected.setdefault("out", out))
    try:
        logits, cache = hooked.run_with_cache(inputs, names_filter=[f"blocks.{layer}.attn.hook_{k}" for k in
                                                                    ("z", "result", "pattern")]
                                              + [f"blocks.{layer}.hook_attn_out"])
    finally:
        handle.remove()
    ref = tiny.model(**inputs, use_cache=False, output_attentions=True)
    assert (logits - ref.logits).abs().max() <= 1e-5, "reading head hooks must not change the forward"
    z, result = cache["z", layer], cache["result", layer]
    batch, seq = inputs["input_ids"].shape
    assert z.shape == (batch, seq, n_heads, d_head) and result.shape == (batch, seq, n_heads, hooked.cfg.d_model)
    bias = hooked.blocks[layer].attn.b_O
    total = result.sum(-2) + (0 if bias is None else bias)
    torch.testing.assert_close(total, projected["out"], atol=1e-5, rtol=1e-5)
    if hooked._mods.attn_out[layer] is hooked._mods.attention[layer]:
        torch.testing.assert_close(total, cache["attn_out", layer], atol=1e-5, rtol=1e-5)
    else:
        # Sandwich norms (Gemma 3): the residual receives norm(o_proj(z)), so the heads sum to the o_proj output.
        assert name.startswith("gemma3")
    assert cache["pattern", layer].shape == (batch, n_heads, seq, seq)
    torch.testing.assert_close(cache["pattern", layer], ref.attentions[layer], atol=1e-6, rtol=0)
    assert hooked._torch_handles == {}


@torch.no_grad()
def test_patching_z_and_result_is_sound(llama):
    inputs = llama.prepare(["Q:France\nA:Paris\n\nQ:Peru\nA:", "Q:Chad\nA:"])
    clean = llama(inputs)
    head = 2

    def zero_result(result, hook):
        result = result.clone()
        result[:, -1, head] = 0
        return result

    def same_result(result, hook):
        return result.clone()

    by_z = llama.run_with_hooks(inputs, fwd_hooks=H.zero_ablate_heads([(1, head)], at=-1))
    by_result = llama.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_result", zero_result)])
    unchanged = llama.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_result", same_result)])
    torch.testing.assert_close(unchanged, clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_result, by_z, atol=1e-5, rtol=1e-5)
    earlier = inputs["attention_mask"].bool()  # pad positions (fully masked) may look anywhere
    earlier[:, -1] = False
    assert torch.equal(by_z[earlier], clean[earlier]), "a patch at the last token leaves earlier positions alone"
    assert (by_z[:, -1] - clean[:, -1]).abs().max() > 1e-4


@torch.no_grad()
def test_pattern_needs_eager_and_is_writable():
    tiny = tiny_model("llama")
    hooked = tiny.hooked()
    inputs = hooked.prepare(["Q:France\nA:Paris", "Q:Peru\nA:"])
    _, cache = hooked.run_with_cache(inputs, names_filter="blocks.0.attn.hook_pattern", positions="last")
    assert cache["pattern", 0].shape == (2, hooked.cfg.n_heads, 1, inputs["input_ids"].shape[1])
    clean = hooked(inputs)
    halved = hooked.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: p * 0.5)])
    assert (halved - clean).abs().max() > 1e-3, "a written pattern changes the output"
    assert hooked._torch_handles == {}

    tiny.model.set_attn_implementation("sdpa")
    _, cache = hooked.run_with_cache(inputs)  # everything available, no error
    assert "blocks.0.attn.hook_z" in cache and "blocks.0.attn.hook_pattern" not in cache
    assert "blocks.0.attn.hook_result" not in cache, "hook_result is cached only when asked for"
    with pytest.raises(IncompatibleArgumentsError, match='attn_implementation="eager"'):
        hooked.run_with_cache(inputs, names_filter="blocks.*.attn.hook_pattern")
    assert hooked._torch_handles == {} and not hooked.blocks[0].attn.hook_pattern.fwd_hooks


# ------------------------------------------------------------------------------------------------ head hooks
def test_head_patch_fires_or_raises(llama, icl):
    prompts, means = icl
    batch = P.encode(llama, prompts[:2])
    with pytest.raises(PatchNotFiredError):
        llama.run_with_cache(batch, names_filter="blocks.0.hook_resid_post", stop_at_layer=1,
                             fwd_hooks=H.patch_heads(means, [(2, 1)]))
    with pytest.raises(PositionError):
        llama.run_with_hooks(batch, fwd_hooks=H.mean_ablate_heads(means, [(0, 1)], at="delimiter[7]"))
    with pytest.raises(VectorError, match="d_head"):
        llama.run_with_hooks(batch, fwd_hooks=H.patch_heads({(0, 1): torch.zeros(5)}))
    hooks = H.patch_heads(means, [(0, 1), (2, 3), (0, 2)])
    assert [name for name, _ in hooks] == ["blocks.0.attn.hook_z", "blocks.2.attn.hook_z"]
    llama.run_with_hooks(batch, fwd_hooks=hooks)
    assert all(hook.fired == 1 for _, hook in hooks)


@torch.no_grad()
def test_patch_heads_writes_the_means_at_the_position(llama, icl):
    prompts, means = icl
    batch = P.encode(llama, prompts[:3])
    _, cache = llama.run_with_cache(batch, names_filter="blocks.1.attn.hook_z",
                                    fwd_hooks=H.patch_heads(means, [(1, 0), (1, 3)], at="delimiter"))
    z = cache["z", 1]
    delimiter = tvl.positions.resolve("delimiter", llama.positions(batch))
    for row in range(3):
        assert torch.equal(z[row, delimiter[row], 0], means[1, 0]) and torch.equal(z[row, delimiter[row], 3],
                                                                                  means[1, 3])
    _, clean = llama.run_with_cache(batch, names_filter="blocks.1.attn.hook_z")
    assert torch.equal(z[:, :, 1:3], clean["z", 1][:, :, 1:3]), "other heads untouched"


def test_shuffle_labels_keeps_query_and_permutes_demos():
    prompts = P.icl(_items(), n_shots=4, seed=0)
    shuffled = P.shuffle_labels(prompts, seed=1)
    for clean, bad in zip(prompts, shuffled):
        assert bad.label == clean.label
        assert bad.render().rsplit("\n\n", 1)[1] == clean.render().rsplit("\n\n", 1)[1], "same query"
        assert sorted(bad.demo_labels) == sorted(clean.demo_labels)
        assert all(a != b for a, b in zip(bad.demo_labels, clean.demo_labels))
        assert f"A:{bad.demo_labels[0]}\n" in bad.render()


# ------------------------------------------------------------------------------------------------ CIE
def _slow_cie(model, prompts, means):
    """One head at a time, whole prompts: the definition, without batching or cached prefixes."""
    corrupted = P.shuffle_labels(prompts, seed=0)
    answer = torch.tensor([tvl.lens.first_token(model, p.label)[0] for p in corrupted])
    batch = P.encode(model, corrupted)

    def p_answer(logits):
        return logits[:, -1].softmax(-1)[torch.arange(len(answer)), answer]

    base = p_answer(model(batch))
    out = torch.zeros(len(prompts), model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            logits = model.run_with_hooks(batch, fwd_hooks=H.patch_heads(means, [(layer, head)], at="last"))
            out[:, layer, head] = p_answer(logits) - base
    return out


@torch.no_grad()
@pytest.mark.parametrize("prefix_reuse", [True, False], ids=["last-token", "repeated-prompts"])
def test_batched_cie_matches_one_head_at_a_time(llama, icl, prefix_reuse):
    prompts, means = icl
    # Means blown up so a random model's answer probability moves well above float noise.
    strong = dataclasses.replace(means, z=means.z * 40)
    model = llama
    if not prefix_reuse:
        model = tiny_model("llama").hooked()
        model.adapter = dataclasses.replace(model.adapter, prefix_reuse=False)
    cie = H.causal_indirect_effect(model, prompts, means=strong, batch_size=3, max_rows=10, progress=False)
    ref = _slow_cie(model, prompts, strong)
    assert cie.per_prompt.shape == (len(prompts), model.cfg.n_layers, model.cfg.n_heads)
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(cie.per_prompt, ref, atol=2e-6, rtol=1e-4)
    top = cie.top_heads(3)
    assert top[0] == tuple(divmod(int(ref.mean(0).argmax()), model.cfg.n_heads))
    frame = cie.to_frame()
    assert list(frame.columns) == ["layer", "head", "effect", "std"] and len(frame) == 3 * 4
    fig = tvl.plot.cie_heatmap(cie)
    assert isinstance(fig, go.Figure) and len(fig.data[0].z) == model.cfg.n_layers


# ------------------------------------------------------------------------------------------------ function vectors
@torch.no_grad()
def test_function_vector_is_the_mean_head_result(llama, icl):
    prompts, means = icl
    heads = [(0, 1), (2, 3), (1, 0)]
    fv = H.function_vector(llama, means, heads, task="toy")
    _, cache = llama.run_with_cache(P.encode(llama, prompts), names_filter="blocks.*.attn.hook_result",
                                    positions="last")
    expected = sum(cache["result", layer][:, 0, head].mean(0) for layer, head in heads)
    assert fv.kind == "function_vector" and fv.layers == list(range(llama.cfg.n_layers))
    assert fv.extra["heads"] == [list(h) for h in heads]
    for layer in fv.layers:
        torch.testing.assert_close(fv[layer], expected, atol=1e-5, rtol=1e-4)
    added = llama.run_with_hooks(P.encode(llama, P.queries(_items()[:2])), fwd_hooks=fv.hooks(1, at="last",
                                                                                               mode="add"))
    assert added.shape[0] == 2


def test_evaluate_compares_vectors_function_vectors_and_head_patches(llama, icl):
    prompts, means = icl
    items = _items()
    vec = tvl.extract_task_vector(llama, prompts, progress=False)
    fv = H.function_vector(llama, means, [(1, 1), (2, 0)])
    sweep = tvl.layer_sweep(llama, fv, items, mode="add", progress=False)
    result = tvl.evaluate(llama, items, ["no_context", "patch", "fv_add", "heads_patch"],
                          vectors={"patch": vec, "fv_add": fv, "heads_patch": means.select([(1, 1), (2, 0)])},
                          layer={"patch": 1, "fv_add": sweep.best}, max_new_tokens=1, progress=False)
    assert list(result.table().index) == ["no_context", "patch", "fv_add", "heads_patch"]
    assert set(result.scores.query("method == 'fv_add'")["layer"]) == {sweep.best}   # one row per seed
    with pytest.raises(IncompatibleArgumentsError, match="heads_patch"):
        tvl.evaluate(llama, items, ["heads_patch"], vectors={"heads_patch": means}, progress=False)
    with pytest.raises(IncompatibleArgumentsError, match="fv_add"):
        tvl.evaluate(llama, items, ["fv_add"], vector=vec, layer=1, progress=False)


def test_text_function_vector_added_onto_image_queries():
    llava = tiny_model("llava").hooked()
    items = _items(with_images=True)
    text_icl = P.icl(items, n_shots=2, modality="text")
    means = H.mean_head_activations(llava, text_icl, progress=False)
    fv = H.function_vector(llava, means, [(0, 0), (1, 2)])
    result = tvl.evaluate(llava, items[:3], ["no_context", "fv_add", "heads_patch"], query_modality="image",
                          vectors={"fv_add": fv, "heads_patch": means.select([(1, 2)])}, layer=1,
                          max_new_tokens=1, progress=False)
    assert set(result.scores["method"]) == {"no_context", "fv_add", "heads_patch"}
    assert (result.scores["query_modality"] == "image").all()


# ------------------------------------------------------------------------------------------------ real weights
@torch.no_grad()
def test_head_hooks_and_batched_cie_on_real_smollm2(smollm2):
    task = tvl.tasks.load("country-capital")
    prompts = P.icl(task.val[:2], n_shots=5, pool=task.train, seed=0)
    _, cache = smollm2.run_with_cache(prompts, names_filter=["blocks.24.attn.hook_result", "blocks.24.hook_attn_out"])
    torch.testing.assert_close(cache["result", 24].sum(2), cache["attn_out", 24], atol=1e-4, rtol=1e-4)
    if smollm2.attn_implementation != "eager":
        with pytest.raises(IncompatibleArgumentsError, match="eager"):
            smollm2.run_with_cache(prompts, names_filter="blocks.0.attn.hook_pattern")
    means = H.mean_head_activations(smollm2, prompts, layers=[24], progress=False)
    cie = H.causal_indirect_effect(smollm2, prompts, means=means, layers=[24], progress=False)
    corrupted = P.shuffle_labels(prompts, seed=0)
    answer = torch.tensor([tvl.lens.first_token(smollm2, p.label)[0] for p in corrupted])
    batch = P.encode(smollm2, corrupted)

    def p_answer(logits):
        return logits[:, -1].softmax(-1)[torch.arange(2), answer]

    base = p_answer(smollm2(batch))
    for head in (0, 4, 8):   # the reference costs a whole forward per head
        patched = p_answer(smollm2.run_with_hooks(batch, fwd_hooks=H.patch_heads(means, [(24, head)])))
        torch.testing.assert_close(cie.per_prompt[:, 0, head], patched - base, atol=1e-5, rtol=1e-3)


@torch.no_grad()
def test_per_row_head_patch_acting_on_no_row_is_not_fired(llama, icl):
    """A per-row head patch whose rows all say "no head" (-1) changed nothing, so it must not count as fired."""
    prompts, means = icl
    d_head = llama.cfg.d_head
    values = torch.ones(llama.cfg.n_heads, d_head)
    batch = P.encode(llama, prompts[:2])
    idle = H._PerRowHeadPatch(values, torch.tensor([-1, -1]), at="last")
    with pytest.raises(PatchNotFiredError):
        with llama.hooks(fwd_hooks=[(H._name(0), idle)]):
            llama(batch)
    acting = H._PerRowHeadPatch(values, torch.tensor([0, -1]), at="last")
    with llama.hooks(fwd_hooks=[(H._name(0), acting)]):
        llama(batch)
    assert acting.fired == 1
