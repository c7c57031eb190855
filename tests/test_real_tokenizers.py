"""Positions, prompts and the pipeline on the REAL tokenizers and chat templates of the paper's checkpoints:
Mistral-7B-v0.1's sentencepiece (Idefics2-8b's text tokenizer; LLaVA-1.5's algorithm) and SmolLM2's byte-level
BPE with its ChatML template (tv_lens.testing.real_tokenizers). Every named position decodes to what the docs say,
or a typed error names the fix — never a silent wrong token."""

from __future__ import annotations

import hashlib
import warnings
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from position_checks import (IMAGE_MODELS, NAMES, SYMBOLS, build_prompt, encode_checked, items_for, kinds_of,
                             nows)

import tv_lens as tvl
from tv_lens import prompts as P
from tv_lens.errors import InputError, TvLensError
from tv_lens.positions import resolve
from tv_lens.testing.chat_templates import IDEFICS2_8B, LLAVA_1_5_7B, SMOLLM2_135M
from tv_lens.testing.real_tokenizers import (MISTRAL_7B_V01_SHA256, MISTRAL_MODEL_MEMBER, mistral_tokenizer,
                                             mistral_wheel, real_tokenizer_model)

TEXT = st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=5).map("".join).filter(lambda s: s.strip() != "")


@pytest.fixture(scope="module")
def real():
    """Hooked tiny models on the real tokenizers, built once: name -> (hooked model, tiny)."""
    out = {}
    for name in NAMES:
        tiny = real_tokenizer_model(name)
        out[name] = (tiny.hooked(), tiny)
    return out


_items = items_for


def _row(batch, model):
    return batch["input_ids"][0], model.positions(batch)


# ------------------------------------------------------------------------------------------ the fixtures are real
def test_mistral_tokenizer_is_mistral_7b_v01():
    with zipfile.ZipFile(mistral_wheel()) as archive:
        assert hashlib.sha256(archive.read(MISTRAL_MODEL_MEMBER)).hexdigest() == MISTRAL_7B_V01_SHA256
    tok = mistral_tokenizer()
    assert len(tok) == 32000 and tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.convert_ids_to_tokens(tok("Paris")["input_ids"]) == ["<s>", "▁Paris"]
    # byte fallback: a rare emoji is its four UTF-8 bytes
    assert tok.convert_ids_to_tokens(tok("🦩", add_special_tokens=False)["input_ids"])[-4:] == [
        "<0xF0>", "<0x9F>", "<0xA6>", "<0xA9>"]


def test_checkpoint_special_tokens_sit_at_their_ids(real):
    idefics2 = real["idefics2"][1].tokenizer
    assert [idefics2.convert_tokens_to_ids(t) for t in ("<fake_token_around_image>", "<image>",
                                                        "<end_of_utterance>")] == [32000, 32001, 32002]
    llava = real["llava"][1].tokenizer
    assert llava.convert_tokens_to_ids("<image>") == 32000 and llava.pad_token_id == 32001
    smol = real["smollm2"][1].tokenizer
    assert len(smol) == 49152 and smol.chat_template == SMOLLM2_135M.template
    assert real["idefics2"][1].processor.chat_template == IDEFICS2_8B.template
    assert real["llava"][1].processor.chat_template == LLAVA_1_5_7B.template


@pytest.mark.parametrize("template", [LLAVA_1_5_7B, IDEFICS2_8B])
def test_typed_part_templates_render_no_text_from_strings(template):
    """Why typed parts matter: given a plain string, these checkpoints' templates render none of it."""
    tok = mistral_tokenizer()
    tok.chat_template = template.template
    plain = tok.apply_chat_template([{"role": "user", "content": "France"}], tokenize=False,
                                    add_generation_prompt=True)
    typed = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "France"}]}],
                                    tokenize=False, add_generation_prompt=True)
    assert "France" not in plain and "France" in typed and typed.endswith(template.generation_prompt)


# ------------------------------------------------------------------------------ characters that are several tokens
@pytest.mark.parametrize("name, word", [("mistral", "Kyiv🦩"), ("idefics2", "北京🦩"), ("smollm2", "北京")])
def test_query_span_covers_every_token_of_its_characters(real, name, word):
    model, tiny = real[name]
    items = _items(tiny, [("France", "Paris"), (word, "x")])
    batch = P.encode(model, [P.icl_prompt(items[:1], items[1])])
    ids, pos = _row(batch, model)
    span = resolve("query", pos)[0].tolist()
    assert model.tokenizer.decode(ids[span]).strip() == word
    assert int(resolve("query[-1]", pos)[0]) == span[-1]
    assert int(resolve("delimiter", pos)[0]) == span[-1] + 3   # "\n", "A", ":"


@pytest.mark.parametrize("name", ["mistral", "smollm2"])
def test_instruction_ending_in_a_multi_token_character_reads_its_last_token(real, name):
    model, _ = real[name]
    batch = P.encode(model, [P.instruction("The capital of 北京🦩")])
    _, pos = _row(batch, model)
    assert int(resolve("delimiter", pos)[0]) == int(pos.last[0])


