"""Prompts, named positions, position hooks, task vectors and evaluation on tiny models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import items as make_items

import tv_lens as tvl
from tv_lens import prompts as P
from tv_lens.errors import (IncompatibleArgumentsError, InputError, LayerOutOfRangeError, PatchNotFiredError, PositionError,
                            TaskError, VectorError)
from tv_lens.evaluate import _sweep_first_tokens, best_layer, exact_match, first_token_correct
from tv_lens.hooks import add, mean_ablate, patch, record, zero_ablate
from tv_lens.positions import resolve
from tv_lens.testing import TEXT_ONLY_FAMILIES, available_families, random_image, tiny_model

PAIRS = [("France", "Paris"), ("Ja:pan", "To\nkyo"), ("Peru", "Lima"), ("Chad", "N'Djamena"), ("Iran", "Tehran"),
         ("Cuba", "Havana"), ("Fiji", "Suva"), ("Mali", "Bamako")]


def _items(with_images=False, size=(32, 32)):
    return make_items(PAIRS, with_images, size)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").hooked()


@pytest.fixture(scope="module")
def llava():
    tiny = tiny_model("llava")
    return tiny.hooked()


# ------------------------------------------------------------------------------------------------ prompts
def test_icl_template_and_seeded_demos_never_include_query():
    prompts = P.icl(_items(), n_shots=3, seed=4)
    again = P.icl(_items(), n_shots=3, seed=4)
    other = P.icl(_items(), n_shots=3, seed=5)
    assert [p.render() for p in prompts] == [p.render() for p in again]
    assert [p.render() for p in prompts] != [p.render() for p in other]
    for prompt, (x, y) in zip(prompts, PAIRS):
        text = prompt.render()
        assert text.endswith(f"Q:{x}\nA:")
        assert text.count("Q:") == 4 and prompt.label == y
        assert f"Q:{x}\n" not in text[: -len(f"Q:{x}\nA:")], "the query must never be its own demo"
        assert text.startswith("Q:") and "\n\nQ:" in text


def test_named_positions_from_char_offsets_survive_colons_and_newlines(llama):
    prompts = P.icl(_items(), n_shots=2, seed=1)
    batch = P.encode(llama, prompts)
    pos = llama.positions(batch)
    tokens = llama.to_str_tokens(batch["input_ids"])
    for row, prompt in enumerate(prompts):
        demos = [resolve(f"delimiter[{k}]", pos)[row] for k in range(2)]
        final = int(resolve("delimiter", pos)[row])
        assert final == int(pos.last[row])
        for index in [*demos, final]:
            assert tokens[row][int(index)] == ":" and tokens[row][int(index) - 1] == "A"
        query = resolve("query[-1]", pos)[row]
        assert "".join(tokens[row][i] for i in pos.named[row]["query"]) == prompt.query_input
        assert int(query) == pos.named[row]["query"][-1]
    with pytest.raises(PositionError):
        resolve("delimiter[5]", pos)
    with pytest.raises(PositionError):
        resolve("nowhere", pos)


def test_templates_render_and_keep_positions_on_the_delimiter(llama):
    for name, query_end in [("qa_space", "Q: {x}\nA:"), ("colon", "{x}:")]:
        prompts = P.icl(_items(), n_shots=2, seed=1, template=name)
        assert [p.demo_labels for p in prompts] == [p.demo_labels for p in P.icl(_items(), n_shots=2, seed=1)]
        text = prompts[0].render()
        assert text.endswith(query_end.format(x=PAIRS[0][0]))
        assert f"{prompts[0].template.answer} {prompts[0].demo_labels[0]}" in text  # label after a space
        batch = P.encode(llama, prompts)
        pos = llama.positions(batch)
        tokens = llama.to_str_tokens(batch["input_ids"])
        for row, prompt in enumerate(prompts):
            for index in [*(resolve(f"delimiter[{k}]", pos)[row] for k in range(2)), resolve("delimiter", pos)[row]]:
                assert tokens[row][int(index)].endswith(":")
            assert "".join(tokens[row][i] for i in pos.named[row]["query"]).strip() == prompt.query_input
        shuffled = P.shuffle_labels(prompts, seed=0)
        assert sorted(shuffled[0].demo_labels) == sorted(prompts[0].demo_labels)
        assert P.queries(_items(), template=name)[0].render() == query_end.format(x=PAIRS[0][0])
    with pytest.raises(InputError, match="whitespace"):
        P.Template(answer="\nA: ")
    with pytest.raises(InputError, match="Unknown template"):
        P.icl(_items(), n_shots=2, template="nope")


def test_image_query_positions_and_mixed_prompts(llava):
    items = _items(with_images=True)
    xbase = P.icl(items, n_shots=2, modality="text", query_modality="image", seed=0)
    image_icl = P.icl(items, n_shots=2, modality="image", query_modality="text", seed=0)
    assert xbase[0].render("<image>").endswith("Q:<image>\nA:") and len(xbase[0].images) == 1
    assert len(image_icl[0].images) == 2 and image_icl[0].render("<image>").endswith(f"Q:{PAIRS[0][0]}\nA:")
    batch = P.encode(llava, xbase[:3])
    pos = llava.positions(batch)
    query = resolve("query", pos)
    assert query.shape == (3, pos.images[0][-1].numel())
    assert torch.equal(query[0], pos.images[0][-1])
    assert (batch["input_ids"][torch.arange(3)[:, None], query] == llava.cfg.image_token_id).all()


def test_chat_template_variant(llama):
    llama.tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                                     "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        prompts = P.icl(_items(), n_shots=2, seed=0, chat=True)
        batch = P.encode(llama, prompts[:2])
        text = prompts[0].render()
        assert "Q:" in text
        pos = llama.positions(batch)
        assert int(resolve("delimiter", pos)[0]) == int(pos.last[0])
        rendered = llama.to_string(batch["input_ids"][0])
        assert "<|assistant|>" in rendered
        # the template's label prefix is layout, not answer: assistant turns hold the bare label
        spaced = P.icl(_items(), n_shots=2, seed=0, chat=True, template="qa_space")[0]
        rendered = llama.to_string(P.encode(llama, [spaced])["input_ids"][0])
        for label in spaced.demo_labels:
            assert f"<|assistant|>{label}\n" in rendered
    finally:
        llama.tokenizer.chat_template = None


def test_prompt_errors():
    with pytest.raises(TaskError):
        P.icl([], n_shots=2)
    with pytest.raises(TaskError, match="at least 5"):
        P.icl(_items()[:3], n_shots=5)
    with pytest.raises(TaskError, match="empty label"):
        P.icl([dict(input="a", output=" "), *_items()], n_shots=2)
    with pytest.raises(TaskError, match="no image"):
        P.icl(_items(), n_shots=2, modality="image")


# ------------------------------------------------------------------------------------------------ hooks
@torch.no_grad()
def test_patch_add_ablate_record_at_named_positions(llama):
    batch = P.encode(llama, P.icl(_items(), n_shots=2, seed=0)[:3])
    name = "blocks.1.hook_resid_post"
    _, cache = llama.run_with_cache(batch, names_filter=name)
    clean = cache[name]
    idx = resolve("delimiter[-1]", llama.positions(batch))
    vec = torch.randn(llama.cfg.d_model)

    got = {}
    for label, hook, expected in [
        ("patch", patch(vec, at="delimiter[-1]"), vec.expand(3, -1)),
        ("add", add(vec, at="delimiter[-1]", scale=2.0), clean[torch.arange(3), idx] + 2 * vec),
        ("mean", mean_ablate(vec, at="delimiter[-1]"), vec.expand(3, -1)),
        ("zero", zero_ablate(at="delimiter[-1]"), torch.zeros(3, llama.cfg.d_model)),
    ]:
        store = {}
        llama.run_with_hooks(batch, fwd_hooks=[(name, hook), (name, record(store, at="delimiter[-1]"))])
        assert hook.fired == 1
        torch.testing.assert_close(store[name], expected, atol=1e-5, rtol=1e-5)
        got[label] = store[name]
    # a patch touches only its position
    store = {}
    llama.run_with_hooks(batch, fwd_hooks=[(name, patch(vec, at="delimiter[-1]")), (name, record(store, at=0))])
    torch.testing.assert_close(store[name], clean[:, 0])


def test_patch_that_does_not_fire_is_an_error(llama):
    batch = P.encode(llama, P.icl(_items(), n_shots=2, seed=0)[:2])
    hook = patch(torch.zeros(llama.cfg.d_model), at="delimiter")
    with pytest.raises(PatchNotFiredError):
        llama.run_with_cache(batch, names_filter="blocks.0.hook_resid_post", stop_at_layer=1,
                             fwd_hooks=[("blocks.2.hook_resid_post", hook)])
    with pytest.raises(PositionError):
        llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post",
                                                patch(torch.zeros(llama.cfg.d_model), at="delimiter[9]"))])
    with pytest.raises(VectorError, match="width"):
        llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", patch(torch.zeros(7)))])
    assert llama._torch_handles == {}


@torch.no_grad()
def test_run_last_token_equals_full_forward_with_last_token_patch(llama, llava):
    for model, items in ((llama, _items()), (llava, _items(with_images=True))):
        prompts = P.queries(items, modality="image" if model is llava else "text")[:3]
        batch = P.encode(model, prompts)
        vecs = [torch.randn(model.cfg.d_model) for _ in range(2)]
        full = [model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{g}.hook_resid_post", patch(v, at="last"))])[:, -1]
                for g, v in enumerate(vecs)]
        fast = model.run_last_token(batch, repeat=2, fwd_hooks=[
            (f"blocks.{g}.hook_resid_post", patch(v, at=-1, rows=torch.arange(3) * 2 + g))
            for g, v in enumerate(vecs)])
        for g in range(2):
            torch.testing.assert_close(fast[g::2], full[g], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ vectors
@torch.no_grad()
def test_extract_is_mean_of_cached_delimiter_vectors_and_stops_early(llama):
    prompts = P.icl(_items(), n_shots=2, seed=0)
    vec = tvl.extract_task_vector(llama, prompts, layers=[0, 1], batch_size=3, keep_per_prompt=True, progress=False)
    _, cache = llama.run_with_cache(prompts, names_filter=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
                                    positions="delimiter[-1]")
    torch.testing.assert_close(vec[1], cache["blocks.1.hook_resid_post"][:, 0].mean(0), atol=1e-5, rtol=1e-5)
    assert vec.per_prompt.shape == (len(prompts), 2, llama.cfg.d_model)
    torch.testing.assert_close(vec.subsample(len(prompts))[0], vec[0], atol=1e-5, rtol=1e-5)
    ran = []
    handle = llama._mods.layers[2].register_forward_hook(lambda *a: ran.append(1))
    try:
        tvl.extract_task_vector(llama, prompts[:2], layers=[1], progress=False)
    finally:
        handle.remove()
    assert ran == [], "extraction must stop after the deepest requested layer"
    with pytest.raises(LayerOutOfRangeError):
        vec[2]


def test_instruction_ensemble_transfer_cosine(llama):
    inst = tvl.instruction_vector(llama, "The capital city of the country:", layers="all")
    _, cache = llama.run_with_cache("The capital city of the country:", names_filter="blocks.2.hook_resid_post",
                                    positions="last")
    torch.testing.assert_close(inst[2], cache["blocks.2.hook_resid_post"][0, 0], atol=1e-5, rtol=1e-5)
    icl = tvl.extract_task_vector(llama, P.icl(_items(), n_shots=2), progress=False)
    ens = tvl.ensemble([icl, inst])
    torch.testing.assert_close(ens[1], (icl[1] + inst[1]) / 2)
    weighted = tvl.ensemble([icl, inst], weights=[3, 1])
    torch.testing.assert_close(weighted[1], (3 * icl[1] + inst[1]) / 4)
    sims = tvl.cosine_similarity(icl, icl)
    torch.testing.assert_close(sims, torch.ones(3))
    other = tiny_model("mistral").hooked()
    moved = tvl.transfer(icl, to=other)
    assert moved.extra["transferred_to"] == other.cfg.model_name
    small = dataclasses.replace(icl, vectors=icl.vectors[:, :32], d_model=32)
    with pytest.raises(VectorError, match="d_model"):
        tvl.transfer(small, to=other)


def test_vector_file_roundtrip_and_validation(llama, tmp_path):
    vec = tvl.extract_task_vector(llama, P.icl(_items(), n_shots=2), keep_per_prompt=True, task="cc", seed=3,
                                  progress=False)
    path = vec.save(tmp_path / "v.safetensors")
    back = tvl.TaskVector.load(path)
    assert torch.equal(back.vectors, vec.vectors) and torch.equal(back.per_prompt, vec.per_prompt)
    assert (back.task, back.seed, back.layers, back.model_name) == ("cc", 3, vec.layers, vec.model_name)
    assert "TaskVector" in back._repr_html_() and "cc" in repr(back)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(VectorError, match="corrupted|not a safetensors"):
        tvl.TaskVector.load(bad)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"vectors": torch.zeros(2, 3)}, foreign)
    with pytest.raises(VectorError, match="metadata"):
        tvl.TaskVector.load(foreign)
    pickle_file = tmp_path / "vec.pt"
    torch.save({"vectors": torch.zeros(2)}, pickle_file)
    with pytest.raises(VectorError):
        tvl.TaskVector.load(pickle_file)


# ------------------------------------------------------------------------------------------------ evaluation
def test_scoring_rules():
    assert first_token_correct(" Par", "Paris") and first_token_correct("Paris", "Par")
    assert not first_token_correct(" ", "Paris") and not first_token_correct("paris", "Paris")
    assert first_token_correct("paris", "Paris", case_sensitive=False)
    assert exact_match(" Paris\nQ:", "Paris") and not exact_match("Paris France", "Paris")
    import pandas as pd

    assert best_layer(pd.Series({3: 0.5, 1: 0.5, 2: 0.1})) == 1


@torch.no_grad()
def test_sweep_fast_path_equals_repeated_batches(llama):
    prompts = P.queries(_items())
    vec = tvl.extract_task_vector(llama, P.icl(_items(), n_shots=2), progress=False)
    fast = _sweep_first_tokens(llama, prompts, vec, [0, 1, 2], "replace", 256, False, "")
    slow_model = dataclasses.replace(llama.adapter, prefix_reuse=False)
    object.__setattr__(llama, "adapter", slow_model)
    try:
        slow = _sweep_first_tokens(llama, prompts, vec, [0, 1, 2], "replace", 256, False, "")
    finally:
        object.__setattr__(llama, "adapter", dataclasses.replace(llama.adapter, prefix_reuse=True))
    assert fast == slow
    # and each row equals an explicit single-layer patch
    batch = P.encode(llama, prompts)
    logits = llama.run_with_hooks(batch, fwd_hooks=vec.hooks(2, at="delimiter"))
    assert fast[2] == [llama.to_string(t[None]) for t in logits[:, -1].argmax(-1)]


@torch.no_grad()
def test_sweep_seed_column_is_the_vectors_seed(llama):
    vecs = [tvl.extract_task_vector(llama, P.icl(_items(), n_shots=2, seed=s), seed=s, progress=False) for s in (5, 7)]
    assert sorted(tvl.layer_sweep(llama, vecs, _items(), progress=False).scores["seed"].unique()) == [5, 7]
    unseeded = [dataclasses.replace(v, seed=None) for v in vecs]
    assert sorted(tvl.layer_sweep(llama, unseeded, _items(), progress=False).scores["seed"].unique()) == [0, 1]


def test_evaluate_methods_table_and_sweep(llava):
    items = _items(with_images=True)
    scored, pool = items[:4], items[4:]
    text_vec = tvl.extract_task_vector(llava, P.icl(items, n_shots=2, modality="text"), progress=False)
    image_vec = tvl.extract_task_vector(llava, P.icl(items, n_shots=2, modality="image"), progress=False)
    sweep = tvl.layer_sweep(llava, text_vec, items, query_modality="image", progress=False)
    by_layer = sweep.scores.groupby("layer")["accuracy"].mean()
    assert set(sweep.scores["layer"]) == {0, 1, 2}
    assert by_layer[sweep.best] == by_layer.max() and all(by_layer[l] < by_layer.max() for l in by_layer.index
                                                          if l < sweep.best)
    res = tvl.evaluate(llava, scored, ["no_context", "majority", "base", "xbase", "patch", "xpatch"], pool=pool,
                       vectors={"patch": image_vec, "xpatch": text_vec}, layer=sweep.best, query_modality="image",
                       n_shots=2, seeds=(0, 1), max_new_tokens=2, progress=False)
    table = res.table()
    assert list(table.index) == ["no_context", "majority", "base", "xbase", "patch", "xpatch"]
    assert len(res.scores) == 12 and len(res.predictions) == 12 * len(scored)
    patched = res.predictions.query("method == 'xpatch' and seed == 0")["answer"].tolist()
    plain = res.predictions.query("method == 'no_context' and seed == 0")["answer"].tolist()
    assert patched != plain, "patching the vector must change what the model says"
    demo_inputs = {d for labels in res.predictions.query("method == 'base'")["demo_labels"] for d in labels}
    assert demo_inputs <= {it["output"] for it in pool}, "demos come from the pool, never the scored items"
    with pytest.raises(IncompatibleArgumentsError):
        tvl.evaluate(llava, items, ["xpatch"], query_modality="image", progress=False)
    with pytest.raises(IncompatibleArgumentsError):
        tvl.evaluate(llava, items, ["bogus"], progress=False)
    with pytest.raises(TaskError):
        tvl.evaluate(llava, [], ["no_context"], progress=False)


VLM_FAMILIES = [f for f in available_families() if f not in TEXT_ONLY_FAMILIES]


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_icl_positions_in_every_family(family):
    tiny = tiny_model(family)
    model = tiny.hooked()
    # Repeated labels on purpose: the alignment of plain and expanded tokens must not be fooled by repetition.
    items = [dict(input=f"c{i}", output="Euro" if i % 2 else "Lari", image=random_image(*tiny.image_size, seed=i))
             for i in range(6)]
    if model.adapter.images_first:
        with pytest.raises(InputError):
            P.encode(model, P.queries(items, modality="image")[:1])
        return
    n_shots = 2 if (model.adapter.max_images_per_prompt or 3) >= 3 else 0
    prompts = P.icl(items, n_shots=n_shots, modality="image", seed=0)[:2] if n_shots else P.queries(items, "image")[:2]
    batch = P.encode(model, prompts)
    pos = model.positions(batch)
    for row in range(2):
        tokens = model.to_str_tokens(batch["input_ids"][row])
        delimiters = pos.named[row]["demo_delimiters"] + pos.named[row]["final_delimiter"]
        assert len(delimiters) == n_shots + 1
        for index in delimiters:
            assert tokens[index].strip() == ":" and tokens[index - 1].strip() == "A", (family, tokens[index - 2:index + 1])
        assert pos.named[row]["query"] == pos.images[row][-1].tolist()


@torch.no_grad()
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_cross_modal_patches_in_every_family(family, llama):
    """Text vector -> image queries, image vector -> text queries, LLM (tiny Llama) vector -> VLM queries: each patch
    lands on the query's delimiter (the ``A:`` colon), holds the vector there, and changes the answer logits."""
    tiny = tiny_model(family)
    model = tiny.hooked()
    items = [dict(input=f"c{i}", output=f"d{i}", image=random_image(*tiny.image_size, seed=i)) for i in range(6)]
    layer = 1
    name = f"blocks.{layer}.hook_resid_post"
    llm_vec = tvl.transfer(tvl.extract_task_vector(llama, P.icl(items, n_shots=2), progress=False), to=model)
    assert llm_vec.extra["transferred_to"] == model.cfg.model_name
    cases = [("llm -> text query", llm_vec, P.queries(items[:2], "text"))]
    if model.adapter.images_first:   # Fuyu: an image must come first, so image queries and image demos are refused
        with pytest.raises(InputError):
            P.encode(model, P.queries(items[:2], "image"))
    else:
        text_vec = tvl.extract_task_vector(model, P.icl(items, n_shots=2, modality="text"), progress=False)
        image_vec = tvl.extract_task_vector(model, P.icl(items, n_shots=2, modality="image"), progress=False)
        assert (text_vec.modality, image_vec.modality) == ("text", "image")
        cases += [("text -> image query", text_vec, P.queries(items[:2], "image")),
                  ("image -> text query", image_vec, P.queries(items[:2], "text")),
                  ("llm -> image query", llm_vec, P.queries(items[:2], "image"))]
    for label, vec, queries in cases:
        batch = P.encode(model, queries)
        clean = model(batch)
        delimiter = resolve("delimiter", model.positions(batch))
        tokens = model.to_str_tokens(batch["input_ids"])
        for row in range(2):
            d = int(delimiter[row])
            assert tokens[row][d].strip() == ":" and tokens[row][d - 1].strip() == "A", (family, label)
        logits, cache = model.run_with_cache(batch, names_filter=name,
                                             fwd_hooks=[(name, patch(vec[layer], at="delimiter"))])
        held = cache[name][torch.arange(2), delimiter]
        torch.testing.assert_close(held, vec[layer].expand(2, -1).to(held.dtype), msg=f"{family}: {label}")
        assert (logits[:, -1] - clean[:, -1]).abs().max() > 1e-4, (family, label)


