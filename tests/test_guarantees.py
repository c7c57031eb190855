"""What docs/guarantees.md promises, case by case: nothing lost, nothing silently wrong, untrusted input refused,
command-line errors early and on one line. Each test fails on the behaviour before issue 14."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tv_lens as tvl
from tv_lens import cli, runs
from tv_lens.errors import (ContextLengthError, ImageError, InputError, OutputPathError, PatchNotFiredError,
                            TaskError, UnsafePathError, VectorError)
from tv_lens.io import atomic_save, atomic_write, atomic_write_text
from tv_lens.testing import random_image, tiny_model

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "Ndjamena"), ("Iran", "Tehran"),
         ("Cuba", "Havana"), ("Fiji", "Suva"), ("Mali", "Bamako"), ("Oman", "Muscat"), ("Laos", "Vientiane")]
SMALL = ["--n-val", "3", "--n-test", "3", "--n-shots", "2", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama").hooked()


@pytest.fixture(scope="module")
def llava():
    tiny = tiny_model("llava")
    return tiny, tiny.hooked()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("guar")
    task = root / "capitals.json"
    task.write_text(json.dumps({"name": "capitals", "items": [{"input": a, "output": b} for a, b in PAIRS]}))
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(root / "llama")
    tiny.tokenizer.save_pretrained(root / "llama")
    return {"root": root, "task": str(task), "llama": str(root / "llama")}


def _vector(n_layers: int = 3, layers=(0, 1, 2), d: int = 4) -> tvl.TaskVector:
    return tvl.TaskVector(vectors=torch.randn(len(layers), d), layers=list(layers), model_name="m", family="llama",
                          d_model=d, n_model_layers=n_layers, task="cc", seed=0)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


# ================================================================================= 1. data loss
def test_atomic_write_keeps_the_old_file_on_any_error_including_ctrl_c(tmp_path):
    target = tmp_path / "t.csv"
    atomic_write_text(target, "old\n")
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_write(target) as fh:
                fh.write("half a new fi")
                raise error
        assert target.read_text() == "old\n" and _no_temp_files(tmp_path)

    def writer(tmp):
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save(target, writer)
    assert target.read_text() == "old\n" and _no_temp_files(tmp_path)
    with pytest.raises(OutputPathError):
        atomic_write_text(tmp_path, "x")


def test_vector_save_keeps_the_users_suffix(tmp_path):
    text, image = _vector(), _vector()
    p1, p2 = text.save(tmp_path / "cc.icl.text"), image.save(tmp_path / "cc.icl.image")
    # was: both went to cc.icl.safetensors, the second overwriting the first
    assert (p1.name, p2.name) == ("cc.icl.text.safetensors", "cc.icl.image.safetensors")
    assert torch.equal(tvl.TaskVector.load(p1).vectors, text.vectors)
    assert torch.equal(tvl.TaskVector.load(p2).vectors, image.vectors)
    assert text.save(tmp_path / "v.safetensors").name == "v.safetensors"
    with pytest.raises(OutputPathError):
        text.save(tmp_path)


def test_killed_vector_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import safetensors.torch as st

    path = _vector().save(tmp_path / "v.safetensors")
    before = path.read_bytes()
    real = st.save_file

    def dying(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", dying)
    with pytest.raises(KeyboardInterrupt):
        _vector().save(path)
    assert path.read_bytes() == before and _no_temp_files(tmp_path)


def test_temp_files_of_killed_writers_are_cleaned_on_the_next_write(tmp_path):
    dead = 4_000_000
    while True:   # a process id that is not running
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead += 1
    stale = tmp_path / f".v.safetensors.tmp{dead}-abcd1234"
    stale.write_bytes(b"x" * 1000)                       # what a SIGKILL-ed save leaves behind
    alive = tmp_path / f".v.safetensors.tmp{os.getpid()}-abcd1234"
    alive.write_bytes(b"y")                              # a write in progress in a live process: kept
    _vector().save(tmp_path / "v.safetensors")
    assert not stale.exists() and alive.exists()


def test_cli_tables_and_figures_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sweep.csv"
    frame = pd.DataFrame({"a": [1, 2]})
    cli.write_table(frame, path, "sweep")
    before = path.read_text()

    def broken(self, target, **kw):   # writes part of the table, then the disk is full
        if hasattr(target, "write"):
            target.write("a\n1\n")
        else:                          # the old write_table gave pandas the target path itself
            Path(target).write_text("a\n1\n")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        cli.write_table(pd.DataFrame({"a": [9]}), path, "sweep")
    assert path.read_text() == before and _no_temp_files(tmp_path)

    import plotly.graph_objects as go

    fig_path = tvl.plot.save(go.Figure(), tmp_path / "f.html")
    old = fig_path.read_text()
    monkeypatch.setattr(go.Figure, "write_html", lambda self, p, **kw: (Path(p).write_text("<ht"),
                                                                         (_ for _ in ()).throw(OSError("full"))))
    with pytest.raises(OSError):
        tvl.plot.save(go.Figure(), fig_path)
    assert fig_path.read_text() == old and _no_temp_files(tmp_path)


def test_sweep_never_writes_two_outputs_to_one_path(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "load_model", _no_model)
    assert run("sweep", files["llama"], files["task"], *SMALL, "--out", tmp_path / "s.html") == 2
    assert ".csv or .json" in capsys.readouterr().err and not (tmp_path / "s.html").exists()


def test_extract_out_folder_writes_inside_it(files, tmp_path):
    folder = tmp_path / "vectors"
    folder.mkdir()
    assert run("extract", files["llama"], files["task"], *SMALL, "--layers", "0", "--out", folder) == 0
    assert [p.name for p in folder.iterdir()] == ["capitals.icl.text.safetensors"]
    assert not (tmp_path / "vectors.safetensors").exists()
    vec = tvl.TaskVector.load(folder / "capitals.icl.text.safetensors")
    assert vec.extra["provenance"]["tasks"]["capitals"]["n_val"] == 3, "the file carries its provenance"


# ================================================================================= 2. silent wrong results
def _rewrite_metadata(path: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["tv_lens"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, path, metadata={"tv_lens": json.dumps(meta)})


@pytest.mark.parametrize("edit", ["permute layers", "n_model_layers", "model_name", "seed"])
def test_edited_vector_metadata_fails_to_load(tmp_path, edit):
    path = _vector().save(tmp_path / "v.safetensors")
    change = {"permute layers": lambda m: m.update(layers=[2, 1, 0]),
              "n_model_layers": lambda m: m.update(n_model_layers=30),
              "model_name": lambda m: m.update(model_name="other"),
              "seed": lambda m: m.update(seed=7)}[edit]
    _rewrite_metadata(path, change)
    with pytest.raises(VectorError, match="checksum"):
        tvl.TaskVector.load(path)


def test_layers_are_range_checked_never_wrapped():
    with pytest.raises(VectorError, match="n_model_layers"):
        _vector(n_layers=3, layers=(0, 3, 4))            # was: accepted; hooks(3) patched blocks.0
    vec = _vector()
    with pytest.raises(tvl.errors.LayerOutOfRangeError):
        vec.hooks(3)
    with pytest.raises(tvl.errors.LayerOutOfRangeError):
        vec[-4]
    assert [name for name, _ in vec.hooks([-1, 0])] == ["blocks.2.hook_resid_post", "blocks.0.hook_resid_post"]


@pytest.mark.parametrize("rows", [[], torch.zeros(2, dtype=torch.bool)], ids=["empty list", "all-False mask"])
def test_a_patch_on_no_row_has_not_fired(llama, rows):
    batch = llama.prepare(["Q:France\nA:Paris\n\nQ:Spain\nA:", "Q:Peru\nA:"])
    hook = tvl.hooks.patch(torch.zeros(llama.cfg.d_model), at="last", rows=rows)
    with pytest.raises(PatchNotFiredError, match="selected no row"):
        llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", hook)])
    one = tvl.hooks.patch(torch.zeros(llama.cfg.d_model), at="last", rows=torch.tensor([False, True]))
    llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", one)])
    assert one.fired == 1
    wrong = tvl.hooks.patch(torch.zeros(llama.cfg.d_model), at="last", rows=torch.tensor([True, False, True]))
    with pytest.raises(InputError, match="mask"):
        llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", wrong)])


def test_per_prompt_image_lists_are_checked_per_prompt(llava):
    tiny, model = llava
    ph = model.image_placeholder
    width, height = tiny.image_size
    imgs = [random_image(width, height, seed=i) for i in range(3)]
    with pytest.raises(InputError, match="prompt 0 has 1 image placeholder"):   # 3 in total: was accepted
        model.prepare([f"Q:{ph}\nA:", f"Q:{ph}\nA:x\n\nQ:{ph}\nA:"], images=[imgs[:2], imgs[2:]])
    with pytest.raises(InputError, match="empty"):
        model.prepare([f"Q:{ph}\nA:"], images=[[Image.new("RGB", (0, 0))]])
    model.prepare([f"Q:{ph}\nA:", f"Q:{ph}\nA:x\n\nQ:{ph}\nA:"], images=[imgs[:1], imgs[1:]])


def test_an_empty_prompt_in_a_batch_raises(llama):
    with pytest.raises(InputError, match="prompt 1 of the batch is empty"):
        llama.prepare(["Q:France\nA:", ""])


def test_a_prompt_longer_than_the_context_raises(llama):
    with pytest.raises(ContextLengthError, match="at most 512"):
        llama.prepare(["word " * 600])


def _png(path: Path, width: int, height: int, bit_depth: int = 8, color_type: int = 0, pixels: bytes = b"") -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels))
                     + chunk(b"IEND", b""))
    return path


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(path)   # 32896 / 257 = 128
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    rgb = tvl.tasks.TaskItem("x", "y", str(path)).open_image()
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (128, 128, 128)   # was (255, 255, 255)


def test_csv_with_a_column_named_twice_raises(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("input,output,output\nFrance,Paris,Lyon\n" * 1)
    with pytest.raises(TaskError, match="'output' appear more than once"):
        tvl.tasks.from_csv(path)


# ================================================================================= 3. untrusted paths and files
def _task_with_image(folder: Path, key: str) -> Path:
    path = folder / "t.json"
    items = [{"input": a, "output": b, "image": key if i == 0 else None} for i, (a, b) in enumerate(PAIRS)]
    path.write_text(json.dumps({"items": items}))
    return path


def test_a_saved_copy_of_a_shipped_task_loads_without_opting_out(tmp_path):
    """Shipped images live in tv_lens's own data folder; a copy of a shipped task keeps pointing there and loads,
    while a path next to it that leaves the data root is still refused."""
    from tv_lens.errors import UnsafePathError

    shipped = tvl.tasks.load("country-capital")
    path = tmp_path / "copy" / "task.json"
    tvl.tasks.save_json(shipped, path)
    copy = tvl.tasks.load(path)
    assert [it.image for it in copy.items if it.image] == [it.image for it in shipped.items if it.image]
    assert any(it.image for it in copy.items)
    secret = tmp_path / "secret.png"
    random_image(4, 4).save(secret)
    with pytest.raises(UnsafePathError):
        tvl.tasks.load(_task_with_image(tmp_path / "copy", str(secret)))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_image_paths_are_confined_to_the_data_root(tmp_path, how):
    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "secret.png"
    random_image(4, 4).save(secret)
    if how == "symlink":
        (data / "link.png").symlink_to(secret)
    key = {"dotdot": "../secret.png", "absolute": str(secret), "symlink": "link.png"}[how]
    task_file = _task_with_image(data, key)
    with pytest.raises(UnsafePathError, match="outside the data root"):
        tvl.tasks.load(task_file, n_val=2, n_test=2)
    task = tvl.tasks.load(task_file, n_val=2, n_test=2, allow_outside_root=True)   # the opt-out
    assert any(it.image for it in task.items)
    csv_file = data / "t.csv"
    csv_file.write_text("input,output,image\n" + "".join(f"{a},{b},{key if i == 0 else ''}\n"
                                                         for i, (a, b) in enumerate(PAIRS)))
    with pytest.raises(UnsafePathError):
        tvl.tasks.from_csv(csv_file, n_val=2, n_test=2)


def test_image_inside_the_root_still_loads(tmp_path):
    (tmp_path / "img").mkdir()
    random_image(4, 4).save(tmp_path / "img" / "a.png")
    task = tvl.tasks.load(_task_with_image(tmp_path, "img/../img/a.png"), n_val=2, n_test=2)
    assert [it for it in task.items if it.image][0].open_image().size == (4, 4)


def test_huge_and_empty_images_raise_typed_errors(tmp_path):
    huge = _png(tmp_path / "huge.png", 20000, 20000)            # header only: nothing is decoded
    with pytest.raises(ImageError, match="over the limit"):    # was: PIL's DecompressionBombError
        tvl.tasks.TaskItem("x", "y", str(huge)).open_image()
    empty = _png(tmp_path / "empty.png", 0, 0)
    with pytest.raises(ImageError, match="empty|cannot read"):
        tvl.tasks.TaskItem("x", "y", str(empty)).open_image()
    assert issubclass(ImageError, TaskError)


def test_non_utf8_and_deep_json_task_files_name_the_file(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps([{"input": "Côte", "output": "x"}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(TaskError, match="latin.json: not UTF-8"):
        tvl.tasks.load(latin)
    latin_csv = tmp_path / "latin.csv"
    latin_csv.write_bytes("input,output\nCôte,Yamoussoukro\n".encode("latin-1"))
    with pytest.raises(TaskError, match="latin.csv.*not UTF-8"):
        tvl.tasks.load(latin_csv)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TaskError, match="deep.json: JSON nested deeper"):
        tvl.tasks.load(deep)


# ================================================================================= 4. command line: early, one line
def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


@pytest.mark.parametrize("case", ["device", "cuda", "batch-size 0", "n-shots -1", "max-new-tokens 0", "out field",
                                  "out in a file", "remote code", "merge onto input", "phases suffix", "dtype"])
def test_bad_arguments_fail_before_the_model_loads(files, tmp_path, monkeypatch, capsys, case):
    monkeypatch.setattr(runs, "load_model", _no_model)
    model, task = files["llama"], files["task"]
    if case == "remote code":
        remote = tmp_path / "remote"
        remote.mkdir()
        config = json.loads((Path(model) / "config.json").read_text())
        (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "m.Model"}}))
        model = remote
    if case == "merge onto input":   # a complete one-shard sweep: the old merge overwrote it
        pd.DataFrame({"task": ["capitals"], "seed": [0], "layer": [0], "accuracy": [0.0], "n": [3],
                      "query_modality": ["text"], "vector_modality": ["text"], "shard": ["0/1"],
                      "provenance": [json.dumps({"tasks": {"capitals": {}}, "layers": [0]})]}).to_csv(
            tmp_path / "a.csv", index=False)
    (tmp_path / "file").write_text("")
    argv = {
        "device": ["sweep", model, task, *SMALL, "--device", "gpu0"],
        "cuda": ["sweep", model, task, *SMALL, "--device", "cuda:7"],
        "batch-size 0": ["sweep", model, task, *SMALL, "--batch-size", "0"],
        "n-shots -1": ["sweep", model, task, *SMALL, "--n-shots", "-1"],
        "max-new-tokens 0": ["evaluate", model, task, *SMALL, "--methods", "no_context", "--max-new-tokens", "0"],
        "out field": ["sweep", model, task, *SMALL, "--out", tmp_path / "{task}.csv"],
        "out in a file": ["sweep", model, task, *SMALL, "--out", tmp_path / "file" / "s.csv"],
        "remote code": ["sweep", model, task, *SMALL],
        "merge onto input": ["merge", tmp_path / "a.csv", "--out", tmp_path / "a.csv"],
        "phases suffix": ["phases", model, task, *SMALL, "--out", tmp_path / "p.csv"],
        "dtype": ["sweep", model, task, *SMALL, "--dtype", "float99"],
    }[case]
    if case == "cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    try:
        code = run(*argv)
    except SystemExit as exit_:   # argparse's type errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tv-lens: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "loaded before" not in err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root can write anywhere")
def test_read_only_output_folder_fails_before_the_model_loads(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "load_model", _no_model)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert run("sweep", files["llama"], files["task"], *SMALL, "--out", folder / "s.csv") == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


def test_read_only_check_itself(tmp_path, monkeypatch):
    from tv_lens.io import check_writable

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputPathError, match="not writable"):
        check_writable(tmp_path / "x.csv")


def test_debug_shows_the_traceback_and_unexpected_errors_are_one_line(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "load_model", _no_model)
    argv = ["sweep", files["llama"], files["task"], *SMALL, "--out", tmp_path / "s.csv"]
    assert run(*argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected AssertionError" in err and "Traceback" not in err
    assert run("--debug", *argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_sweep_refuses_a_vector_of_another_task(files, tmp_path, monkeypatch, capsys):
    other = _vector()   # task "cc"; the run's task is "capitals" (old: the one file was used for it anyway)
    path = other.save(tmp_path / "cc.safetensors")
    monkeypatch.setattr(runs, "load_model", _no_model)
    assert run("sweep", files["llama"], files["task"], *SMALL, "--vector", path, "--out", tmp_path / "s.csv") == 2
    assert "for task(s) ['cc']" in capsys.readouterr().err


# ================================================================================= merge provenance
@pytest.fixture(scope="module")
def shards(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    base = ["sweep", files["llama"], files["task"], *SMALL]
    for i in range(2):
        assert run(*base, "--shard", f"{i}/2", "--out", out / f"p{i}.csv") == 0
    assert run(*base, "--n-val", "4", "--shard", "1/2", "--out", out / "other_nval.csv") == 0
    return out


def test_merge_refuses_shards_of_another_run(shards, tmp_path, capsys):
    assert run("merge", shards / "p0.csv", shards / "other_nval.csv", "--out", tmp_path / "m.csv") == 2
    err = capsys.readouterr().err
    assert "different runs" in err and "n_val" in err and not (tmp_path / "m.csv").exists()
    assert run("merge", shards / "p0.csv", shards / "p1.csv", "--out", tmp_path / "ok.csv") == 0


def test_merge_refuses_missing_rows(shards, tmp_path, capsys):
    part = pd.read_csv(shards / "p1.csv", keep_default_na=False)
    part.iloc[1:].to_csv(tmp_path / "p1.csv", index=False)
    assert run("merge", shards / "p0.csv", tmp_path / "p1.csv", "--out", tmp_path / "m.csv") == 2
    assert "missing" in capsys.readouterr().err
    pd.read_csv(shards / "p1.csv").drop(columns="provenance").to_csv(tmp_path / "old.csv", index=False)
    assert run("merge", shards / "p0.csv", tmp_path / "old.csv", "--out", tmp_path / "m.csv") == 2
    assert "no provenance" in capsys.readouterr().err


def test_evaluate_layer_file_must_come_from_the_same_model(shards, files, tmp_path, capsys):
    merged = tmp_path / "merged.csv"
    assert run("merge", shards / "p0.csv", shards / "p1.csv", "--out", merged) == 0
    frame = pd.read_csv(merged, keep_default_na=False)
    record = json.loads(frame["provenance"][0])
    frame.assign(provenance=json.dumps({**record, "model": "another/model"})).to_csv(tmp_path / "alien.csv",
                                                                                     index=False)
    capsys.readouterr()
    assert run("evaluate", files["llama"], files["task"], *SMALL, "--methods", "patch", "--layer",
               tmp_path / "alien.csv", "--out", tmp_path / "r.csv") == 2
    assert "sweep of another/model" in capsys.readouterr().err


# ================================================================================= 5. thread safety (#13 implements)
def test_a_model_used_from_two_threads_at_once_raises(llama):
    """Documented in docs/guarantees.md; the detection itself is #13's (skipped until it is merged)."""
    import threading

    concurrent_error = getattr(tvl.errors, "ConcurrentUseError", None)
    if concurrent_error is None:
        pytest.skip("ConcurrentUseError (issue 13) is not in this tree yet")
    batch = llama.prepare(["Q:France\nA:Paris\n\nQ:Spain\nA:"])
    clean = llama(batch).detach()
    inside, release = threading.Event(), threading.Event()
    results: dict = {}

    def blocking(act, hook):
        inside.set()
        release.wait(timeout=30)
        return act

    def first():
        results["a"] = llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", blocking)]).detach()

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(timeout=60)
    try:
        with pytest.raises(concurrent_error):
            llama(batch)
    finally:
        release.set()
        thread.join(timeout=60)
    assert torch.allclose(results["a"], clean), "the first call finished unharmed"
    assert torch.allclose(llama(batch), clean), "and the model is usable afterwards"
