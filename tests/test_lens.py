"""Logit lens, token sets, phase curves, top-1 distributions, vector decodings and vector geometry."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import tv_lens as tvl
from tv_lens import geometry, lens
from tv_lens.errors import InputError, TaskError, VectorError
from tv_lens.testing import tiny_model
from tv_lens.vectors import TaskVector

ITEMS = [{"input": f"k{i}", "output": f"v{i}"} for i in range(10)]


@pytest.fixture(scope="module")
def tiny():
    built = tiny_model("llama")
    return built, built.hooked()


@pytest.fixture(scope="module")
def prompts():
    return tvl.prompts.icl(ITEMS[:6], n_shots=3, pool=ITEMS)


def _manual_logits(built, resid):
    hf = built.model
    return hf.lm_head(hf.model.norm(resid))


@torch.no_grad()
def _resid_last(hooked, prompts, layer):
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = hooked.run_with_cache(tvl.prompts.encode(hooked, prompts), names_filter=name, positions="last")
    return cache[name][:, 0]


# ---------------------------------------------------------------------------------------------- logit lens
@torch.no_grad()
def test_logit_lens_is_final_norm_then_lm_head(tiny):
    built, hooked = tiny
    resid = torch.randn(2, 3, hooked.cfg.d_model) * 3
    expected = _manual_logits(built, resid)
    torch.testing.assert_close(lens.logit_lens(hooked, resid), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens.logit_lens(hooked, resid, output="probs"), expected.softmax(-1))
    torch.testing.assert_close(lens.logit_lens(hooked, resid, output="log_probs"), expected.log_softmax(-1))
    torch.testing.assert_close(lens.logit_lens(hooked, resid, normalize=False), built.model.lm_head(resid))


@torch.no_grad()
def test_logit_lens_at_last_layer_is_the_models_next_token_distribution(tiny, prompts):
    _, hooked = tiny
    batch = tvl.prompts.encode(hooked, prompts)
    last = hooked.cfg.n_layers - 1
    logits, cache = hooked.run_with_cache(batch, names_filter=f"blocks.{last}.hook_resid_post", positions="last")
    probs = lens.logit_lens(hooked, cache["resid_post", last][:, 0], output="probs")
    torch.testing.assert_close(probs, logits[:, -1].softmax(-1), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_wrong_width_and_bad_arguments_raise(tiny):
    _, hooked = tiny
    with pytest.raises(VectorError, match="width"):
        lens.logit_lens(hooked, torch.randn(2, hooked.cfg.d_model + 1))
    with pytest.raises(VectorError):
        lens.top_k(hooked, torch.randn(7), k=3)
    with pytest.raises(InputError, match="output"):
        lens.logit_lens(hooked, torch.randn(hooked.cfg.d_model), output="softmax")
    with pytest.raises(InputError, match="k must"):
        lens.top_k(hooked, torch.randn(hooked.cfg.d_model), k=0)
    wide = TaskVector(vectors=torch.randn(1, 8), layers=[0], model_name="other", family="llama", d_model=8,
                      n_model_layers=3)
    with pytest.raises(VectorError, match="d_model"):
        lens.decode_vector(hooked, wide, layer=0)


@torch.no_grad()
def test_top_k_entropy_rank_and_token_probability_agree_with_manual(tiny):
    built, hooked = tiny
    resid = torch.randn(3, 2, hooked.cfg.d_model)
    probs = _manual_logits(built, resid).softmax(-1)
    top = lens.top_k(hooked, resid, k=4)
    values, ids = probs.topk(4, dim=-1)
    assert torch.equal(top.ids, ids)
    torch.testing.assert_close(top.probs, values)
    assert top.tokens[2][1][0] == hooked.tokenizer.decode([int(ids[2, 1, 0])])
    frame = top.to_frame(dims=["layer", "batch"])
    assert len(frame) == 3 * 2 * 4 and set(frame.columns) >= {"layer", "batch", "rank", "token", "prob"}
    top1 = frame.query("layer == 2 and batch == 1 and rank == 0")["prob"].item()
    assert top1 == pytest.approx(float(values[2, 1, 0]))

    manual_entropy = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(lens.entropy(hooked, resid), manual_entropy, atol=1e-5, rtol=1e-5)

    assert (lens.token_rank(hooked, resid, ids[..., 0]) == 0).all()
    assert (lens.token_rank(hooked, resid, ids[..., 3]) == 3).all()

    members = [int(ids[0, 0, 0]), int(ids[0, 0, 1]), int(ids[0, 0, 0])]  # a duplicate counts once
    torch.testing.assert_close(lens.token_probability(hooked, resid, members),
                               probs[..., [members[0], members[1]]].sum(-1))
    mask = torch.zeros(3, 1, hooked.cfg.d_vocab, dtype=torch.bool)
    mask[0, 0, 5] = mask[1, 0, 6] = mask[2, 0, 7] = True                # one token per leading row
    got = lens.token_probability(hooked, resid, mask)
    torch.testing.assert_close(got[:, 0], torch.stack([probs[0, 0, 5], probs[1, 0, 6], probs[2, 0, 7]]))


def test_token_set_rule_space_variants_dedupe_and_warnings(tiny):
    _, hooked = tiny
    tok = hooked.tokenizer
    colon = tok(":", add_special_tokens=False)["input_ids"][0]
    ts = lens.token_set(hooked, ":", name="input")
    # The byte tokenizer splits " :" into " " + ":"; the whitespace-only token is skipped, so one member remains.
    assert ts.ids == (colon,) and ts.name == "input" and ts.split == ()
    with pytest.warns(lens.TokenSetWarning, match="'ab'"):
        multi = lens.token_set(hooked, ["ab", 7])
    assert multi.ids == (tok("a", add_special_tokens=False)["input_ids"][0], 7)
    assert multi.split == ("ab",)
    exact = lens.token_set(hooked, " :", space_variants=False)
    assert exact.ids == (colon,)


def test_empty_and_invalid_token_sets_raise(tiny, prompts):
    _, hooked = tiny
    with pytest.raises(InputError, match="empty"):
        lens.token_set(hooked, [])
    with pytest.raises(InputError, match="non-empty string"):
        lens.token_set(hooked, [""])
    with pytest.raises(InputError, match="outside the vocabulary"):
        lens.token_set(hooked, [hooked.cfg.d_vocab])
    with pytest.raises(InputError, match="strings or ids"):
        lens.token_set(hooked, [1.5])
    with pytest.raises(InputError, match="empty for prompt 0"):
        lens.token_mask(hooked, lambda p: [], prompts)
    with pytest.raises(InputError, match="member lists"):
        lens.token_mask(hooked, [["a"], ["b"]], prompts)
    with pytest.raises(InputError, match="token_sets is empty"):
        lens.phase_curves(hooked, prompts, token_sets={})
    with pytest.raises(InputError, match="task="):
        lens.phase_curves(hooked, prompts)
    with pytest.raises(TaskError, match="No prompts"):
        lens.phase_curves(hooked, [], token_sets={"input": ":"})


def test_default_token_sets_follow_the_task(tiny):
    _, hooked = tiny
    sets = lens.default_token_sets(hooked, "country-capital")
    assert set(sets) == {"input", "task", "answer"}
    assert sets["answer"] is lens.LABEL
    assert sets["input"].sources == (":",) and sets["task"].sources == ("capital",)
    task = tvl.tasks.load("food-flavor")
    assert lens.default_token_sets(hooked, task)["task"].sources == ("flavor",)


# ---------------------------------------------------------------------------------------------- phase curves
@torch.no_grad()
def test_phase_curves_equal_manual_sums_and_statistics(tiny, prompts):
    built, hooked = tiny
    sets = {"input": [":"], "task": ["Q", "A"], "answer": lens.LABEL}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lens.TokenSetWarning)
        curves = lens.phase_curves(hooked, prompts, sets, batch_size=4, progress=False)
    n_layers = hooked.cfg.n_layers
    assert curves.per_prompt.shape == (len(prompts), n_layers, 3)
    assert curves.sets == ["input", "task", "answer"] and curves.layers == list(range(n_layers))
    tok = hooked.tokenizer
    first = [tok(p.label, add_special_tokens=False)["input_ids"][0] for p in prompts]
    ids = {"input": [tok(":")["input_ids"][0]], "task": [tok("Q")["input_ids"][0], tok("A")["input_ids"][0]]}
    for layer in range(n_layers):
        probs = _manual_logits(built, _resid_last(hooked, prompts, layer)).softmax(-1)
        torch.testing.assert_close(curves.per_prompt[:, layer, 0], probs[:, ids["input"]].sum(-1), atol=1e-6, rtol=0)
        torch.testing.assert_close(curves.per_prompt[:, layer, 1], probs[:, ids["task"]].sum(-1), atol=1e-6, rtol=0)
        answer = probs[torch.arange(len(prompts)), first]  # labels "v3": first token "v", with/without space
        torch.testing.assert_close(curves.per_prompt[:, layer, 2], answer, atol=1e-6, rtol=0)
        assert torch.equal(curves.top1_ids[:, layer], probs.argmax(-1))
    # tidy frame = statistics of per_prompt; CI uses Student t with n - 1 degrees of freedom
    data = curves.per_prompt.double()
    row = curves.frame.query("set == 'task' and layer == 1").iloc[0]
    mean, std = data[:, 1, 1].mean(), data[:, 1, 1].std()
    assert row["mean"] == pytest.approx(float(mean)) and row["std"] == pytest.approx(float(std))
    half = lens.t_quantile_975(len(prompts) - 1) * std / math.sqrt(len(prompts))
    assert row["ci_low"] == pytest.approx(float(mean - half)) and row["ci_high"] == pytest.approx(float(mean + half))
    # peaks are argmax of the mean curves
    for name in curves.sets:
        curve = curves.curve(name)
        assert curves.peaks.loc[name, "peak_layer"] == int(curve.idxmax())
        assert curves.peaks.loc[name, "peak_prob"] == pytest.approx(float(curve.max()))
    assert sorted(curves.order()) == sorted(curves.sets)
    assert "PhaseCurves" in repr(curves) and "<table>" in curves._repr_html_()


def test_find_peak_ties_nan_and_order():
    assert lens.find_peak([0.1, 0.5, 0.5, 0.2], [3, 4, 5, 6]) == (4, 0.5)
    assert lens.find_peak(torch.tensor([float("nan"), 0.2, 0.1]), [0, 1, 2]) == (1, pytest.approx(0.2))
    with pytest.raises(InputError):
        lens.find_peak([], [])
    with pytest.raises(InputError):
        lens.find_peak([0.1, 0.2], [0])
    per_prompt = torch.zeros(4, 3, 3)
    per_prompt[:, 0, 0], per_prompt[:, 1, 1], per_prompt[:, 2, 2] = 0.3, 0.6, 0.9
    curves = lens.PhaseCurves(frame=lens.summarize(per_prompt, [0, 1, 2], ["input", "task", "answer"]),
                              per_prompt=per_prompt, sets=["input", "task", "answer"], layers=[0, 1, 2],
                              token_sets={}, top1_ids=torch.zeros(4, 3, dtype=torch.long), token_strings={0: "x"})
    assert curves.peaks["peak_layer"].tolist() == [0, 1, 2]
    assert curves.peaks["peak_prob"].tolist() == pytest.approx([0.3, 0.6, 0.9])
    assert curves.shows_order() and not curves.shows_order(("answer", "task", "input"))
    assert curves.order() == ["input", "task", "answer"]


def test_summarize_and_t_quantile():
    assert lens.t_quantile_975(1) == pytest.approx(12.706)
    assert lens.t_quantile_975(100) == pytest.approx(1.98397, abs=1e-3)
    assert lens.t_quantile_975(40) == pytest.approx(2.02108, abs=1e-3)
    frame = lens.summarize(torch.tensor([[[1.0]], [[3.0]]]), [7], ["s"])
    row = frame.iloc[0]
    assert (row["layer"], row["set"], row["mean"], row["n"]) == (7, "s", 2.0, 2)
    assert row["std"] == pytest.approx(math.sqrt(2))
    assert row["ci_high"] - row["mean"] == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    single = lens.summarize(torch.tensor([[[1.0]]]), [0], ["s"]).iloc[0]
    assert math.isnan(single["std"]) and math.isnan(single["ci_low"])


def test_top1_distribution_counts_and_pooling():
    top1 = torch.tensor([[1, 5], [1, 6], [2, 7], [1, 8], [3, 9]])
    curves = lens.PhaseCurves(frame=lens.summarize(torch.rand(5, 2, 1), [0, 1], ["s"]), per_prompt=torch.rand(5, 2, 1),
                              sets=["s"], layers=[0, 1], token_sets={}, top1_ids=top1,
                              token_strings={i: f"t{i}" for i in range(10)})
    dist = lens.top1_distribution(curves, layers=[0, 1], top=2)
    at0 = dist[dist["layer"] == 0]
    assert at0["token"].tolist() == ["t1", "t2", "(other)"] and at0["count"].tolist() == [3, 1, 1]
    assert at0["fraction"].sum() == pytest.approx(1.0)
    assert dist[dist["layer"] == 1]["count"].sum() == 5
    with pytest.raises(InputError, match="Layer 9"):
        lens.top1_distribution(curves, layers=[9])


# ---------------------------------------------------------------------------------------------- lens over layers
@torch.no_grad()
def test_lens_over_layers_matches_manual_and_is_batch_invariant(tiny, prompts):
    built, hooked = tiny
    result = lens.lens_over_layers(hooked, prompts, k=3, batch_size=4, progress=False)
    n_layers = hooked.cfg.n_layers
    assert result.top_ids.shape == (len(prompts), n_layers, 1, 3)
    first = torch.tensor([hooked.tokenizer(p.label, add_special_tokens=False)["input_ids"][0] for p in prompts])
    assert torch.equal(result.target_ids, first)
    for layer in (0, n_layers - 1):
        logits = _manual_logits(built, _resid_last(hooked, prompts, layer))
        assert torch.equal(result.top_ids[:, layer, 0, 0], logits.argmax(-1))
        rank = (logits > logits.gather(1, first[:, None])).sum(-1)
        assert torch.equal(result.target_rank[:, layer, 0], rank)
    model_logits = hooked(tvl.prompts.encode(hooked, prompts))[:, -1]
    assert torch.equal(result.top_ids[:, -1, 0, 0], model_logits.argmax(-1))
    again = lens.lens_over_layers(hooked, prompts, k=3, batch_size=16, progress=False)
    assert torch.equal(again.top_ids, result.top_ids)
    torch.testing.assert_close(again.entropy, result.entropy, atol=1e-5, rtol=1e-5)
    summary = result.by_layer()
    assert list(summary.index) == list(range(n_layers))
    assert summary.loc[0, "target_prob"] == pytest.approx(float(result.target_prob[:, 0, 0].mean()), rel=1e-5)
    dist = lens.top1_distribution(result, layers=[n_layers - 1])
    assert dist["count"].sum() == len(prompts)


@torch.no_grad()
def test_lens_over_layers_all_positions_marks_padding(tiny):
    _, hooked = tiny
    result = lens.lens_over_layers(hooked, ["Q:ab\nA:", "Q:abcdef\nA:"], position="all", layers=[0, 2],
                                   targets="x", batch_size=1, progress=False)
    assert result.layers == [0, 2] and result.positions.shape == (2, result.positions.shape[1])
    n_pad = result.positions.shape[1] - len("Q:ab\nA:")
    assert result.valid[0].tolist() == [False] * n_pad + [True] * len("Q:ab\nA:")
    assert result.valid[1].all()
    assert "".join(result.input_tokens[1]) == "Q:abcdef\nA:"
    frame = result.to_frame()
    assert len(frame) == 2 * int(result.valid.sum()) and frame["target_rank"].ge(0).all()
    assert len(result.top1(1)) == 2 and len(result.top1(1)[0]) == result.positions.shape[1]



@torch.no_grad()
def test_layer_lens_frame_shows_the_top_k_it_was_asked_for(tiny):
    _, hooked = tiny
    result = lens.lens_over_layers(hooked, ["Q:ab\nA:", "Q:abc\nA:"], k=5, progress=False)
    frame = result.to_frame()
    for rank in range(5):
        ids = result.top_ids[:, :, 0, rank].reshape(-1).tolist()
        assert frame[f"top{rank + 1}"].tolist() == [result.token_strings[i] for i in ids]
        probs = result.top_probs[:, :, 0, rank].reshape(-1).tolist()
        assert frame[f"top{rank + 1}_prob"].tolist() == pytest.approx(probs)
    assert "top3" not in result.to_frame(k=2) and "top2" in result.to_frame(k=2)
    with pytest.raises(InputError, match="larger k"):
        result.to_frame(k=6)


@torch.no_grad()
def test_decode_vector_matches_top_k(tiny, prompts):
    _, hooked = tiny
    vec = tvl.extract_task_vector(hooked, prompts, layers="all", progress=False)
    table = lens.decode_vector(hooked, vec, layer=1, k=5)
    top = lens.top_k(hooked, vec[1], k=5)
    assert table["layer"].tolist() == [1] * 5 and table["rank"].tolist() == list(range(5))
    assert table["token_id"].tolist() == top.ids.tolist()
    assert table["prob"].tolist() == pytest.approx(top.probs.tolist())
    every = lens.decode_vector(hooked, vec, k=2)
    assert sorted(set(every["layer"])) == vec.layers and len(every) == 2 * len(vec.layers)
    assert lens.decode_vector(hooked, vec[-1], k=2)["token_id"].tolist() == lens.top_k(hooked, vec[2], 2).ids.tolist()


# ---------------------------------------------------------------------------------------------- geometry
def _vector(task, rows, kind="icl", modality="text", model="m", per_prompt=None):
    rows = torch.as_tensor(rows, dtype=torch.float32)
    return TaskVector(vectors=rows, layers=list(range(rows.shape[0])), model_name=model, family="llama",
                      d_model=rows.shape[1], n_model_layers=rows.shape[0], kind=kind, modality=modality, task=task,
                      per_prompt=per_prompt)


def test_similarity_matrix_is_cosine_with_provenance_labels():
    a = _vector("capital", [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    b = _vector("capital", [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], modality="image")
    c = _vector("capital", [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]], modality="image")
    matrix = geometry.similarity_matrix([a, b, c], layer=1)
    assert list(matrix.index) == ["capital · icl · text · m", "capital · icl · image · m",
                                  "capital · icl · image · m #2"]
    assert matrix.iloc[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert matrix.iloc[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert matrix.iloc[1, 1] == pytest.approx(1.0)
    assert matrix.iloc[0, 1] == pytest.approx(float(tvl.cosine_similarity(a, b)[1]))
    named = geometry.similarity_matrix({"x": a, "y": torch.tensor([0.0, 2.0, 0.0])}, layer=0)
    assert list(named.columns) == ["x", "y"] and named.loc["x", "y"] == pytest.approx(0.0)
    with pytest.raises(VectorError, match="widths"):
        geometry.similarity_matrix([a, _vector("t", [[1.0, 2.0], [3.0, 4.0]])], layer=0)
    with pytest.raises(VectorError, match="No vectors"):
        geometry.similarity_matrix([], layer=0)


def test_matched_vs_mismatched_table4():
    llm = {"capital": _vector("capital", [[1.0, 0.0]]), "currency": _vector("currency", [[0.0, 1.0]]),
           "color": _vector("color", [[1.0, 1.0]])}
    vlm = {"capital": _vector("capital", [[2.0, 0.1]]), "currency": _vector("currency", [[0.1, 2.0]]),
           "extra": _vector("extra", [[5.0, 5.0]])}
    result = geometry.matched_vs_mismatched(llm, vlm, layer=0)
    assert list(result.matrix.index) == ["capital", "currency"]
    cos = torch.nn.functional.cosine_similarity
    match_cap = float(cos(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.1]), dim=0))
    cross = float(cos(torch.tensor([1.0, 0.0]), torch.tensor([0.1, 2.0]), dim=0))
    assert result.by_task.loc["capital", "matched"] == pytest.approx(match_cap)
    assert result.by_task.loc["capital", "mismatched"] == pytest.approx(cross)  # both off-diagonal entries equal
    assert result.matched > result.mismatched
    assert result.mismatched == pytest.approx(cross)
    single = geometry.matched_vs_mismatched({"a": llm["capital"]}, {"a": vlm["capital"]}, layer=0)
    assert math.isnan(single.mismatched) and math.isnan(single.by_task.loc["a", "mismatched"])
    with pytest.raises(VectorError, match="share no task"):
        geometry.matched_vs_mismatched({"a": llm["capital"]}, {"b": vlm["capital"]}, layer=0)


def test_embed_vectors_pca_keeps_planar_geometry():
    torch.manual_seed(0)
    plane = torch.randn(2, 6)
    coeffs = [torch.randn(2) for _ in range(4)]
    vectors = [_vector(f"t{i}", [(c @ plane).tolist(), torch.randn(6).tolist()], modality=m)
               for i, (c, m) in enumerate(zip(coeffs, ["text", "image", "text", "image"]))]
    frame = geometry.embed_vectors(vectors, layers=[0])
    assert list(frame.columns) == ["layer", "x", "y", "label", "task", "kind", "modality", "model", "prompt"]
    points = torch.tensor(frame[["x", "y"]].to_numpy())
    original = torch.stack([v[0] for v in vectors]).double()
    # all points lie on a plane: PCA to 2-D keeps every pairwise distance
    torch.testing.assert_close(torch.cdist(points, points), torch.cdist(original, original), atol=1e-5, rtol=1e-5)
    assert frame["modality"].tolist() == ["text", "image", "text", "image"]
    both = geometry.embed_vectors(vectors)
    assert sorted(set(both["layer"])) == [0, 1] and len(both) == 8
    with pytest.raises(VectorError, match="per-prompt"):
        geometry.embed_vectors(vectors, per_prompt=True)
    with_prompts = [_vector("t", [[1.0, 0.0], [0.0, 1.0]], per_prompt=torch.randn(3, 2, 2)),
                    _vector("u", [[1.0, 1.0], [0.0, 1.0]], per_prompt=torch.randn(2, 2, 2))]
    per = geometry.embed_vectors(with_prompts, layers=[1], per_prompt=True)
    assert per["prompt"].tolist() == [0, 1, 2, 0, 1] and per["task"].tolist() == ["t"] * 3 + ["u"] * 2
    with pytest.raises(InputError, match="method"):
        geometry.embed_vectors(vectors, method="umap")


def test_embed_vectors_tsne_needs_scikit_learn():
    vectors = [_vector(f"t{i}", [torch.randn(5).tolist()]) for i in range(6)]
    if geometry.tsne_available():
        frame = geometry.embed_vectors(vectors, method="tsne", perplexity=2.0)
        assert len(frame) == 6 and frame[["x", "y"]].notna().all().all()
    else:
        with pytest.raises(ModuleNotFoundError, match="scikit-learn"):
            geometry.embed_vectors(vectors, method="tsne")


# ---------------------------------------------------------------------------------------------- real weights
@torch.no_grad()
def test_smollm2_lens_reproduces_next_token_distribution_and_phase_sums(smollm2):
    model = smollm2
    task = tvl.tasks.load("country-capital")
    prompts = tvl.prompts.icl(task.val[:3], n_shots=5, pool=task.train, seed=0)
    batch = tvl.prompts.encode(model, prompts)
    last = model.cfg.n_layers - 1
    logits, cache = model.run_with_cache(batch, names_filter=f"blocks.{last}.hook_resid_post", positions="last")
    model_probs = logits[:, -1].float().softmax(-1)
    lens_probs = lens.logit_lens(model, cache["resid_post", last][:, 0], output="probs")
    torch.testing.assert_close(lens_probs, model_probs, atol=1e-5, rtol=1e-4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lens.TokenSetWarning)
        curves = lens.phase_curves(model, prompts, task=task, batch_size=3, progress=False)
    tok = model.tokenizer
    answer_ids = [sorted({tok(p.label, add_special_tokens=False)["input_ids"][0],
                          tok(" " + p.label, add_special_tokens=False)["input_ids"][0]}) for p in prompts]
    expected = torch.stack([model_probs[i, ids].sum() for i, ids in enumerate(answer_ids)])
    torch.testing.assert_close(curves.per_prompt[:, last, curves.sets.index("answer")], expected, atol=1e-5,
                               rtol=1e-4)
    task_ids = [tok("capital", add_special_tokens=False)["input_ids"][0],
                tok(" capital", add_special_tokens=False)["input_ids"][0]]
    torch.testing.assert_close(curves.per_prompt[:, last, curves.sets.index("task")],
                               model_probs[:, task_ids].sum(-1), atol=1e-5, rtol=1e-4)
