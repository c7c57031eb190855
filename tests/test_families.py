"""Family-specific behaviour the shared core tests cannot see (one section per family group; append new sections)."""

from __future__ import annotations

import pytest
import torch
from helpers import two_prompts

from tv_lens.testing import available_families, random_image, tiny_model

_TINY: dict[str, tuple] = {}


def _tiny(family: str):
    """(TinyModel, hooked) per family, built once per test session."""
    if family not in _TINY:
        tiny = tiny_model(family)
        _TINY[family] = (tiny, tiny.hooked())
    return _TINY[family]


def _image_inputs(inputs: dict) -> dict:
    """The processor outputs that feed the vision side (everything but the per-token text inputs)."""
    return {k: v for k, v in inputs.items()
            if k not in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "offset_mapping")}


# ---------------------------------------------------------------- LLaVA-NeXT / OneVision, Qwen2(.5)-VL, Gemma 3
VLM_FAMILIES = [f for f in ("llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "gemma3")
                if f in available_families()]


@torch.no_grad()
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_span_j_holds_image_j_features(family):
    """Every span image[j] holds exactly image j's features as HF merges them (after tiling, packing, newlines)."""
    tiny, hooked = _tiny(family)
    inputs, _ = two_prompts(tiny, hooked, n_images=(1, 2))
    per_image = list(tiny.model.get_image_features(**_image_inputs(inputs)).pooler_output)
    _, cache = hooked.run_with_cache(inputs, names_filter="hook_embed")
    spans = [(row, span) for row, row_spans in enumerate(hooked.positions(inputs).images) for span in row_spans]
    assert len(spans) == len(per_image) == 3
    for (row, span), features in zip(spans, per_image):
        torch.testing.assert_close(cache["hook_embed"][row, span], features.to(cache["hook_embed"].dtype),
                                   atol=1e-6, rtol=0)


@torch.no_grad()
def test_llava_next_anyres_spans_for_images_of_different_sizes():
    """Anyres: token count per image depends on its size; spans follow, and the projector sees one entry per crop."""
    tiny, hooked = _tiny("llava_next")
    sizes = [(48, 32), (32, 64), (64, 64), (32, 32)]          # (width, height): 1x2, 2x1, 2x2 and 1x1 grids
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    ph = hooked.image_placeholder
    text = "".join(f"Q:{ph}\nA:x{i}\n\n" for i in range(len(sizes) - 1)) + f"Q:{ph}\nA:"
    inputs = hooked.prepare([text], images=[images])
    expected = tiny.processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in sizes])["num_image_tokens"]
    spans = hooked.positions(inputs).images[0]
    assert [len(s) for s in spans] == expected
    assert len(set(expected)) == len(expected), "the four sizes must give four different token counts"
    _, cache = hooked.run_with_cache(inputs, names_filter=["hook_image_features", "hook_embed"])
    crops = [1 + gh * gw for gh, gw in ((1, 2), (2, 1), (2, 2), (1, 1))]   # base image + grid crops
    assert cache["hook_image_features"].shape == (sum(crops), 16, hooked.cfg.d_model)
    per_image = tiny.model.get_image_features(**_image_inputs(inputs)).pooler_output
    for span, features in zip(spans, per_image):
        torch.testing.assert_close(cache["hook_embed"][0, span], features, atol=1e-6, rtol=0)


