"""tv_lens.patching: the batched, prefix-cached grid gives the naive one-forward-per-cell numbers on every family;
positions align across prompts by name; attribution patching is the gradient estimate; bad requests raise."""

from __future__ import annotations

import math

import pytest
import torch

from tv_lens import patching
from tv_lens import prompts as P
from tv_lens.errors import HookNameError, IncompatibleArgumentsError, InputError, PositionError
from tv_lens.testing import TEXT_ONLY_FAMILIES, available_families, random_image, tiny_model

FAMILIES = available_families()
_TINY: dict[str, tuple] = {}


def _tiny(family: str):
    if family not in _TINY:
        tiny = tiny_model(family)
        _TINY[family] = (tiny, tiny.hooked())
    return _TINY[family]


def _pair(tiny, hooked):
    """A clean and a corrupted prompt of the same length (VLMs: the same text, different images)."""
    if hooked.image_placeholder is None:
        return hooked.prepare("Q:France\nA:Paris\n\nQ:Spain\nA:"), hooked.prepare("Q:France\nA:Paris\n\nQ:Italy\nA:")
    ph = hooked.image_placeholder
    text = f"{ph}Q:\nA:" if hooked.adapter.images_first else f"Q:{ph}\nA:"
    width, height = tiny.image_size
    return (hooked.prepare(text, images=[random_image(width, height, seed=1)]),
            hooked.prepare(text, images=[random_image(width, height, seed=2)]))


def _naive(hooked, clean, corrupted, metric, hook, result):
    """The oracle: one full forward of the corrupted prompt per cell, the clean value written by a plain hook."""
    names = [patching.HOOK_KINDS[hook].format(layer=layer) for layer in result.layers]
    _, cache = hooked.run_with_cache(clean, names_filter=names)
    with torch.no_grad():
        clean_logits = hooked(clean)[0, -1]
    out = torch.empty_like(result.scores)
    for li, name in enumerate(names):
        for pi, pair in enumerate(result.positions):
            for hi, head in enumerate(result.heads if result.heads is not None else [None]):
                def write(act, hook, pair=pair, head=head, name=name):
                    act = act.clone()
                    for c, p in zip(pair.clean, pair.corrupted):
                        if head is None:
                            act[0, p] = cache[name][0, c]
                        else:
                            act[0, p, head] = cache[name][0, c, head]
                    return act

                with torch.no_grad():
                    logits = hooked.run_with_hooks(corrupted, fwd_hooks=[(name, write)])[:, -1]
                out[li, pi, hi] = metric(logits, clean_logits)[0]
    return out


def _positions_for(hooked, corrupted):
    """A few columns: the last two tokens, the first, and (VLMs) the image as one span."""
    spec = [-1, -2, 0]
    if hooked.image_placeholder is not None:
        spec.append("image[0]")
    return spec


