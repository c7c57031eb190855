"""Writing your own experiments: named positions inside any hook and from a PromptBatch (issue 27)."""

from __future__ import annotations

import pytest
import torch

from helpers import items as make_items

import tv_lens as tvl
from tv_lens import prompts as P
from tv_lens.errors import InputError, PositionError, UsageError
from tv_lens.positions import resolve
from tv_lens.testing import tiny_model

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "N'Djamena"), ("Iran", "Tehran"),
         ("Cuba", "Havana")]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").hooked()


@pytest.fixture(scope="module")
def llava():
    return tiny_model("llava").hooked()


def _batch(model, n=3):
    # different demo lengths per row: the batch is left-padded, so indices differ per row
    return P.encode(model, P.icl(make_items(PAIRS), n_shots=2, seed=0)[:n])


def test_position_inside_a_plain_hook_matches_the_batch_and_the_resolver(llama):
    batch = _batch(llama)
    seen = {}

    def look(act, hook):
        for spec in ("delimiter", "delimiter[-1]", "delimiter[0]", "query[0]", "query[-1]", "last"):
            seen[spec] = tvl.hooks.position(spec).clone()
        seen["all"] = tvl.hooks.current_positions()

    llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", look)])
    expected = llama.positions(batch)
    for spec in ("delimiter", "delimiter[-1]", "delimiter[0]", "query[0]", "query[-1]", "last"):
        torch.testing.assert_close(seen[spec], resolve(spec, expected))
        torch.testing.assert_close(batch.position(spec), seen[spec])
    assert seen["delimiter"].shape == (3,)
    assert len(set(seen["delimiter[0]"].tolist())) > 1   # left padding: each row has its own index
    # the old name keeps working
    names = batch.position_names(1)
    assert names["delimiter"] == int(seen["delimiter"][1])
    assert names["delimiter[1]"] == int(seen["delimiter[-1]"][1])
    assert names["query"][0] == int(seen["query[0]"][1]) and names["query"][-1] == int(seen["query[-1]"][1])
    assert names["last"] == int(seen["last"][1])
    assert batch.named_positions[1]["final_delimiter"][0] == names["delimiter"]


def test_head_ablation_at_the_delimiter_changes_only_that_head_and_position(llama):
    batch = _batch(llama)
    name = "blocks.1.attn.hook_z"
    _, cache = llama.run_with_cache(batch, names_filter=name)
    clean = cache[name]
    after = {}

    def ablate(z, hook):
        rows = torch.arange(z.shape[0])
        z = z.clone()
        z[rows, tvl.hooks.position("delimiter"), 2] = 0.0
        after["z"] = z
        return z

    llama.run_with_hooks(batch, fwd_hooks=[(name, ablate)])
    delim = batch.position("delimiter")
    rows = torch.arange(3)
    assert torch.all(after["z"][rows, delim, 2] == 0) and clean[rows, delim, 2].abs().sum() > 0
    keep = torch.ones_like(clean, dtype=torch.bool)
    keep[rows, delim, 2] = False
    torch.testing.assert_close(after["z"][keep], clean[keep])


def test_position_outside_a_model_call_is_a_typed_error(llama):
    with pytest.raises(UsageError, match="inside a hook"):
        tvl.hooks.position("delimiter")
    with pytest.raises(UsageError):
        tvl.hooks.current_index("last")


def test_position_that_does_not_occur_raises_inside_the_hook(llama):
    def look(act, hook):
        tvl.hooks.position("delimiter")

    with pytest.raises(PositionError, match="does not occur"):
        llama.run_with_hooks("plain text, no delimiter", fwd_hooks=[("blocks.0.hook_resid_post", look)])
    with pytest.raises(PositionError):
        P.encode(llama, [P.query(make_items(PAIRS)[0])]).position("delimiter[0]")


def test_image_positions_from_a_batch_and_inside_a_hook(llava):
    items = make_items(PAIRS, True, (32, 32))
    batch = P.encode(llava, P.queries(items[:2], modality="image"))
    seen = {}

    def look(act, hook):
        seen["image"] = tvl.hooks.position("image[0]").clone()

    llava.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", look)])
    torch.testing.assert_close(batch.position("image[0]"), seen["image"])
    assert seen["image"].ndim == 2 and seen["image"].shape[0] == 2
    assert batch.position_names(0)["image[0]"] == seen["image"][0].tolist()


def test_current_index_refuses_a_row_mask_it_would_ignore(llama):
    batch = _batch(llama)
    seen = {}

    def look(act, hook):
        seen["old"] = tvl.hooks.current_index("delimiter")
        seen["new"] = tvl.hooks.position("delimiter")
        with pytest.raises(InputError, match=r"position\(at\)\[row_mask\]"):
            tvl.hooks.current_index("delimiter", row_mask=torch.ones(act.shape[0], dtype=torch.bool))
        seen["checked"] = True

    llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", look)])
    assert seen["checked"] and torch.equal(seen["old"], seen["new"])