@torch.no_grad()
def test_llava_onevision_multi_image_rows_use_base_crop_only():
    tiny, hooked = _tiny("llava_onevision")
    inputs, _ = two_prompts(tiny, hooked, n_images=(1, 2))
    lengths = [[len(s) for s in row] for row in hooked.positions(inputs).images]
    base = (32 // 8) ** 2 + 1                                   # one crop's tokens + the image newline
    assert lengths[1] == [base, base]
    assert lengths[0][0] > base                                 # a lone image is tiled (anyres)


def _greedy_full_recompute(hooked, inputs, fwd_hooks, n_new, eos_id, pad_id):
    """The paper's loop (no KV cache, the whole patched prefix re-run per token), with HF's end-of-sequence rule:
    once a row has produced EOS it is padded."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    out = []
    for _ in range(n_new):
        logits = hooked.run_with_hooks({"input_ids": ids, "attention_mask": mask, **extra}, fwd_hooks=fwd_hooks)
        nxt = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits[:, -1].argmax(-1))
        done |= nxt == eos_id
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
    return torch.stack(out, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_generate_with_patch_matches_recompute_with_eos(family):
    """Like the core test, but rows that emit EOS are padded in the reference loop too, as HF generate does."""
    tiny, hooked = _tiny(family)
    inputs, _ = two_prompts(tiny, hooked)
    torch.manual_seed(0)
    direction = torch.randn(hooked.cfg.d_model) * 3
    pos = inputs["input_ids"].shape[1] - 2

    def patch(resid, hook):
        resid = resid.clone()
        resid[:, pos] = direction
        return resid

    hooks = [("blocks.1.hook_resid_post", patch)]
    fast = hooked.generate(inputs, max_new_tokens=6, fwd_hooks=hooks, return_new_tokens_only=True,
                           hooks_on="prompt")
    slow = _greedy_full_recompute(hooked, inputs, hooks, fast.shape[1],
                                  eos_id=tiny.model.generation_config.eos_token_id,
                                  pad_id=hooked.tokenizer.pad_token_id)
    assert torch.equal(fast, slow)


QWEN = [f for f in ("qwen2_vl", "qwen2_5_vl") if f in VLM_FAMILIES]


@torch.no_grad()
@pytest.mark.parametrize("family", QWEN)
def test_qwen_mrope_patch_inside_image_then_generate(family):
    """M-RoPE: an image's tokens share compressed 3-D positions, so text after it sits at position index + delta
    (delta < 0). A patch at an image token, then KV-cached decoding (which relies on the stored delta), must give
    what re-running the whole patched prefix gives; and the stored delta must not leak into the next plain run."""
    tiny, hooked = _tiny(family)
    inputs, _ = two_prompts(tiny, hooked, n_images=(1, 1))
    extra = {k: v for k, v in inputs.items() if k in ("image_grid_thw", "mm_token_type_ids", "attention_mask")}
    position_ids, deltas = tiny.model.model.get_rope_index(inputs["input_ids"], **extra)
    grid = inputs["image_grid_thw"][0]
    assert (deltas < 0).all(), "the image must compress positions, or this test proves nothing"
    span = hooked.positions(inputs).images[0][0]
    image_pos = position_ids[:, 0, span]
    assert image_pos[1].unique().numel() == int(grid[1]) // 2 and image_pos[2].unique().numel() == int(grid[2]) // 2
    assert (image_pos[0] == image_pos[0, 0]).all(), "one temporal position per image"

    reference = hooked(inputs)                                   # before any generate() set rope_deltas
    target = span[len(span) // 2]
    torch.manual_seed(1)
    value = torch.randn(hooked.cfg.d_model) * 3

    def patch(resid, hook):
        resid = resid.clone()
        resid[:, target] = value
        return resid

    hooks = [("blocks.0.hook_resid_post", patch)]
    fast = hooked.generate(inputs, max_new_tokens=5, fwd_hooks=hooks, return_new_tokens_only=True,
                           hooks_on="prompt")
    slow = _greedy_full_recompute(hooked, inputs, hooks, fast.shape[1],
                                  eos_id=tiny.model.generation_config.eos_token_id,
                                  pad_id=hooked.tokenizer.pad_token_id)
    assert torch.equal(fast, slow)
    other, _ = two_prompts(tiny, hooked, n_images=(1, 2))
    hooked.generate(other, max_new_tokens=2)                    # leaves rope_deltas of a different batch behind
    torch.testing.assert_close(hooked(inputs), reference, atol=1e-5, rtol=0)


@torch.no_grad()
def test_qwen2_5_vl_image_features_in_token_order():
    """Qwen2.5-VL's merger emits tokens in window-attention order; hook_image_features is in token order."""
    if "qwen2_5_vl" not in QWEN:
        pytest.skip("no tiny qwen2_5_vl")
    tiny, hooked = _tiny("qwen2_5_vl")
    inputs, _ = two_prompts(tiny, hooked, n_images=(1, 1))
    merger_out = []
    handle = tiny.model.model.visual.merger.register_forward_hook(lambda m, a, o: merger_out.append(o))
    try:
        _, cache = hooked.run_with_cache(inputs, names_filter=["hook_image_features", "hook_embed"])
    finally:
        handle.remove()
    features = cache["hook_image_features"]
    image_tokens = inputs["input_ids"] == hooked.cfg.image_token_id
    torch.testing.assert_close(cache["hook_embed"][image_tokens], features, atol=1e-6, rtol=0)
    assert not torch.allclose(merger_out[0], features), "windows reorder the merger's output"

    # Replacing the features moves exactly what reaches the image tokens.
    new = torch.randn_like(features)
    _, patched = hooked.run_with_cache(inputs, names_filter="hook_embed",
                                       fwd_hooks=[("hook_image_features", lambda x, hook: new)])
    torch.testing.assert_close(patched["hook_embed"][image_tokens], new, atol=1e-6, rtol=0)
    torch.testing.assert_close(patched["hook_embed"][~image_tokens], cache["hook_embed"][~image_tokens])


@torch.no_grad()
def test_gemma3_image_tokens_attend_bidirectionally():
    """Gemma 3 lets an image's tokens see each other: a patch at an image's last token changes its earlier tokens
    (never the text before the image)."""
    tiny, hooked = _tiny("gemma3")
    inputs, _ = two_prompts(tiny, hooked, n_images=(1, 1))
    span = hooked.positions(inputs).images[0][0]
    last = int(span[-1])

    def replace(resid, hook):
        resid = resid.clone()
        resid[:, last] = torch.randn_like(resid[:, last]) * 5
        return resid

    _, clean = hooked.run_with_cache(inputs, names_filter="blocks.1.hook_resid_post")
    _, patched = hooked.run_with_cache(inputs, names_filter="blocks.1.hook_resid_post",
                                       fwd_hooks=[("blocks.0.hook_resid_post", replace)])
    changed = (patched["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"]).abs().amax(-1) > 1e-6
    assert changed[:, span[:-1]].all(), "earlier tokens of the same image see the patched one"
    real_before = inputs["attention_mask"].bool()[:, :int(span[0])]
    assert not (changed[:, :int(span[0])] & real_before).any(), "text before the image does not"


@torch.no_grad()
def test_gemma3_text_causal_lm():
    """Text-only Gemma3ForCausalLM: parity, sandwich-norm residual decomposition, and logit soft-capping in unembed."""
    from tv_lens import HookedMultimodalModel
    from tv_lens.testing.gemma3 import build_gemma3_text

    torch.manual_seed(0)
    tiny = build_gemma3_text(final_logit_softcapping=3.0)
    hooked = HookedMultimodalModel.from_hf(tiny.model, tokenizer=tiny.tokenizer)
    assert hooked.cfg.family == "gemma3_text"
    inputs = hooked.prepare(["Q:France\nA:Paris\n\nQ:Spain\nA:", "Q:Peru\nA:"])
    ref = tiny.model(**inputs, output_hidden_states=True, use_cache=False)
    logits, cache = hooked.run_with_cache(inputs)
    assert (logits - ref.logits).abs().max() <= 1e-5
    assert ref.logits.abs().max() <= 3.0
    n = hooked.cfg.n_layers
    for layer in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], ref.hidden_states[layer + 1],
                                   atol=1e-6, rtol=0)
    for layer in range(n):
        b = f"blocks.{layer}."
        torch.testing.assert_close(cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"],
                                   cache[b + "hook_resid_mid"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"],
                                   cache[b + "hook_resid_post"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hooked.unembed(hooked.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"])), ref.logits,
                               atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- Idefics2, Idefics3 / SmolVLM, Fuyu
IDEFICS = [f for f in ("idefics2", "idefics3", "smolvlm") if f in available_families()]
# (family, do_image_splitting): Idefics2 splits an image into 4 crops + the whole one; Idefics3/SmolVLM into tiles
# + a global view. Split variants are built here; the core tests run the unsplit defaults.
IDEFICS_VARIANTS = [(f, split) for f in IDEFICS for split in (False, True)]
_SPLIT_TINY: dict[tuple[str, bool], tuple] = {}


def _tiny_split(family: str, split: bool):
    if not split:
        return _tiny(family)
    if (family, split) not in _SPLIT_TINY:
        tiny = tiny_model(family, do_image_splitting=True)
        _SPLIT_TINY[family, split] = (tiny, tiny.hooked())
    return _SPLIT_TINY[family, split]


def _tokens_per_image(family: str, split: bool, width: int, height: int) -> int:
    """Image tokens the processor writes for one image of this size (tiny builders' settings)."""
    if family == "idefics2":
        from tv_lens.testing.idefics2 import N_LATENTS

        return N_LATENTS * (5 if split else 1)
    from tv_lens.testing.idefics3 import IMAGE_SEQ_LEN, TILE

    if not split:
        return IMAGE_SEQ_LEN
    # resized to a longest edge of 2 tiles, then cut into ceil(side / TILE) tiles per side, + the global view
    scale = 2 * TILE / max(width, height)
    rows, cols = (-(-round(side * scale) // TILE) for side in (height, width))
    return IMAGE_SEQ_LEN * (rows * cols + 1)


@torch.no_grad()
@pytest.mark.parametrize("family,split", IDEFICS_VARIANTS)
def test_idefics_image_spans_hold_all_tiles_of_image_j(family, split):
    """image[j] = every crop/tile of image j (global view included): the spans of a row, in order, hold exactly the
    features HF merges for that row, and each span has the token count of one image."""
    tiny, hooked = _tiny_split(family, split)
    sizes = [[(64, 32)], [(32, 64), (32, 32)]] if family != "idefics2" else [[(32, 32)], [(32, 32), (32, 32)]]
    texts = ["Q:<image>\nA:", "pad Q:<image>\nA:x\n\nQ:<image>\nA:"]
    images = [[random_image(w, h, seed=10 * r + i) for i, (w, h) in enumerate(row)] for r, row in enumerate(sizes)]
    inputs = hooked.prepare(texts, images=images)
    pos = hooked.positions(inputs)
    assert [len(row) for row in pos.images] == [1, 2]
    per_row = tiny.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"]).pooler_output
    _, cache = hooked.run_with_cache(inputs, names_filter=["hook_embed", "hook_image_features"])
    for r, spans in enumerate(pos.images):
        assert [s.numel() for s in spans] == [_tokens_per_image(family, split, w, h) for w, h in sizes[r]]
        torch.testing.assert_close(cache["hook_embed"][r, torch.cat(spans)], per_row[r], atol=1e-6, rtol=0)
    n_views = sum(s.numel() for row in pos.images for s in row) // cache["hook_image_features"].shape[1]
    assert cache["hook_image_features"].shape[0] == n_views
    # parity with HF for the split variants too (the core tests cover the unsplit ones)
    ref = tiny.model(**inputs, use_cache=False, output_hidden_states=True)
    logits, cache = hooked.run_with_cache(inputs, names_filter="blocks.1.hook_resid_post")
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], ref.hidden_states[2], atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("family,split", IDEFICS_VARIANTS)
def test_idefics_adjacent_images_are_separate_spans(family, split):
    """``<image><image>`` with no text between: the processor merges the wrappers, the spans still split per image."""
    tiny, hooked = _tiny_split(family, split)
    w, h = tiny.image_size
    inputs = hooked.prepare(["Q:<image><image>\nA:"], images=[[random_image(w, h), random_image(w, h, seed=1)]])
    spans = hooked.positions(inputs).images[0]
    assert [s.numel() for s in spans] == [_tokens_per_image(family, split, w, h)] * 2
    assert int(spans[0].max()) < int(spans[1].min())


IMAGE_FAMILIES_HERE = [(f, False) for f in ("idefics2", "idefics3", "smolvlm", "fuyu") if f in available_families()]
IMAGE_FAMILIES_HERE += [(f, True) for f in IDEFICS]


@torch.no_grad()
@pytest.mark.parametrize("family,split", IMAGE_FAMILIES_HERE)
def test_hook_image_features_feeds_exactly_the_image_spans(family, split):
    """Zeroing hook_image_features zeroes hook_embed at every image[j] position and nowhere else."""
    tiny, hooked = _tiny_split(family, split)
    inputs, _ = two_prompts(tiny, hooked, n_images=(1, 2))
    _, clean = hooked.run_with_cache(inputs, names_filter="hook_embed")
    _, zeroed = hooked.run_with_cache(inputs, names_filter="hook_embed",
                                      fwd_hooks=[("hook_image_features", lambda x, hook: torch.zeros_like(x))])
    image_mask = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool)
    for r, spans in enumerate(hooked.positions(inputs).images):
        image_mask[r, torch.cat(spans)] = True
    assert (zeroed["hook_embed"][image_mask] == 0).all()
    torch.testing.assert_close(zeroed["hook_embed"][~image_mask], clean["hook_embed"][~image_mask], atol=0, rtol=0)
    assert (clean["hook_embed"][image_mask] != 0).any()
    assert hooked._torch_handles == {}


@torch.no_grad()
def test_fuyu_layout_one_image_first():
    """Fuyu: rows of |SPEAKER| ended by |NEWLINE|, then <s>, the text and <0x04>; image[0] = the |SPEAKER| tokens."""
    tiny, hooked = _tiny("fuyu")
    inputs = hooked.prepare(["<image>Q:\nA:"], images=[random_image(24, 16)])   # 3 x 2 patches of 8x8
    assert "pixel_values" in inputs and "image_patches" not in inputs
    tokens = hooked.to_str_tokens(inputs["input_ids"][0])
    assert tokens[:9] == ["|SPEAKER|"] * 3 + ["|NEWLINE|"] + ["|SPEAKER|"] * 3 + ["|NEWLINE|", "<s>"]
    assert tokens[-1] == "<0x04>" and "".join(tokens[9:-1]).strip() == "Q:\nA:"
    (span,) = hooked.positions(inputs).images[0]
    assert span.tolist() == [0, 1, 2, 4, 5, 6]
    features = tiny.model.model.vision_embed_tokens(inputs["pixel_values"])
    _, cache = hooked.run_with_cache(inputs, names_filter=["hook_embed", "hook_image_features"])
    torch.testing.assert_close(cache["hook_image_features"], features)
    torch.testing.assert_close(cache["hook_embed"][0, span], features, atol=1e-6, rtol=0)


@torch.no_grad()
def test_fuyu_takes_several_images_anywhere_in_the_prompt():
    """Image ICL on Fuyu (Mantis-Fuyu in the paper): tv_lens lays out the |SPEAKER| rows itself, where the HF
    processor cannot; each image's span holds exactly its own patch embeddings, and the forward equals HF's."""
    tiny, hooked = _tiny("fuyu")
    w, h = tiny.image_size
    images = [random_image(w, h), random_image(w, h, 1)]
    inputs = hooked.prepare(["Q:<image>\nA:x\n\nQ:<image>\nA:"], images=[images])
    tokens = hooked.to_str_tokens(inputs["input_ids"][0])
    assert tokens[0] == "<s>" and tokens[-1] == "<0x04>" and tokens.count("|SPEAKER|") == 2 * 16
    spans = hooked.positions(inputs).images[0]
    assert len(spans) == 2
    _, cache = hooked.run_with_cache(inputs, names_filter=["hook_embed"])
    for span, image in zip(spans, images):
        alone = hooked.prepare(["<image>Q:"], images=[image])   # the processor's own patches for this image
        features = tiny.model.model.vision_embed_tokens(alone["pixel_values"])
        torch.testing.assert_close(cache["hook_embed"][0, span], features.reshape(-1, features.shape[-1]),
                                   atol=1e-6, rtol=0)
    torch.testing.assert_close(hooked(inputs), tiny.model(**inputs).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_fuyu_text_only_and_bfloat16():
    """Text-only prompts go through the tokenizer; image patches are cast to the model's dtype (pixel_values)."""
    tiny, hooked = _tiny("fuyu")
    inputs = hooked.prepare(["Q:France\nA:", "Q:Peru\nA:"])
    torch.testing.assert_close(hooked(inputs), tiny.model(**inputs).logits, atol=1e-5, rtol=0)
    half = tiny_model("fuyu")
    half.model.to(torch.bfloat16)
    hooked16 = half.hooked()
    inputs = hooked16.prepare(["<image>Q:\nA:"], images=[random_image(*half.image_size)])
    assert inputs["pixel_values"].dtype == torch.bfloat16
    _, cache = hooked16.run_with_cache(inputs, names_filter="blocks.0.hook_resid_post", positions="last")
    assert cache["blocks.0.hook_resid_post"].dtype == torch.bfloat16


# ---------------------------------------------------------------- greedy generation vs HF generate
@torch.no_grad()
@pytest.mark.parametrize("family", available_families())
def test_greedy_generate_equals_hf_generate(family):
    """``generate`` with no hook gives HF ``generate``'s tokens, also when a row stops early at EOS and is padded."""
    tiny, hooked = _tiny(family)
    inputs, _ = two_prompts(tiny, hooked)
    pad = hooked.tokenizer.pad_token_id
    ref = tiny.model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    assert torch.equal(hooked.generate(inputs, max_new_tokens=6), ref)
    prompt_len = inputs["input_ids"].shape[1]
    eos = int(ref[0, prompt_len + 1])  # row 0 "ends" at its second new token
    ref_eos = tiny.model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    ours = hooked.generate(inputs, max_new_tokens=6, eos_token_id=eos)
    assert torch.equal(ours, ref_eos)
    assert (ours[0, prompt_len + 2:] == pad).all() or ours.shape[1] == prompt_len + 2
    assert hooked._torch_handles == {}

