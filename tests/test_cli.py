"""The ``tv-lens`` command line on tiny models saved to disk: every subcommand's output files, sharding, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import tv_lens as tvl
from tv_lens.cli import main, parse_ints, parse_shard
from tv_lens.evaluate import SweepResult, best_layer
from tv_lens.testing import random_image, tiny_model

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"),
         ("Cuba", "Havana"), ("Fiji", "Suva"), ("Mali", "Bamako"), ("Oman", "Muscat"), ("Laos", "Vientiane"),
         ("Togo", "Lome"), ("Iraq", "Baghdad"), ("Niger", "Niamey"), ("Nepal", "Kathmandu"), ("Chile", "Santiago")]
SMALL = ["--n-val", "4", "--n-test", "6", "--n-shots", "2", "--batch-size", "4", "--no-progress"]
SWEEP_COLUMNS = ["task", "seed", "layer", "accuracy", "n", "query_modality", "vector_modality", "shard",
                 "provenance"]
SCORE_COLUMNS = ["task", "method", "query_modality", "seed", "layer", "accuracy", "exact_match", "n", "n_correct",
                 "n_exact", "n_total", "shard", "provenance"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two threads thrash when the machine is shared (20x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny Llama and LLaVA folders written by save_pretrained, and a 15-item task file with images."""
    root = tmp_path_factory.mktemp("cli")
    (root / "img").mkdir()
    items = []
    for i, (country, capital) in enumerate(PAIRS):
        random_image(32, 32, seed=i).save(root / "img" / f"{i}.png")
        items.append({"input": country, "output": capital, "image": f"img/{i}.png"})
    task = root / "capitals.json"
    task.write_text(json.dumps({"name": "capitals", "instruction": "The capital city of the country:",
                                "task_word": "capital", "items": items}))
    paths = {"task": str(task), "root": root}
    for family in ("llama", "llava"):
        tiny = tiny_model(family)
        tiny.model.save_pretrained(root / family)
        (tiny.processor or tiny.tokenizer).save_pretrained(root / family)
        paths[family] = str(root / family)
    return paths


def run(*argv) -> int:
    return main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------- arguments
def test_argument_parsers():
    assert parse_ints("0,1,2") == [0, 1, 2] and parse_ints("4-6") == [4, 5, 6] and parse_ints("-1") == [-1]
    assert parse_ints("0,10-12,-3--2") == [0, 10, 11, 12, -3, -2]
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(SystemExit):
        main(["sweep", "m", "t", "--shard", "4/4"])


