"""The paper's protocol, pinned by values: each method patches the vector it names, demos never come from the scored
split, seeds and spread, and the method details a wrong one-line change would break (see tests/mutants/)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter

import pandas as pd
import pytest
import torch

from helpers import items as make_items

import tv_lens as tvl
from tv_lens import prompts as P
from tv_lens.errors import IncompatibleArgumentsError, InputError, TaskError, VectorError
from tv_lens.evaluate import SweepResult, predict
from tv_lens.protocol import mean_ci
from tv_lens.testing import tiny_model

PAIRS = [("France", "Paris"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"), ("Cuba", "Havana"),
         ("Fiji", "Suva"), ("Mali", "Bamako"), ("Spain", "Madrid"), ("Chile", "Santiago"), ("Laos", "Vientiane")]


def _items(with_images=False):
    return make_items(PAIRS, with_images)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").hooked()


@pytest.fixture(scope="module")
def llava():
    return tiny_model("llava").hooked()


@pytest.fixture(scope="module")
def llava_vectors(llava):
    items = _items(with_images=True)
    text = tvl.extract_task_vector(llava, P.icl(items, n_shots=2, modality="text"), progress=False)
    image = tvl.extract_task_vector(llava, P.icl(items, n_shots=2, modality="image"), progress=False)
    inst = tvl.instruction_vector(llava, "The capital city of the country:")
    return items, text, image, inst


# ------------------------------------------------------------------------------------------ vectors per method
@torch.no_grad()
def test_each_patch_method_patches_the_vector_it_names(llava, llava_vectors):
    items, text, image, _ = llava_vectors
    res = tvl.evaluate(llava, items[:4], ["patch", "xpatch"], vectors={"patch": image, "xpatch": text}, layer=1,
                       query_modality="image", seeds=(0,), max_new_tokens=2, progress=False)
    queries = P.queries(items[:4], modality="image")
    for method, vec in (("patch", image), ("xpatch", text)):
        expected = [full for _, full in predict(llava, queries, lambda n, v=vec: v.hooks(1, at="delimiter"),
                                                 max_new_tokens=2)]
        assert res.predictions.query("method == @method")["answer"].tolist() == expected, method


def test_vectors_are_checked_by_kind_and_modality(llava, llava_vectors):
    items, text, image, inst = llava_vectors
    run = dict(layer=1, query_modality="image", seeds=(0,), max_new_tokens=1, progress=False)
    with pytest.raises(VectorError, match="xpatch.*text demos.*'patch'"):   # image vector for image queries
        tvl.evaluate(llava, items[:2], ["xpatch"], vectors={"xpatch": image}, **run)
    with pytest.raises(VectorError, match="image demos"):
        tvl.evaluate(llava, items[:2], ["patch"], vectors={"patch": text}, **run)
    with pytest.raises(VectorError, match="'instruction'"):
        tvl.evaluate(llava, items[:2], ["instruction_patch"], vectors={"instruction_patch": text}, **run)
    with pytest.raises(VectorError, match="instruction_patch"):
        tvl.evaluate(llava, items[:2], ["patch"], vectors={"patch": inst}, **run)
    with pytest.raises(VectorError, match="instruction vector"):   # an "ensemble" of exemplars only
        tvl.evaluate(llava, items[:2], ["ensemble_patch"], vectors={"ensemble_patch": tvl.ensemble([text, text])},
                     **run)
    with pytest.raises(VectorError):   # one wrong vector in a per-seed list
        tvl.evaluate(llava, items[:2], ["xpatch"], vectors={"xpatch": [text, image]}, **run)
    with pytest.raises(IncompatibleArgumentsError, match="vectors="):
        tvl.evaluate(llava, items[:2], ["patch", "xpatch"], vector=text, **run)
    with pytest.raises(IncompatibleArgumentsError, match="not run"):
        tvl.evaluate(llava, items[:2], ["xpatch"], vectors={"xpatch": text, "patch": image}, **run)
    with pytest.raises(IncompatibleArgumentsError, match="not both"):
        tvl.evaluate(llava, items[:2], ["xpatch"], vector=text, vectors={"xpatch": text}, **run)
    one = tvl.evaluate(llava, items[:2], ["no_context", "xpatch"], vector=text, **run)   # unambiguous
    assert set(one.scores["method"]) == {"no_context", "xpatch"}
    ens = tvl.evaluate(llava, items[:2], ["instruction_patch", "ensemble_patch"],
                       vectors={"instruction_patch": inst, "ensemble_patch": tvl.ensemble([text, inst])}, **run)
    assert len(ens.scores) == 2


def test_run_labels_keep_llm_and_vlm_xpatch_apart_in_one_table(llava, llava_vectors):
    items, text, _, _ = llava_vectors
    other = dataclass_replace(text, vectors=text.vectors * 3, model_name="base-llm")
    run = dict(layer=1, query_modality="image", seeds=(0,), max_new_tokens=1, progress=False)
    vlm = tvl.evaluate(llava, items[:3], ["xpatch"], vectors={"xpatch": text}, **run)
    llm = tvl.evaluate(llava, items[:3], ["xpatch"], vectors={"xpatch": other}, label="LLM→VLM", **run)
    both = tvl.EvalResult.concat([vlm, llm])
    assert list(both.table().index) == ["xpatch", "xpatch [LLM→VLM]"]
    assert both.predictions.query("run == 'LLM→VLM'")["label"].tolist() == [y for _, y in PAIRS[:3]]


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


# ------------------------------------------------------------------------------------------ seeds and spread
def test_tables_are_mean_over_seeds_with_95_percent_ci():
    rows = [("a", 0, 0.2), ("a", 1, 0.4), ("a", 2, 0.9), ("b", 0, 0.0), ("b", 1, 0.6), ("b", 2, 0.3)]
    scores = pd.DataFrame([{"task": t, "method": "xpatch", "run": None, "seed": s, "accuracy": a,
                            "exact_match": a} for t, s, a in rows])
    result = tvl.EvalResult(scores, pd.DataFrame())
    table = result.table()
    assert table.loc["xpatch", "a"] == pytest.approx(0.5) and table.loc["xpatch", "b"] == pytest.approx(0.3)
    avg_per_seed = [0.1, 0.5, 0.6]
    sd = math.sqrt(sum((v - 0.4) ** 2 for v in avg_per_seed) / 2)
    assert table.loc["xpatch", "Avg"] == pytest.approx(0.4)
    assert result.spread().loc["xpatch", "Avg"] == pytest.approx(4.303 * sd / math.sqrt(3))
    assert result.table(ci=True).loc["xpatch", "a"] == f"0.500 ± {4.303 * 0.3605551 / math.sqrt(3):.3f}"
    assert "±" in repr(result) and "±" in result._repr_html_()
    assert math.isnan(mean_ci([0.5])[1])


def test_table_exact_match_is_the_whole_answer_score_and_unknown_metrics_raise():
    scores = pd.DataFrame([{"task": "a", "method": "patch", "run": None, "seed": s, "accuracy": 0.5,
                            "exact_match": e} for s, e in [(0, 0.1), (1, 0.3)]])
    result = tvl.EvalResult(scores, pd.DataFrame())
    assert result.table(metric="exact_match").loc["patch", "a"] == pytest.approx(0.2)
    assert result.table().loc["patch", "a"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="exact_match"):
        result.table(metric="first_token")


def test_evaluate_and_sweep_default_to_the_papers_three_seeds(llama):
    items = _items()
    res = tvl.evaluate(llama, items[:3], ["no_context"], max_new_tokens=1, progress=False)
    assert sorted(res.scores["seed"]) == [0, 1, 2]
    vecs = tvl.extract_task_vectors(llama, items[:4], n_shots=2, pool=items[4:], layers=[1, 2], progress=False)
    assert [v.seed for v in vecs] == [0, 1, 2] and not torch.equal(vecs[0].vectors, vecs[1].vectors)
    sweep = tvl.layer_sweep(llama, vecs, items[:3], progress=False)
    assert sorted(sweep.scores["seed"].unique()) == [0, 1, 2]
    by_factory = tvl.layer_sweep(llama, lambda seed: vecs[seed], items[:3], progress=False)
    pd.testing.assert_frame_equal(by_factory.scores, sweep.scores)
    with pytest.raises(IncompatibleArgumentsError, match="one vector per seed"):
        tvl.layer_sweep(llama, vecs[0], items[:3], seeds=(0, 1), progress=False)
    with pytest.raises(IncompatibleArgumentsError, match="one vector per seed"):
        tvl.layer_sweep(llama, vecs[:2], items[:3], seeds=(0, 1, 2), progress=False)


def test_sweep_takes_the_mean_over_seeds_then_tasks_not_the_max():
    rows = [("a", 0, 0, 1.0), ("a", 1, 0, 0.0), ("a", 0, 1, 0.6), ("a", 1, 1, 0.6),
            ("b", 0, 0, 0.0), ("b", 0, 1, 0.3)]   # task b has one seed: a pooled mean would weigh a twice
    scores = pd.DataFrame([{"task": t, "seed": s, "layer": l, "accuracy": a} for t, s, l, a in rows])
    by_layer = SweepResult(scores, best=0).accuracy_by_layer()
    assert by_layer[0] == pytest.approx((0.5 + 0.0) / 2) and by_layer[1] == pytest.approx((0.6 + 0.3) / 2)
    assert by_layer.idxmax() == 1   # the max over seeds would pick layer 0 (1.0)


@torch.no_grad()
def test_sweep_best_is_the_argmax_of_the_seed_then_task_mean(llama):
    items = _items()
    vecs = tvl.extract_task_vectors(llama, items[:4], n_shots=2, pool=items[4:], seeds=(0, 1), progress=False)
    vec_b = [dataclass_replace(v, vectors=-v.vectors) for v in vecs]
    sweep = tvl.layer_sweep(llama, {"a": vecs, "b": vec_b}, {"a": items[:5], "b": items[5:]}, seeds=(0, 1),
                            progress=False)
    # recomputed independently of SweepResult: plain dict arithmetic over the per-item predictions
    table = {}
    for (task, seed, layer), acc in sweep.scores.set_index(["task", "seed", "layer"])["accuracy"].items():
        table.setdefault(layer, {}).setdefault(task, []).append(acc)
    mean = {layer: sum(sum(v) / len(v) for v in per.values()) / len(per) for layer, per in table.items()}
    top = max(mean.values())
    assert sweep.best == min(layer for layer, m in mean.items() if m == top)


# ------------------------------------------------------------------------------------------ demos
def test_demos_never_come_from_the_split_being_scored(llama):
    items = _items()
    with pytest.raises(TaskError, match="pool"):
        tvl.evaluate(llama, items, ["base"], seeds=(0,), n_shots=2, progress=False)
    with pytest.raises(TaskError, match="also being scored"):
        tvl.evaluate(llama, items[:4], ["xbase"], pool=items[2:], seeds=(0,), n_shots=2, progress=False)
    with pytest.raises(TaskError, match="with_images"):   # image demos from a pool without images
        tvl.evaluate(llama, items[:4], ["xbase"], pool=items[4:], query_modality="text", seeds=(0,), n_shots=2,
                     progress=False)


def test_with_images_leaves_every_shipped_task_an_imaged_train_pool():
    for name in tvl.tasks.list_tasks():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            task = tvl.tasks.load(name).with_images()
        assert len(task.train) >= 5 and all(it.has_image for it in task.train), name
        assert not set(task.train) & (set(task.test) | set(task.val)), name
        assert len(task.test) > len(task.val) > 0, name


def test_majority_is_the_most_common_demo_label_not_the_first(llama):
    pool = [dict(input=f"x{i}", output=label) for i, label in enumerate(["A", "B", "B", "C"])]
    scored = [dict(input=f"q{i}", output="B") for i in range(12)]
    res = tvl.evaluate(llama, scored, ["majority"], pool=pool, n_shots=3, seeds=(0, 1, 2), progress=False)
    preds = res.predictions
    for labels, first in zip(preds["demo_labels"], preds["first_token"]):
        counts = Counter(labels)
        assert counts[first] == max(counts.values())
    assert (preds["first_token"] == "B").all() or any(Counter(ls)["B"] < 2 for ls in preds["demo_labels"])
    exercised = [ls for ls in preds["demo_labels"] if ls[0] != "B" and Counter(ls)["B"] == 2]
    assert exercised, "the data must contain prompts whose first demo is not the majority"
    assert (preds.loc[[ls in exercised for ls in preds["demo_labels"]], "first_token"] == "B").all()


def test_case_option_reaches_the_scores(llama):
    pool = [dict(input=f"x{i}", output="Paris") for i in range(4)]
    scored = [dict(input=f"q{i}", output="PARIS") for i in range(3)]
    run = dict(pool=pool, n_shots=2, seeds=(0,), progress=False)
    strict = tvl.evaluate(llama, scored, ["majority"], case_sensitive=True, **run)
    loose = tvl.evaluate(llama, scored, ["majority"], case_sensitive=False, **run)
    assert strict.scores["accuracy"].tolist() == [0.0] and loose.scores["accuracy"].tolist() == [1.0]
    assert loose.scores["exact_match"].tolist() == [1.0]


@torch.no_grad()
def test_xbase_puts_demos_of_the_other_modality_in_context(llava):
    items = _items(with_images=True)
    scored, pool = items[:3], items[3:]
    res = tvl.evaluate(llava, scored, ["base", "xbase"], pool=pool, query_modality="image", n_shots=2,
                       seeds=(0,), max_new_tokens=2, progress=False)
    demo_modality = res.predictions.groupby("method")["demo_modality"].unique()
    assert list(demo_modality["xbase"]) == ["text"] and list(demo_modality["base"]) == ["image"]
    expected = predict(llava, P.icl(scored, n_shots=2, modality="text", query_modality="image", pool=pool, seed=0),
                       max_new_tokens=2)
    assert res.predictions.query("method == 'xbase'")["answer"].tolist() == [full for _, full in expected]


# ------------------------------------------------------------------------------------------ vectors
@torch.no_grad()
def test_vector_is_read_at_the_last_demos_delimiter_not_the_querys(llama):
    prompts = P.icl(_items(), n_shots=3, seed=0)
    vec = tvl.extract_task_vector(llama, prompts, layers=[2], progress=False)
    _, cache = llama.run_with_cache(prompts, names_filter="blocks.2.hook_resid_post", positions="delimiter[-1]")
    torch.testing.assert_close(vec[2], cache["blocks.2.hook_resid_post"][:, 0].mean(0), atol=1e-5, rtol=1e-5)
    _, at_query = llama.run_with_cache(prompts, names_filter="blocks.2.hook_resid_post", positions="delimiter")
    assert not torch.allclose(vec[2], at_query["blocks.2.hook_resid_post"].mean(0), atol=1e-3)
    assert vec.position == "delimiter[-1]" and vec.extra["n_shots"] == 3


def test_subsample_averages_exactly_r_prompts(llama):
    vec = tvl.extract_task_vector(llama, P.icl(_items(), n_shots=2), layers=[1], keep_per_prompt=True,
                                  progress=False)
    rows = vec.per_prompt[:, 0]
    for r in (1, 2, 3):
        sub = vec.subsample(r, seed=4)
        means = [rows[list(c)].mean(0) for c in itertools.combinations(range(len(rows)), r)]
        assert any(torch.allclose(sub[1], m, atol=1e-6) for m in means), r
        assert sub.n_prompts == r
    assert not torch.allclose(vec.subsample(1, seed=0)[1], vec[1], atol=1e-4)


@torch.no_grad()
def test_sample_efficiency_scores_exemplar_ensemble_and_instruction_lines(llama):
    items = _items()
    vec = tvl.extract_task_vector(llama, P.icl(items, n_shots=2), layers="all", keep_per_prompt=True,
                                  progress=False)
    inst = tvl.instruction_vector(llama, "The capital city of the country:")
    ens = tvl.ensemble([vec.subsample(2, seed=0), inst])
    # oracle labels: what the model answers with the paper's ensemble patched, so that line must score 1.0
    oracle = predict(llama, P.queries(items), lambda n: ens.hooks(1, at="delimiter"), max_new_tokens=1)
    labelled = [dict(input=it["input"], output=first.strip()) for it, (first, _) in zip(items, oracle)
                if first.strip()]
    frame = tvl.sample_efficiency(llama, vec, labelled, layer=1, sizes=[1, 2], instruction_vector=inst, repeats=1,
                                  query_modality="text")
    assert sorted(frame["method"].unique()) == ["ensemble", "exemplar", "instruction"]
    at2 = frame.query("r == 2").set_index("method")["accuracy"]
    assert at2["ensemble"] == 1.0
    assert at2["exemplar"] < 1.0 and at2["instruction"] < 1.0, "the oracle must tell the three vectors apart"
    alone = tvl.evaluate(llama, labelled, ["instruction_patch"], vectors={"instruction_patch": inst}, layer=1,
                         seeds=(0,), max_new_tokens=1, case_sensitive=False, progress=False)
    assert (frame.query("method == 'instruction'")["accuracy"] == alone.scores["accuracy"].iloc[0]).all()
    assert frame.set_index(["r", "method"])["n_examples"].loc[(2, "exemplar")] == 4   # r prompts × 2 shots
    fig = tvl.plot.scaling(frame)
    assert fig.layout.xaxis.title.text == "number of examples"
