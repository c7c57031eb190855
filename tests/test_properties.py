"""Property-based tests (hypothesis): file formats, loaders, prompt rendering, position resolution, shards.

Random labels hold ``:``, newlines, quotes, commas, unicode and empty strings; vector files are truncated and
byte-flipped at random. Kept fast: few examples each, no deadline (the machine is shared).
"""

from __future__ import annotations

import csv
import json
import string

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tv_lens as tvl  # noqa: E402
from tv_lens import cli  # noqa: E402
from tv_lens import prompts as P  # noqa: E402
from tv_lens import runs  # noqa: E402
from tv_lens.errors import InputError, TaskError, VectorError  # noqa: E402
from tv_lens.tasks.loaders import _json_depth_ok  # noqa: E402
from tv_lens.testing import tiny_model  # noqa: E402

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
NASTY = st.sampled_from([":", "\n", "A:", "Q:", "\r\n", '"', ",", " ", "é", "東京", "🦊", "\u200b", "\\", "\t"])
LABEL = st.lists(st.one_of(NASTY, st.text(string.ascii_letters, min_size=1, max_size=4)), min_size=0,
                 max_size=5).map("".join)


def _visible(text: str) -> bool:
    return bool(text.strip())


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_model("llama").hooked()


# ------------------------------------------------------------------------------------------- vector files
@pytest.fixture(scope="module")
def vector_bytes(tmp_path_factory):
    vec = tvl.TaskVector(vectors=torch.randn(3, 8), layers=[0, 2, 3], model_name="m:odel\n", family="llama",
                         d_model=8, n_model_layers=4, task="c:c", seed=1)
    path = vec.save(tmp_path_factory.mktemp("vec") / "v.safetensors")
    return vec, path.read_bytes()


@FAST
@given(data=st.data())
def test_truncated_or_flipped_vector_files_never_load_wrong(vector_bytes, tmp_path, data):
    vec, raw = vector_bytes
    raw = bytearray(raw)
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
    path = tmp_path / "x.safetensors"
    path.write_bytes(bytes(raw))
    try:
        back = tvl.TaskVector.load(path)
    except VectorError:
        return
    # a flip that survives must have changed nothing that matters (e.g. header padding)
    assert torch.equal(back.vectors, vec.vectors) and back.metadata() == vec.metadata()


@FAST
@given(layers=st.lists(st.integers(-3, 8), min_size=1, max_size=5), n=st.integers(1, 6))
def test_vector_layers_are_in_range_or_refused(layers, n):
    def build():
        return tvl.TaskVector(vectors=torch.zeros(len(layers), 2), layers=layers, model_name="m", family="f",
                              d_model=2, n_model_layers=n)

    if any(not 0 <= x < n for x in layers) or len(set(layers)) < len(layers):
        with pytest.raises(VectorError):
            build()
        return
    vec = build()
    for layer in range(-n, n):
        name_layer = layer % n
        if name_layer in layers:
            assert vec.hooks(layer)[0][0] == f"blocks.{name_layer}.hook_resid_post"


# ------------------------------------------------------------------------------------------- loaders
ITEMS = st.lists(st.tuples(LABEL, LABEL), min_size=3, max_size=8, unique_by=lambda t: t[0].strip())


@FAST
@given(pairs=ITEMS)
def test_json_and_csv_round_trip_or_refuse_empty_labels(tmp_path, pairs):
    bad = any(not _visible(a) or not _visible(b) for a, b in pairs)
    try:
        task = tvl.tasks.from_pairs(pairs, n_val=1, n_test=1)
    except TaskError:
        assert bad, "only empty or whitespace-only fields may be refused"
        return
    assert not bad
    again = tvl.tasks.from_json(tvl.tasks.save_json(task, tmp_path / "t.json"), n_val=1, n_test=1)
    assert [(i.input, i.output) for i in again.items] == [(i.input, i.output) for i in task.items]
    path = tmp_path / "t.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["input", "output"])
        writer.writerows([(i.input, i.output) for i in task.items])
    from_csv = tvl.tasks.from_csv(path, n_val=1, n_test=1)
    assert [(i.input, i.output) for i in from_csv.items] == [(i.input, i.output) for i in task.items]


@FAST
@given(depth=st.integers(1, 200), limit=st.integers(1, 100))
def test_json_depth_check_matches_the_nesting(depth, limit):
    doc = {"items": []}
    for _ in range(depth - 1):
        doc = [doc]
    text = json.dumps(doc)
    real = text.count("[") + text.count("{")   # no brackets inside strings here
    assert _json_depth_ok(text, limit) == (real <= limit)