@pytest.mark.parametrize("family", FAMILIES)
def test_grid_equals_naive_loop_on_every_family(family):
    """resid_pre over layers × positions (and, where the family has head hooks, z over layers × heads at the last
    token): the batched grid with a reused prefix equals one full forward per cell within 1e-5."""
    tiny, hooked = _tiny(family)
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.logit_diff(hooked, 3, 5)
    result = patching.activation_patching(hooked, clean, corrupted, metric, hook="resid_pre",
                                          positions=_positions_for(hooked, corrupted), max_rows=4, progress=False)
    assert result.scores.shape == (hooked.cfg.n_layers, len(result.positions), 1)
    torch.testing.assert_close(result.scores, _naive(hooked, clean, corrupted, metric, "resid_pre", result),
                               atol=1e-5, rtol=0)
    if "blocks.0.attn.hook_z" in hooked.hook_dict:
        heads = patching.activation_patching(hooked, clean, corrupted, metric, hook="z", positions=[-1, -2],
                                             layers=[0, -1], heads=[0, 1], progress=False)
        assert heads.scores.shape == (2, 2, 2)
        torch.testing.assert_close(heads.scores, _naive(hooked, clean, corrupted, metric, "z", heads),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("hook", ["resid_post", "attn_out", "mlp_out", "result"])
def test_every_hook_kind_equals_naive_loop(hook):
    tiny, hooked = _tiny("llama")
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.kl_divergence()
    result = patching.activation_patching(hooked, clean, corrupted, metric, hook=hook, positions=[-1, -3, 2],
                                          max_rows=2, progress=False)
    torch.testing.assert_close(result.scores, _naive(hooked, clean, corrupted, metric, hook, result),
                               atol=1e-5, rtol=0)


def test_recovery_is_zero_for_corrupted_and_one_for_clean():
    """Patching the last layer's output at the last token IS the clean prediction: recovery 1 (and score = clean
    metric); the corrupted prompt's own metric is recovery 0."""
    tiny, hooked = _tiny("llama")
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.probability(hooked, 4)
    result = patching.activation_patching(hooked, clean, corrupted, metric, hook="resid_post", layers=[-1],
                                          positions=[-1, 0], progress=False)
    assert result.grid.shape == (1, 2)
    assert result.grid[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert result.scores[0, 0, 0].item() == pytest.approx(result.clean_metric, abs=1e-6)
    torch.testing.assert_close(result.recovery, (result.scores - result.corrupted_metric)
                               / (result.clean_metric - result.corrupted_metric))
    frame = result.to_frame()
    assert list(frame["layer"]) == [hooked.cfg.n_layers - 1] * 2 and set(frame.columns) >= {"position", "recovery"}


def test_text_prompt_delimiter_patched_into_image_prompt_by_name():
    """Cross-modal: the text ICL prompt's final delimiter into the image query's delimiter, every layer, one call;
    the prompts differ in length and modality, and the cells equal hand-placed patches."""
    tiny, hooked = _tiny("llava")
    width, height = tiny.image_size
    item = {"input": "France", "output": "Paris", "image": random_image(width, height, seed=3)}
    demos = [{"input": "Spain", "output": "Madrid"}, {"input": "Peru", "output": "Lima"}]
    text_prompt = P.icl_prompt(demos, item, demo_modality="text", query_modality="text")
    image_prompt = P.query(item, modality="image")
    metric = patching.logit_diff(hooked, 3, 5)
    result = patching.activation_patching(hooked, text_prompt, image_prompt, metric, hook="resid_post",
                                          positions=["delimiter", ("delimiter[0]", "query[-1]")], progress=False)
    clean_batch, corrupted_batch = P.encode(hooked, text_prompt), P.encode(hooked, image_prompt)
    assert clean_batch["input_ids"].shape[1] != corrupted_batch["input_ids"].shape[1]
    delimiter = clean_batch.named_positions[0]["final_delimiter"][0]
    assert result.positions[0].clean == (delimiter,)
    assert result.positions[0].corrupted == (corrupted_batch.named_positions[0]["final_delimiter"][0],)
    assert result.positions[1].clean == (clean_batch.named_positions[0]["demo_delimiters"][0],)
    assert result.positions[1].corrupted == (corrupted_batch.named_positions[0]["query"][-1],)
    torch.testing.assert_close(result.scores, _naive(hooked, clean_batch, corrupted_batch, metric, "resid_post",
                                                     result), atol=1e-5, rtol=0)
    assert result.image_spans and result.image_spans[0][0] <= result.positions[1].corrupted[0]


def test_cells_that_write_a_value_over_itself_are_not_rerun():
    """A shared prefix: its clean and corrupted activations are equal, so those cells are the corrupted run. They
    are marked ``computed=False``, cost no forward, and the grid still equals the naive loop (skip on or off); a span
    that only STARTS in the shared prefix is run."""
    tiny, hooked = _tiny("llama")
    clean, corrupted = _pair(tiny, hooked)
    ids_a, ids_b = clean["input_ids"][0], corrupted["input_ids"][0]
    shared = int((ids_a != ids_b).nonzero()[0])           # first differing token
    assert shared > 2
    metric = patching.logit_diff(hooked, 3, 5)
    spec = [0, shared - 1, shared, -1, [0, -1]]
    forwards = []
    handle = hooked.hf_model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        fast = patching.activation_patching(hooked, clean, corrupted, metric, hook="resid_pre", positions=spec,
                                            max_rows=2, progress=False)
        n_fast = len(forwards)
        forwards.clear()
        full = patching.activation_patching(hooked, clean, corrupted, metric, hook="resid_pre", positions=spec,
                                            max_rows=2, skip_identical=False, progress=False)
        n_full = len(forwards)
    finally:
        handle.remove()
    computed = fast.computed[:, :, 0]
    assert not computed[:, :2].any()                     # prefix positions: every layer a no-op
    assert computed[:, 2].all()                          # the first differing token: every layer runs
    assert computed[1:, 2:].all()       # later tokens (and the span 0..-1) differ once attention has mixed them in
    assert fast.scores[:, :2].eq(fast.corrupted_metric).all() and fast.recovery[:, :2].eq(0).all()
    assert full.computed.all()
    naive = _naive(hooked, clean, corrupted, metric, "resid_pre", fast)
    torch.testing.assert_close(fast.scores, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.scores, naive, atol=1e-5, rtol=0)
    # two captures + one batched forward per chunk of computed cells (2 rows each)
    assert n_fast == 2 + math.ceil(int(computed.sum()) / 2) < n_full
    assert "no-op cells" in repr(fast) and set(fast.to_frame()["computed"]) == {True, False}
    with pytest.warns(UserWarning, match="recovery is undefined"):
        same = patching.activation_patching(hooked, corrupted, corrupted, metric, positions=[0, -1], progress=False)
    assert not same.computed.any() and same.scores.eq(same.corrupted_metric).all()


def test_aligned_positions_pair_shared_prefix_and_suffix():
    tiny, hooked = _tiny("llama")
    clean = hooked.prepare("Q:France\nA:Paris\n\nQ:Spain\nA:")
    corrupted = hooked.prepare("Q:France\nA:Paris\n\nQ:Peru\nA:")
    n_clean, n_corrupted = clean["input_ids"].shape[1], corrupted["input_ids"].shape[1]
    assert n_clean != n_corrupted
    pairs = patching.align_positions(hooked.positions(clean), hooked.positions(corrupted), "aligned",
                                     clean["input_ids"], corrupted["input_ids"])
    for pair in pairs:
        assert clean["input_ids"][0, pair.clean[0]] == corrupted["input_ids"][0, pair.corrupted[0]]
    assert pairs[-1].clean == (n_clean - 1,) and pairs[-1].corrupted == (n_corrupted - 1,)
    assert pairs[0].clean == (0,) == pairs[0].corrupted


def test_attribution_is_the_first_order_estimate():
    """Attribution: same baselines as the exact grid, one score per cell, and it tracks the exact grid where the
    effect is close to linear (attention outputs of a tiny model)."""
    tiny, hooked = _tiny("llama")
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.logit_diff(hooked, 3, 5)
    exact = patching.activation_patching(hooked, clean, corrupted, metric, hook="attn_out", progress=False)
    approx = patching.attribution_patching(hooked, clean, corrupted, metric, hook="attn_out")
    assert approx.method == "attribution" and approx.scores.shape == exact.scores.shape
    assert approx.clean_metric == pytest.approx(exact.clean_metric, abs=1e-5)
    assert approx.corrupted_metric == pytest.approx(exact.corrupted_metric, abs=1e-5)
    correlation = torch.corrcoef(torch.stack([exact.scores.flatten(), approx.scores.flatten()]))[0, 1]
    assert correlation > 0.9
    # Positions where clean and corrupted activations agree get exactly the corrupted metric.
    same = [i for i, pair in enumerate(approx.positions) if pair.corrupted[0] == 0]
    torch.testing.assert_close(approx.scores[0, same], torch.full_like(approx.scores[0, same],
                                                                          approx.corrupted_metric))


def test_attribution_heads_and_frozen_weights():
    """Per-head attribution works when the model's weights do not require gradients (a frozen model)."""
    tiny, hooked = _tiny("llama")
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.logit_diff(hooked, 3, 5)
    flags = [p.requires_grad for p in hooked.hf_model.parameters()]
    try:
        for p in hooked.hf_model.parameters():
            p.requires_grad_(False)
        approx = patching.attribution_patching(hooked, clean, corrupted, metric, hook="z", positions=[-1])
    finally:
        for p, flag in zip(hooked.hf_model.parameters(), flags):
            p.requires_grad_(flag)
    exact = patching.activation_patching(hooked, clean, corrupted, metric, hook="z", positions=[-1], progress=False)
    assert approx.grid.shape == exact.grid.shape == (hooked.cfg.n_layers, hooked.cfg.n_heads)
    assert (approx.scores != approx.corrupted_metric).any()


def test_bad_requests_raise_typed_errors():
    tiny, hooked = _tiny("llama")
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.logit_diff(hooked, 3, 5)
    for bad in ({"max_rows": 0}, {"max_rows": -1}, {"max_tokens": 0}, {"max_rows": 2.5}, {"max_rows": True}):
        with pytest.raises(InputError, match="positive int"):
            patching.activation_patching(hooked, clean, corrupted, metric, progress=False, **bad)
    with pytest.raises(InputError, match="True or False"):
        patching.activation_patching(hooked, clean, corrupted, metric, skip_identical="no", progress=False)
    with pytest.raises(InputError, match=r"LAST token's logits \[rows, d_vocab\]"):   # a TransformerLens-style metric
        patching.activation_patching(hooked, clean, corrupted, lambda logits: logits[0, -1, 3] - logits[0, -1, 5],
                                     progress=False)
    with pytest.raises(PositionError, match="selects no grid column"):
        patching.activation_patching(hooked, clean, corrupted, metric, positions=[], progress=False)
    shorter = hooked.prepare("Q:France\nA:")
    with pytest.raises(PositionError, match="equal"):
        patching.activation_patching(hooked, clean, shorter, metric, progress=False)
    with pytest.raises(IncompatibleArgumentsError, match="hook='z'"):
        patching.activation_patching(hooked, clean, corrupted, metric, hook="pattern", progress=False)
    with pytest.raises(IncompatibleArgumentsError, match="per-head"):
        patching.activation_patching(hooked, clean, corrupted, metric, heads=[0], progress=False)
    with pytest.raises(HookNameError):
        patching.activation_patching(hooked, clean, corrupted, metric, hook="resid_middle", progress=False)
    with pytest.raises(InputError, match="ONE clean"):
        patching.activation_patching(hooked, hooked.prepare(["a", "b"]), corrupted, metric, progress=False)
    with pytest.raises(InputError, match="one value per row"):
        patching.activation_patching(hooked, clean, corrupted, lambda logits: logits.sum(), progress=False)
    with pytest.raises(InputError, match="heads"):
        patching.activation_patching(hooked, clean, corrupted, metric, hook="z", heads=[99], progress=False)
    with pytest.raises(InputError, match="tokenizes to nothing"):
        patching.logit_diff(hooked, "", 3)


def test_span_positions_of_different_sizes_raise():
    tiny, hooked = _tiny("llava")
    width, height = tiny.image_size
    item = {"input": "France", "output": "Paris", "image": random_image(width, height, seed=3)}
    with pytest.raises(PositionError, match="query\\[-1\\]"):
        patching.activation_patching(hooked, P.query(item, modality="text"), P.query(item, modality="image"),
                                     patching.logit_diff(hooked, 3, 5), positions=["query"], progress=False)


def test_text_only_families_are_listed():
    assert TEXT_ONLY_FAMILIES & set(FAMILIES)


def test_plots_label_tokens_and_mark_image_spans():
    from tv_lens import plot
    from tv_lens.errors import InputError as PlotInputError

    tiny, hooked = _tiny("llava")
    clean, corrupted = _pair(tiny, hooked)
    metric = patching.logit_diff(hooked, 3, 5)
    result = patching.activation_patching(hooked, clean, corrupted, metric, positions="all", layers=[0],
                                          progress=False)
    fig = plot.patching_grid(result)
    ticks = list(fig.layout.xaxis.ticktext)
    assert len(ticks) == len(result.positions) and ticks[-1].endswith(plot.show_token(result.corrupted_tokens[-1]))
    first, last = result.image_spans[0]
    assert len(fig.layout.shapes) == 1
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].x1) == (first - 0.5, last + 0.5)
    assert fig.layout.shapes[0].fillcolor == "rgba(0,0,0,0)"   # outlined, not greyed out (issue 27)
    heads = patching.activation_patching(hooked, clean, corrupted, metric, hook="z", positions=[-1], progress=False)
    head_fig = plot.patching_heads(heads)
    assert len(head_fig.data[0].z) == hooked.cfg.n_layers and len(head_fig.data[0].z[0]) == hooked.cfg.n_heads
    with pytest.raises(PlotInputError, match="patching_grid"):
        plot.patching_heads(result)
    with pytest.raises(PlotInputError, match="head="):
        plot.patching_grid(heads)