@torch.no_grad()
def test_generate_inside_hooks_block_patches_the_prompt_only(llama):
    queries = P.queries(_items())[:3]
    vec = torch.randn(llama.cfg.d_model) * 3
    name = "blocks.1.hook_resid_post"
    direct = llama.generate(queries, max_new_tokens=4, fwd_hooks=[(name, patch(vec, at="delimiter"))],
                            return_new_tokens_only=True)
    hook = patch(vec, at="delimiter")
    with llama.hooks([(name, hook)]):
        inside = llama.generate(queries, max_new_tokens=4, return_new_tokens_only=True)
    assert torch.equal(direct, inside) and hook.fired == 1
    assert not torch.equal(direct, llama.generate(queries, max_new_tokens=4, return_new_tokens_only=True))


def test_demos_of_an_item_do_not_depend_on_other_items():
    items = _items()
    whole = P.icl(items, n_shots=3, seed=2)
    part = P.icl(items[4:], n_shots=3, pool=items, seed=2)
    assert [p.render() for p in whole[4:]] == [p.render() for p in part]


# --- issue 24: wrongly shaped vectors and unwritable folders are typed errors ---
@pytest.mark.parametrize("shape", [(), (3, 4, 64), (2, 64)])
def test_a_wrongly_shaped_tensor_as_a_vector_is_a_vector_error(llama, shape):
    """A 0-d tensor, a 3-d one, or rows that fit neither the batch nor the span: VectorError, not IndexError."""
    from tv_lens.errors import VectorError

    with pytest.raises(VectorError, match=r"\[d_model\]"):
        with llama.hooks([("blocks.0.hook_resid_post", tvl.hooks.patch(torch.zeros(shape), at="last"))]):
            llama("Q:a\nA:")
    assert llama._torch_handles == {}   # the hook is gone after the error


def test_saving_a_vector_into_an_unwritable_folder_is_an_output_path_error(llama, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from tv_lens.errors import OutputPathError

    vec = tvl.extract_task_vector(llama, P.icl(_items(), n_shots=2), layers=[0], progress=False)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputPathError, match="folder you can write to"):
        vec.save(tmp_path / "file" / "v.safetensors")          # the parent is a file: cannot be created

    def refuse(*args, **kwargs):   # what safetensors raises for a read-only folder (root ignores chmod in CI)
        raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")

    monkeypatch.setattr("safetensors.torch.save_file", refuse)
    with pytest.raises(OutputPathError, match="Permission denied"):
        vec.save(tmp_path / "v.safetensors")
    assert not list(tmp_path.glob(".v.tmp*"))                    # no temp file left behind