def test_entry_point_lists_hooks_of_a_saved_model(files):
    exe = shutil.which("tv-lens", path=str(Path(sys.executable).parent)) or shutil.which("tv-lens")
    assert exe, "the tv-lens entry point is not installed (pip install -e .)"
    done = subprocess.run([exe, "hooks", files["llama"]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = done.stdout.splitlines()
    assert names[0].startswith("HookedMultimodalModel(") and "family=causal_lm" in names[0]
    assert {"hook_embed", "blocks.2.hook_resid_post", "ln_final.hook_normalized"} <= set(names)


# ---------------------------------------------------------------------------------------------- extract
def test_extract_writes_the_library_vector(files, tmp_path):
    out = tmp_path / "cc.safetensors"
    assert run("extract", files["llama"], files["task"], *SMALL, "--layers", "0-1", "--seed", "3", "--out", out) == 0
    vec = tvl.TaskVector.load(out)
    assert (vec.layers, vec.d_model, vec.task, vec.kind, vec.modality, vec.seed) == ([0, 1], 64, "capitals", "icl",
                                                                                     "text", 3)
    task = tvl.tasks.load(files["task"], n_val=4, n_test=6)
    model = tvl.HookedMultimodalModel.from_pretrained(files["llama"])
    prompts = tvl.prompts.icl(task.val, n_shots=2, pool=task.train, seed=3)
    expected = tvl.extract_task_vector(model, prompts, layers=[0, 1], progress=False)
    assert vec.n_prompts == len(task.val) == 4
    assert torch.allclose(vec.vectors, expected.vectors, atol=1e-6)

    spaced = tmp_path / "spaced.safetensors"
    assert run("extract", files["llama"], files["task"], *SMALL, "--layers", "0-1", "--seed", "3", "--template",
               "qa_space", "--out", spaced) == 0
    prompts = tvl.prompts.icl(task.val, n_shots=2, pool=task.train, seed=3, template="qa_space")
    expected = tvl.extract_task_vector(model, prompts, layers=[0, 1], progress=False)
    assert torch.allclose(tvl.TaskVector.load(spaced).vectors, expected.vectors, atol=1e-6)
    assert not torch.allclose(vec.vectors, expected.vectors, atol=1e-3)

    assert run("extract", files["llama"], files["task"], *SMALL, "--kind", "ensemble", "--out",
               tmp_path / "both.safetensors") == 0
    both = tvl.TaskVector.load(tmp_path / "both.safetensors")
    assert both.kind == "ensemble" and both.layers == [0, 1, 2]


def test_extract_refuses_an_out_name_of_another_format_before_loading(files, tmp_path, capsys):
    """`--out v.csv` used to write `v.csv.safetensors` silently: now exit 2 naming both fixes, nothing written."""
    assert run("extract", tmp_path / "no-such-model", files["task"], *SMALL, "--out", tmp_path / "v.csv") == 2
    err = capsys.readouterr().err
    assert err.startswith("tv-lens: error: --out") and err.count("\n") == 1
    assert "v.safetensors" in err and "v.csv.safetensors" in err, err
    assert not list(tmp_path.iterdir())
    # a name with no format suffix keeps its name, .safetensors appended (docs/cli.md)
    assert run("extract", files["llama"], files["task"], *SMALL, "--layers", "0", "--out", tmp_path / "cc.icl.text") == 0
    assert tvl.TaskVector.load(tmp_path / "cc.icl.text.safetensors").layers == [0]


def test_cli_vectors_are_the_library_recipe_and_refuse_demos_from_the_scored_split(files, tmp_path, capsys):
    """The CLI, the demo and extract_task_vectors share vectors.icl_vector: a task whose train split is empty has no
    demo pool, and the CLI refuses (it used to draw demos from the very val items the sweep scores)."""
    task = tvl.tasks.load(files["task"], n_val=4, n_test=6)
    model = tvl.HookedMultimodalModel.from_pretrained(files["llama"])
    recipe = tvl.runs.Recipe(n_shots=2, batch_size=4, progress=False)
    (ours,) = recipe.vectors(model, task, "text", seeds=[1], layers=[0, 1])
    (library,) = tvl.extract_task_vectors(model, task, n_shots=2, seeds=[1], layers=[0, 1], progress=False)
    assert torch.equal(ours.vectors, library.vectors) and ours.seed == library.seed == 1

    items = json.loads(Path(files["task"]).read_text())["items"][:10]
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"name": "small", "items": [dict(it, image=None) for it in items]}))
    capsys.readouterr()
    for argv, out in ((["sweep"], "s.csv"), (["extract"], "v.safetensors"),
                      (["evaluate", "--methods", "no_context,base"], "r.csv")):   # checked before the model loads
        assert run(*argv[:1], tmp_path / "no-such-model", small, *argv[1:], "--n-val", "4", "--n-test", "6",
                   "--n-shots", "2", "--no-progress", "--out", tmp_path / out) == 2
        err = capsys.readouterr().err
        assert "demo pool has 0 items" in err and "--n-val / --n-test" in err and err.count("\n") == 1, err
        assert not (tmp_path / out).exists()