@FAST
@given(key=st.text(min_size=1, max_size=30))
def test_json_depth_check_ignores_brackets_in_strings(key):
    assert _json_depth_ok(json.dumps({"items": [{"input": key, "output": "[[[{{{"}]}), 3)


# ------------------------------------------------------------------------------------------- prompts + positions
@FAST
@given(demos=st.lists(st.tuples(LABEL, LABEL), min_size=0, max_size=3), query=st.tuples(LABEL, LABEL))
def test_rendering_keeps_every_label_and_marks_every_delimiter(demos, query):
    items = [{"input": a, "output": b} for a, b in demos + [query]]
    try:
        prompt = P.icl_prompt(items[:-1], items[-1])
    except TaskError:
        assert any(not _visible(i["output"]) or not i["input"] for i in items)
        return
    text, marks = P._render(prompt, "<image>")
    assert text.endswith("\nA:") and len(marks["answer"]) == len(demos) + 1
    assert all(text[c - 1] == ":" and text[c - 3:c] == "\nA:" for c in marks["answer"])
    for (_, label), char in zip(demos, marks["answer"]):
        assert text[char:].startswith(label)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(demos=st.lists(st.tuples(LABEL, LABEL), min_size=1, max_size=3), query=st.tuples(LABEL, LABEL),
       pad=st.integers(0, 3))
def test_delimiter_positions_are_the_colons_whatever_the_labels(llama, demos, query, pad):
    items = [{"input": a, "output": b} for a, b in demos + [query]]
    if any(not _visible(i["output"]) or not i["input"] for i in items):
        return
    short = P.icl_prompt([{"input": "a", "output": "b"}], {"input": "x" * (pad + 1), "output": "y"})
    batch = P.encode(llama, [P.icl_prompt(items[:-1], items[-1]), short])
    named = batch.named_positions[0]
    delims = named["demo_delimiters"] + named["final_delimiter"]
    assert len(named["demo_delimiters"]) == len(demos), "one per demo's A:"
    assert delims == sorted(delims) and named["final_delimiter"][0] == int(batch["attention_mask"][0].sum()) - 1 \
        + int((batch["attention_mask"][0] == 0).sum())
    ids = batch["input_ids"][0]
    for d in named["demo_delimiters"]:
        assert ":" in llama.tokenizer.decode([int(ids[d])])
    last = tvl.positions.resolve("delimiter[-1]", llama.positions(batch))
    assert int(last[0]) == named["demo_delimiters"][-1], "delimiter[-1] is the last DEMO's"


@FAST
@given(texts=st.lists(st.sampled_from(["", " ", "\n", "Q:a\nA:", "x"]), min_size=1, max_size=4))
def test_a_batch_with_an_empty_prompt_is_refused(llama, texts):
    if any(not t.strip() for t in texts):
        with pytest.raises(InputError, match="empty"):
            llama.prepare(texts)
    else:
        llama.prepare(texts)


# ------------------------------------------------------------------------------------------- shards
@FAST
@given(n_units=st.integers(1, 40), n=st.integers(1, 12))
def test_shards_partition_the_work(n_units, n):
    units = list(range(n_units))
    if n > n_units:
        with pytest.raises(InputError):
            runs.shard_units(units, (0, n))
        return
    parts = [runs.shard_units(units, (i, n)) for i in range(n)]
    assert sorted(u for p in parts for u in p) == units and all(parts)


@FAST
@given(n=st.integers(1, 8), dropped=st.sets(st.integers(0, 7)), doubled=st.sets(st.integers(0, 7)))
def test_shard_check_finds_missing_and_repeated(n, dropped, doubled):
    import pandas as pd

    dropped, doubled = {d for d in dropped if d < n}, {d for d in doubled if d < n} - dropped
    frames = {f"s{i}": pd.DataFrame({"shard": [f"{i}/{n}"]}) for i in range(n) if i not in dropped}
    frames.update({f"again{i}": pd.DataFrame({"shard": [f"{i}/{n}"]}) for i in doubled})
    if not frames:
        return
    if doubled:
        with pytest.raises(InputError, match="both shard"):
            runs.check_shards(frames, allow_partial=False)
    elif dropped:
        with pytest.raises(InputError, match="missing"):
            runs.check_shards(frames, allow_partial=False)
        runs.check_shards(frames, allow_partial=True)
    else:
        runs.check_shards(frames, allow_partial=False)


@FAST
@given(template=st.text(alphabet=st.sampled_from(list("ab{}in_x./")), max_size=12))
def test_out_templates_fill_or_fail_cleanly(template):
    try:
        out = cli.fill_out_template(template, (1, 3))
    except tvl.errors.UsageError:
        return
    assert "{" not in out.replace("{{", "") or "{" in template
