"""Each remaining paper result is one call: Table 6 (chat), Figure 9 (task conflict), A.4 (instruction phases),
Figure 10 / A.5 (descriptions), Idefics2 as the paper ran it, and the phase sets as the paper defines them."""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
import torch

import tv_lens as tvl
from tv_lens import lens
from tv_lens import prompts as P
from tv_lens.errors import IncompatibleArgumentsError, TaskError
from tv_lens.evaluate import first_token_correct, predict
from tv_lens.testing import random_image, tiny_model

PAIRS = [("France", "Paris"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"), ("Cuba", "Havana"),
         ("Fiji", "Suva"), ("Mali", "Bamako"), ("Spain", "Madrid")]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _items(with_images=False):
    return [dict(input=x, output=y, image=random_image(32, 32, seed=i) if with_images else None)
            for i, (x, y) in enumerate(PAIRS)]


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama").hooked()
    model.tokenizer.chat_template = CHAT
    return model


@torch.no_grad()
def test_table6_chat_template_runs_inside_evaluate(llama):
    items = _items()
    scored, pool = items[:3], items[3:]
    vecs = tvl.extract_task_vectors(llama, scored, n_shots=2, pool=pool, chat=True, seeds=(0,), progress=False)
    res = tvl.evaluate(llama, scored, ["no_context", "base", "patch"], vectors={"patch": vecs}, layer=1, pool=pool,
                       n_shots=2, chat=True, seeds=(0,), max_new_tokens=2, progress=False)
    chat_queries = P.queries(scored, chat=True)
    assert "<|assistant|>" in llama.to_string(P.encode(llama, chat_queries[:1])["input_ids"][0])
    expected = predict(llama, chat_queries, lambda n: vecs[0].hooks(1, at="delimiter"), max_new_tokens=2)
    assert res.predictions.query("method == 'patch'")["answer"].tolist() == [full for _, full in expected]
    plain = tvl.evaluate(llama, scored, ["no_context"], seeds=(0,), max_new_tokens=2, progress=False)
    chat_plain = predict(llama, chat_queries, None, max_new_tokens=2)
    assert res.predictions.query("method == 'no_context'")["answer"].tolist() == [f for _, f in chat_plain]
    assert plain.predictions["answer"].tolist() == [f for _, f in predict(llama, P.queries(scored), None, 2)]


@torch.no_grad()
def test_figure9_task_conflict_gives_both_answers_per_query(llama):
    items = _items()[:4]
    inst = tvl.instruction_vector(llama, "The capital city of the country:")
    # the tiny model's residual at any ':' is mostly the ':' embedding; a random vector stands for a conflicting task
    inst = dataclasses.replace(inst, vectors=torch.randn(inst.vectors.shape, generator=torch.Generator().manual_seed(0))
                               * inst.vectors.norm(dim=-1, keepdim=True))
    frame = tvl.evaluate_conflict(llama, items, "Name the continent of the country:", inst, layer=1,
                                  query_modality="text", max_new_tokens=2)
    prompts = [P.instructed_query(it, "Name the continent of the country:") for it in items]
    assert prompts[0].render().startswith("Name the continent of the country:\nQ:France\nA:")
    plain = predict(llama, prompts, None, max_new_tokens=2)
    patched = predict(llama, prompts, lambda n: inst.hooks(1, at="delimiter"), max_new_tokens=2)
    assert frame["xbase_answer"].tolist() == [f for _, f in plain]
    assert frame["xpatch_answer"].tolist() == [f for _, f in patched]
    assert frame["xbase_answer"].tolist() != frame["xpatch_answer"].tolist()
    assert frame["xpatch_correct"].tolist() == [first_token_correct(a, it["output"]) for (a, _), it in
                                                zip(patched, items)]


@torch.no_grad()
def test_a4_instruction_phase_curves_need_no_label(llama):
    task = tvl.tasks.load("country-capital")
    curves = lens.phase_curves(llama, [P.instruction(task.instruction)], task=task, progress=False)
    assert curves.sets == ["input", "task", "answer"] and curves.n_prompts == 1
    answer = lens.token_set(llama, task.labels, "answer", warn=False)
    assert curves.token_sets["answer"] == ", ".join(repr(t) for t in answer.tokens)


@torch.no_grad()
def test_input_set_is_what_the_delimiter_decodes_to_in_early_layers(llama):
    prompts = P.icl(_items(), n_shots=2, seed=0)
    measured = lens.input_token_set(llama, prompts, layers=[0])
    _, cache = llama.run_with_cache(prompts, names_filter="blocks.0.hook_resid_post", positions="last")
    top1 = lens.logit_lens(llama, cache["blocks.0.hook_resid_post"][:, -1]).argmax(-1).tolist()
    most = max(set(top1), key=lambda t: (top1.count(t), -t))
    assert measured.ids[0] == most and set(measured.ids) <= set(top1)
    sets = lens.default_token_sets(llama, "country-capital", prompts)
    assert sets["input"].ids == lens.input_token_set(llama, prompts).ids
    assert lens.default_token_sets(llama, "country-capital")["input"].tokens == (":",)   # no prompts: the colon


def test_shows_order_needs_peaks_above_noise():
    per_prompt = torch.zeros(2, 3, 3)
    per_prompt[:, 0, 0], per_prompt[:, 1, 1], per_prompt[:, 2, 2] = 0.0006, 0.3, 0.5
    curves = lens.PhaseCurves(frame=lens.summarize(per_prompt, [0, 1, 2], ["input", "task", "answer"]),
                              per_prompt=per_prompt, sets=["input", "task", "answer"], layers=[0, 1, 2],
                              token_sets={}, top1_ids=torch.zeros(2, 3, dtype=torch.long), token_strings={0: "x"})
    assert curves.order() == ["input", "task", "answer"]
    assert not curves.shows_order(), "an input curve peaking at 0.0006 shows no input phase"
    assert curves.shows_order(min_peak=0.0005)


def test_idefics2_loads_without_image_splitting_as_the_paper_ran_it():
    from tv_lens.adapters.idefics2 import set_image_splitting
    from tv_lens.testing.idefics2 import N_LATENTS, build_idefics2

    tiny = build_idefics2(do_image_splitting=True)   # the hub checkpoint's processor splits
    with tempfile.TemporaryDirectory() as folder:
        tiny.model.save_pretrained(folder)
        tiny.processor.save_pretrained(folder)
        model = tvl.HookedMultimodalModel.from_pretrained(folder)
    image_id = model.processor.tokenizer.convert_tokens_to_ids("<image>")
    image = random_image(32, 32, seed=0)

    def n_image_tokens():
        return int((model.prepare(["Q:<image>\nA:"], images=[[image]])["input_ids"] == image_id).sum())

    assert n_image_tokens() == N_LATENTS
    set_image_splitting(model, True)
    assert n_image_tokens() == 5 * N_LATENTS
    with pytest.raises(IncompatibleArgumentsError):
        set_image_splitting(tiny_model("llama").hooked(), False)


def test_a5_descriptions_ship_as_data():
    groups = tvl.tasks.paper_descriptions()
    assert {g: len(v) for g, v in groups.items()} == {"logo": 3, "character": 3, "meme": 2}
    assert groups["logo"][0].input == "The logo is a rainbow-colored apple." and groups["logo"][0].output == "Apple"
    with_image = tvl.tasks.paper_descriptions("meme", images={"Doge": "/tmp/doge.png"})["meme"]
    assert [it.image for it in with_image] == [None, "/tmp/doge.png"]
    with pytest.raises(TaskError):
        tvl.tasks.paper_descriptions("memes")
    with pytest.raises(TaskError):
        tvl.tasks.paper_descriptions(images={"Grumpy Cat": "x.png"})