# ---------------------------------------------------------------------------------------- chat marks and delimiters
@pytest.mark.parametrize("label", ["tart", "ant", "im", "assistant"])
def test_chatml_marks_come_from_the_rendering_not_substring_search(real, label):
    """A label 'tart' occurs inside '<|im_start|>', 'ant' inside 'assistant': neither may move a mark."""
    model, tiny = real["smollm2"]
    items = _items(tiny, [("France", label), ("Spain", "Madrid"), ("Italy", "Rome")])
    batch = P.encode(model, [P.icl_prompt(items[:2], items[2], chat=True)])
    ids, pos = _row(batch, model)
    newline = model.tokenizer("\n", add_special_tokens=False)["input_ids"]
    for k, want in enumerate([label, "Madrid"]):
        d = int(resolve(f"delimiter[{k}]", pos)[0])
        assert [int(ids[d])] == newline   # the last token of the generation prompt "<|im_start|>assistant\n"
        assert model.tokenizer.decode(ids[d + 1:]).startswith(want + "<|im_end|>")
    assert int(resolve("delimiter", pos)[0]) == int(pos.last[0]) and [int(ids[-1])] == newline


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("query_modality", ["text", "image"])
def test_checkpoint_chat_templates_get_typed_parts(real, name, query_modality):
    """LLaVA-1.5's and Idefics2-8b's own templates: chat=True renders every demo, answer and the query."""
    model, tiny = real[name]
    items = _items(tiny, [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")])
    prompt = P.icl_prompt(items[:2], items[2], query_modality=query_modality, chat=True)
    batch = P.encode(model, [prompt])
    text = model.to_string(batch["input_ids"][0])
    for word in ("France", "Paris", "Spain", "Madrid"):
        assert word in text
    assert encode_checked(model, prompt) == "ok"


def test_idefics2_chat_delimiter_is_the_colon_never_the_answer(real):
    """Idefics2's template writes `Assistant: {y}`: the space joins the answer (`▁Paris`); the delimiter is `:`."""
    model, tiny = real["idefics2"]
    items = _items(tiny, [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")])
    batch = P.encode(model, [P.icl_prompt(items[:2], items[2], chat=True)])
    ids, pos = _row(batch, model)
    colon = model.tokenizer.convert_tokens_to_ids(":")
    for k, label in enumerate(["Paris", "Madrid"]):
        d = int(resolve(f"delimiter[{k}]", pos)[0])
        assert int(ids[d]) == colon
        answer_token = model.tokenizer.convert_ids_to_tokens(int(ids[d + 1]))   # "▁Paris": space and answer
        assert answer_token.startswith("▁") and label.startswith(answer_token[1:])
        assert model.to_string(ids[d - 3:d + 1]).endswith("Assistant:")
    assert int(ids[int(resolve("delimiter", pos)[0])]) == colon


def test_a_template_rendering_no_content_is_a_typed_error(real):
    model, tiny = real["smollm2"]
    items = _items(tiny, [("France", "Paris"), ("Spain", "Madrid")])
    saved = model.tokenizer.chat_template
    model.tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>\n{% endfor %}"
    try:
        with pytest.raises(InputError, match="chat=False"):
            P.encode(model, [P.icl_prompt(items[:1], items[1], chat=True)])
    finally:
        model.tokenizer.chat_template = saved


def test_a_template_that_rewrites_content_is_a_typed_error(real):
    model, tiny = real["smollm2"]
    items = _items(tiny, [("France", "Paris"), ("Spain", "Madrid")])
    saved = model.tokenizer.chat_template
    model.tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'][:3] }}\n"
                                     "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        with pytest.raises(InputError, match="chat template"):
            P.encode(model, [P.icl_prompt(items[:1], items[1], chat=True)])
    finally:
        model.tokenizer.chat_template = saved


# ------------------------------------------------------------------------------------ a delimiter merged with y
@pytest.mark.parametrize("name", ["mistral", "smollm2"])
def test_a_delimiter_merged_with_the_answer_warns_once_naming_qa_space(real, name):
    model, tiny = real[name]
    items = _items(tiny, [("France", '"Paris"'), ("Spain", "Madrid")])
    P._WARNED.clear()
    with pytest.warns(P.DelimiterWarning, match="qa_space"):
        batch = P.encode(model, [P.icl_prompt(items[:1], items[1])])
    ids, pos = _row(batch, model)
    assert nows(model.to_string(ids[int(resolve("delimiter[0]", pos)[0])])) == ':"'   # the merge is real
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.encode(model, [P.icl_prompt(items[:1], items[1])])                     # once
        batch = P.encode(model, [P.icl_prompt(items[:1], items[1], template="qa_space")])   # qa_space: no merge
    ids, pos = _row(batch, model)
    assert model.to_string(ids[int(resolve("delimiter[0]", pos)[0])]) == ":"


@pytest.mark.parametrize("demo_modality", ["text", "image"])
def test_idefics2_space_after_an_image_is_handled(real, demo_modality):
    """Idefics2 writes `<fake_token_around_image>:` as `▁:`: the `colon` template still finds every delimiter."""
    model, tiny = real["idefics2"]
    items = _items(tiny, [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")])
    prompt = P.icl_prompt(items[:2], items[2], demo_modality=demo_modality, query_modality="image",
                          template="colon")
    batch = P.encode(model, [prompt])
    ids, pos = _row(batch, model)
    for k in range(2):
        assert nows(model.to_string(ids[int(resolve(f"delimiter[{k}]", pos)[0])])) == ":"
    assert model.tokenizer.convert_ids_to_tokens(int(ids[int(resolve("delimiter", pos)[0])])) == "▁:"
    assert encode_checked(model, prompt) == "ok"


@pytest.mark.parametrize("template", ["colon", "qa", "qa_space"])
def test_idefics2_image_splitting_keeps_every_position(template):
    """With the checkpoint's do_image_splitting=True (5 runs of image tokens per image) on the real tokenizer."""
    tiny = real_tokenizer_model("idefics2", do_image_splitting=True)
    model = tiny.hooked()
    items = _items(tiny, [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")])
    for chat in (False, True):
        prompt = P.icl_prompt(items[:2], items[2], demo_modality="image", query_modality="image",
                              template=template, chat=chat)
        assert encode_checked(model, prompt) in ("ok", "merged")


# ------------------------------------------------------------------------- the pipeline on real tokenization
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_parity_and_pipeline_on_real_tokenization(real, name):
    """HF parity, extract -> patch -> evaluate, a patching grid and the lens, on real tokens and chat templates."""
    model, tiny = real[name]
    pairs = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("北京🦩", "中国")]
    items = _items(tiny, pairs)
    pool, scored = items[2:], items[:2]
    prompts = P.icl(pool, n_shots=2, chat=True)
    batch = P.encode(model, prompts)
    with torch.no_grad():
        hf = tiny.model(**dict(batch)).logits
    torch.testing.assert_close(model(batch), hf, atol=1e-5, rtol=0)
    vec = tvl.extract_task_vector(model, prompts, layers="all", progress=False)
    pos = model.positions(batch)
    delimiters, rows = resolve("delimiter[-1]", pos), torch.arange(len(prompts))
    read, patched = batch["input_ids"][rows, delimiters], batch["input_ids"][rows, resolve("delimiter", pos)]
    assert torch.equal(read, patched)   # the generation prompt's last token (`:`; `]` of LLaVA-NeXT's [/INST])
    result = tvl.evaluate(model, scored, methods=["no_context", "xbase", "xpatch"], vector=vec, layer=1,
                          chat=True, query_modality="image", n_shots=2, pool=pool, seeds=(0,), max_new_tokens=1,
                          progress=False)
    assert len(result.predictions) == 6
    clean = P.query(scored[0], modality="image", chat=True)
    corrupted = P.query(scored[1], modality="image", chat=True)
    grid = tvl.patching.activation_patching(model, clean, corrupted, tvl.patching.kl_divergence(),
                                            positions=["delimiter", "query"], progress=False)
    assert grid.scores.shape[0] == model.cfg.n_layers
    lens = tvl.lens.lens_over_layers(model, prompts, position="delimiter[-1]", targets=False, progress=False)
    assert torch.equal(lens.positions[:, 0].cpu(), delimiters.cpu())   # the lens reads the demo's ':'


@pytest.mark.parametrize("name", NAMES)
def test_hooked_logits_equal_hf_on_real_tokens(real, name):
    """Parity with HF on prompts written by the real tokenizers (chat where the checkpoint has a template)."""
    model, tiny = real[name]
    items = _items(tiny, [("France", "Paris"), ("北京🦩", '"x"'), ("Spain", "Madrid")])
    batch = P.encode(model, [P.icl_prompt(items[:2], items[2], chat=name != "mistral"), P.query(items[1])])
    with torch.no_grad():
        hf = tiny.model(**dict(batch)).logits
    torch.testing.assert_close(model(batch), hf, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ property test
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_named_position_decodes_to_what_the_docs_say(real, name, data):
    model, tiny = real[name]
    kind = data.draw(st.sampled_from(kinds_of(name)), label="kind")
    template = data.draw(st.sampled_from(sorted(P.TEMPLATES)), label="template")
    chat = data.draw(st.booleans(), label="chat") and kind != "instruction"
    xs = data.draw(st.lists(TEXT, min_size=3, max_size=3), label="inputs")
    ys = data.draw(st.lists(TEXT, min_size=3, max_size=3), label="labels")
    prompt = build_prompt(tiny, kind, template, chat, xs, ys)
    try:
        encode_checked(model, prompt)
    except TvLensError as error:   # a typed error is an allowed outcome; it must say what to do
        assert chat and name == "mistral" and "chat=False" in str(error), f"unexpected typed error: {error}"