# ---------------------------------------------------------------------------------------------- sweep + merge
def test_sweep_csv_json_figure_and_vector_file(files, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    assert run("sweep", files["llama"], files["task"], *SMALL, "--seed", "0,1", "--out", out) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == SWEEP_COLUMNS
    assert sorted(frame["layer"].unique()) == [0, 1, 2] and sorted(frame["seed"].unique()) == [0, 1]
    assert len(frame) == 6 and (frame["n"] == 4).all() and (frame["task"] == "capitals").all()
    best = best_layer(SweepResult(frame, 0).accuracy_by_layer())
    assert f"best layer: {best}" in capsys.readouterr().out
    assert "plotly" in (tmp_path / "sweep.html").read_text()

    as_json = tmp_path / "sweep.json"
    assert run("sweep", files["llama"], files["task"], *SMALL, "--seed", "0,1", "--out", as_json) == 0
    data = json.loads(as_json.read_text())
    assert data["kind"] == "sweep" and data["best_layer"] == best
    pd.testing.assert_frame_equal(pd.DataFrame(data["rows"]), frame, check_dtype=False)

    # a vector file from `extract` sweeps exactly like the vector extracted on the fly
    assert run("extract", files["llama"], files["task"], *SMALL, "--out", tmp_path / "v.safetensors") == 0
    assert run("sweep", files["llama"], files["task"], *SMALL, "--vector", tmp_path / "v.safetensors",
               "--out", tmp_path / "from_file.csv") == 0
    from_file = pd.read_csv(tmp_path / "from_file.csv")
    same = frame[frame["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(from_file.drop(columns="provenance"), same.drop(columns="provenance"))
    assert json.loads(from_file["provenance"][0])["vectors"]["capitals"]["seed"] == 0, "the file's provenance"


def test_sweep_shards_merge_to_the_unsharded_run(files, tmp_path, capsys):
    args = ["sweep", files["llama"], files["task"], *SMALL, "--seed", "0,1"]
    assert run(*args, "--out", tmp_path / "full.csv") == 0
    for i in range(2):
        assert run(*args, "--shard", f"{i}/2", "--out", tmp_path / "part{i}.csv") == 0
    parts = [pd.read_csv(tmp_path / f"part{i}.csv") for i in range(2)]
    assert [sorted(p["layer"].unique()) for p in parts] == [[0, 2], [1]], "units (task, layer) go round-robin"
    capsys.readouterr()
    assert run("merge", tmp_path / "part0.csv", tmp_path / "part1.csv", "--out", tmp_path / "merged.csv") == 0
    full = pd.read_csv(tmp_path / "full.csv").sort_values(["task", "seed", "layer"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "merged.csv"), full)
    best = best_layer(SweepResult(full, 0).accuracy_by_layer())
    assert f"best layer: {best}" in capsys.readouterr().out and (tmp_path / "merged.html").is_file()

    # a missing shard is an error, not a silently different best layer
    assert run("merge", tmp_path / "part0.csv", "--out", tmp_path / "bad.csv") == 2
    assert "shard(s) [1] are missing" in capsys.readouterr().err

    # evaluate takes its layer from a sweep file
    assert run("evaluate", files["llama"], files["task"], *SMALL, "--methods", "patch", "--layer",
               tmp_path / "merged.csv", "--max-new-tokens", "1", "--out", tmp_path / "res.csv") == 0
    assert set(pd.read_csv(tmp_path / "res.csv")["layer"]) == {best}


# ---------------------------------------------------------------------------------------------- evaluate
def test_evaluate_image_queries_table_and_predictions(files, tmp_path, capsys):
    methods = ["no_context", "majority", "base", "xbase", "patch", "xpatch"]
    out = tmp_path / "results.csv"
    assert run("evaluate", files["llava"], files["task"], *SMALL, "--query-modality", "image", "--methods",
               ",".join(methods), "--max-new-tokens", "2", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "xpatch: layer" in printed, "no --layer: the layer is swept on val"
    assert all(m in printed for m in methods) and "Avg" in printed
    scores = pd.read_csv(out)
    assert list(scores.columns) == SCORE_COLUMNS and list(scores["method"]) == methods
    assert (scores["n"] == 6).all() and (scores["n_total"] == 6).all() and (scores["query_modality"] == "image").all()
    assert scores["layer"].notna().tolist() == [m in ("patch", "xpatch") for m in methods]
    predictions = pd.read_csv(tmp_path / "results.predictions.csv", keep_default_na=False)
    assert len(predictions) == 6 * len(methods)
    assert set(predictions.columns) >= {"task", "method", "seed", "query", "label", "first_token", "correct"}

    # the same numbers as the library call
    task = tvl.tasks.load(files["task"], n_val=4, n_test=6)
    model = tvl.HookedMultimodalModel.from_pretrained(files["llava"])
    ref = tvl.evaluate(model, task, ["xbase"], query_modality="image", n_shots=2, max_new_tokens=2, seeds=(0,),
                       progress=False)
    ours = predictions[predictions["method"] == "xbase"].set_index("query")["first_token"]
    assert ours.to_dict() == ref.predictions.set_index("query")["first_token"].to_dict()


def test_evaluate_shards_merge_to_the_unsharded_run(files, tmp_path, capsys):
    args = ["evaluate", files["llava"], files["task"], *SMALL, "--query-modality", "image", "--methods",
            "no_context,base,xpatch", "--seed", "0,1", "--layer", "xpatch=1", "--max-new-tokens", "2"]
    assert run(*args, "--out", tmp_path / "full.csv") == 0
    for i in range(3):
        assert run(*args, "--shard", f"{i}/3", "--out", tmp_path / "part{i}.csv") == 0
    parts = [pd.read_csv(tmp_path / f"part{i}.csv") for i in range(3)]
    assert all((p["n"] < p["n_total"]).any() for p in parts), "every shard holds part of the items"
    base_rows = pd.concat(p[p["method"] == "base"] for p in parts)
    assert sorted(base_rows["seed"]) == [0, 1] and (base_rows["n"] == 6).all(), "(task, seed) units stay whole"
    files_in = [tmp_path / f"part{i}.csv" for i in range(3)]
    assert run("merge", *files_in, "--out", tmp_path / "merged.csv") == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "merged.csv"), pd.read_csv(tmp_path / "full.csv"))
    read = lambda name: pd.read_csv(tmp_path / name, keep_default_na=False)  # noqa: E731
    pd.testing.assert_frame_equal(read("merged.predictions.csv"), read("full.predictions.csv"))

    capsys.readouterr()
    assert run("merge", *files_in[:2], "--out", tmp_path / "bad.csv") == 2
    assert "shard(s) [2] are missing" in capsys.readouterr().err
    shutil.copy(files_in[0], tmp_path / "again.csv")
    assert run("merge", *files_in, tmp_path / "again.csv", "--out", tmp_path / "bad.csv") == 2
    assert "both shard 0/3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- phases
def test_phases_figure_and_curves(files, tmp_path, capsys):
    out = tmp_path / "phases.html"
    assert run("phases", files["llama"], files["task"], *SMALL, "--n-prompts", "5", "--out", out) == 0
    assert "plotly" in out.read_text()
    curves = pd.read_csv(tmp_path / "phases.csv")
    assert set(curves["set"]) == {"input", "task", "answer"} and sorted(curves["layer"].unique()) == [0, 1, 2]
    assert (curves["n"] == 5).all() and curves["mean"].between(0, 1).all()
    assert "capitals: peaks" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("case", ["missing model", "folder without config", "unknown task", "text-only model",
                                  "merge of different outputs"])
def test_errors_are_one_line_and_nonzero(files, tmp_path, capsys, case):
    model, task = files["llama"], files["task"]
    argv = {
        "missing model": ["sweep", tmp_path / "no-such-model", task, *SMALL],
        "folder without config": ["sweep", files["root"] / "img", task, *SMALL],
        "unknown task": ["sweep", model, "no-such-task", *SMALL],
        "text-only model": ["evaluate", model, task, *SMALL, "--query-modality", "image"],
        "merge of different outputs": ["merge", tmp_path / "a.csv", tmp_path / "b.csv", "--out", tmp_path / "m.csv"],
    }[case]
    if case == "merge of different outputs":
        pd.DataFrame({"task": ["t"], "seed": [0], "layer": [0], "accuracy": [0.0]}).to_csv(tmp_path / "a.csv")
        pd.DataFrame({"task": ["t"], "method": ["patch"], "seed": [0], "n_correct": [0], "n_total": [1]}).to_csv(
            tmp_path / "b.csv")
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tv-lens: error: ") and err.count("\n") == 1, err
