"""The ``tv-lens`` command line: the notebook API as batch runs that split across the machines of a job scheduler.

::

    tv-lens hooks    MODEL                                   list hook names
    tv-lens extract  MODEL TASK --out vec.safetensors        a task vector
    tv-lens sweep    MODEL TASK... --out sweep.csv           accuracy per patched layer (+ sweep.html)
    tv-lens evaluate MODEL TASK... --out results.csv         Table-3 methods (+ results.predictions.csv)
    tv-lens phases   MODEL TASK... --out phases.html         logit-lens phase curves (+ phases.csv)
    tv-lens merge    FILES... --out merged.csv               join the outputs of ``--shard i/n`` runs

A model is a hub id, a folder written by ``save_pretrained``, or ``smollm2`` (the offline real SmolLM2-135M); a task
is a shipped name (``tvl.tasks.list_tasks()``), ``all``, or a ``.json`` / ``.csv`` file or folder.

Sharding: ``--shard i/n`` (``0 <= i < n``) runs every n-th unit of work, starting at the i-th. A unit is the smallest
piece whose result does not depend on what else runs: a (task, layer) pair for ``sweep``; for ``evaluate`` a
(task, test item) pair for the contextless methods (no_context and the patches) and a (task, seed) pair for the
methods with demos in context (their demos are drawn for the whole split at once). Every output row carries its
``shard``; ``merge`` refuses a missing or repeated shard, recomputes the scores from counts, and for sweeps picks the
best layer again.

Every argument and output location is checked BEFORE a model loads. Errors print one line, ``tv-lens: error: ...``,
and exit with status 2 (``--debug`` or ``TV_LENS_DEBUG=1`` shows the traceback). Every file is written atomically
(:mod:`tv_lens.io`); no two outputs of a run share a path; every table carries a ``provenance`` column (model, tasks,
split sizes, seeds, layers, options, tv_lens version) that ``merge`` and ``evaluate --layer FILE`` check.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import string
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__, lens, plot
from . import prompts as P
from . import tasks as T
from .errors import InputError, OutputPathError, ProvenanceError, TaskError, TvLensError, UsageError
from .io import atomic_write, check_writable
from .evaluate import METHODS, PATCH_METHODS, EvalResult, SweepResult, best_layer, evaluate, layer_sweep
from .demo.suite import suites
from .model import HookedMultimodalModel, _parse_dtype
from .vectors import TaskVector, ensemble, extract_task_vector, instruction_vector

SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")
REFERENCE_NAMES = ("reference", "reference-vlm")
CONTEXT_METHODS = ("majority", "base", "xbase")   # demos in the prompt: drawn per (task, seed), not per item
CLI_METHODS = ("no_context", *CONTEXT_METHODS, *PATCH_METHODS)   # the head methods need a head selection: Python
SWEEP_COLUMNS = ["task", "seed", "layer", "accuracy", "n", "query_modality", "vector_modality", "shard"]
SCORE_KEYS = ["task", "method", "query_modality", "seed", "layer"]
EXIT_ERROR = 2
EXIT_INTERNAL = 1
TABLE_SUFFIXES = (".csv", ".json")
OUT_FIELDS = ("i", "n")   # the fields an --out template may use


# ---------------------------------------------------------------------------------------------- argument values
def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 0/4, not {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return index, count


def parse_ints(text: str) -> list[int]:
    """``"0"``, ``"0,1,2"``, ``"4-8"``, ``"0,10-12,-1"`` → a list of ints (ranges inclusive)."""
    values: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            start, sep, end = part[1:].partition("-")   # part[0] may be a minus sign
            values.extend(range(int(part[0] + start), int(end) + 1) if sep else [int(part)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ints like 0,1,2 or 4-8, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one int")
    return values


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def parse_layers(text: str) -> list[int] | None:
    """``"all"`` → ``None`` (every layer), else :func:`parse_ints`."""
    return None if text.strip().lower() == "all" else parse_ints(text)


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    python_only = [m for m in methods if m in METHODS and m not in CLI_METHODS]
    if python_only:
        raise argparse.ArgumentTypeError(f"method(s) {', '.join(python_only)} need a head selection: run them "
                                         "from Python (tvl.heads, tvl.evaluate)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(CLI_METHODS)}")
    return methods


def _one_line(err: Any) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tv-lens: warning: {_one_line(message)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- models and tasks
def load_model(name: str, dtype: str | None = None, device: str | None = None, device_map: str | None = None,
               load_in_4bit: bool = False, trust_remote_code: bool = False) -> HookedMultimodalModel:
    """A ``HookedMultimodalModel`` from a hub id, a local folder, ``smollm2`` or ``reference`` (the offline VLM)."""
    if name.lower() in SMOLLM2_NAMES:
        from .offline import load_smollm2

        hf_model, tokenizer = load_smollm2(**({"dtype": _parse_dtype(dtype)} if dtype else {}))
        return HookedMultimodalModel.from_hf(hf_model.to(device) if device else hf_model, tokenizer=tokenizer)
    if name.lower() in REFERENCE_NAMES:
        from .reference import ReferenceWeightsError, load_reference_vlm

        try:
            hf_model, processor = load_reference_vlm(dtype=_parse_dtype(dtype) or torch.float32, device=device)
        except ReferenceWeightsError as err:
            raise InputError(f"the reference VLM cannot load: {_one_line(err)}") from err
        return HookedMultimodalModel.from_hf(hf_model, processor=processor, model_name="reference-vlm")
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"no model folder at {name}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise InputError(f"{name} has no config.json: give a folder written by save_pretrained, a hub id, "
                         "or 'smollm2'")
    check_model_folder(name, trust_remote_code)
    quantization = None
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=_parse_dtype(dtype) or torch.bfloat16)
    try:
        return HookedMultimodalModel.from_pretrained(
            str(path) if path.exists() else name, dtype=dtype, device=device, device_map=device_map,
            quantization_config=quantization, trust_remote_code=trust_remote_code)
    except OSError as err:  # transformers: not a folder and not reachable on the hub
        raise InputError(f"could not load model {name!r}: {_one_line(err)}") from err


def check_model_folder(name: str, trust_remote_code: bool) -> None:
    """Before loading: a local folder must hold a readable config.json, and code from it needs the user's consent."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{name} has no config.json: give a folder written by save_pretrained, a hub id, "
                         "or 'smollm2'")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{config_file} is not valid JSON ({_one_line(err)})") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_file} is not a JSON object")
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError(f"{name} needs its own Python code (config.json has auto_map); read it, then pass "
                         "--trust-remote-code to run it")


def check_device(device: str | None) -> None:
    """``--device``: a torch device that exists on this machine."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device {device!r} is not a device ({_one_line(err)}); use cpu, cuda, cuda:1 or mps"
                         ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu", "meta") or dev.type == "meta":
        raise UsageError(f"--device {device}: use cpu, cuda, cuda:N or mps")


def _model_from(args) -> HookedMultimodalModel:
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return load_model(args.model, args.dtype, args.device, args.device_map, args.load_in_4bit,
                      args.trust_remote_code)


def load_tasks(specs: Sequence[str], n_val: int, n_test: int, images: bool = False) -> list[T.Task]:
    """Tasks by name, ``all``, or path; with ``images``, only the items whose image file exists."""
    names = [name for spec in specs for name in (T.list_tasks() if spec == "all" else [spec])]
    try:
        loaded = [T.load(name, n_val=n_val, n_test=n_test) for name in dict.fromkeys(names)]
    except TaskError as err:
        if "n_val" not in str(err):
            raise
        raise TaskError(f"{_one_line(err)} (on the command line: --n-val / --n-test)") from err
    taken = [t.name for t in loaded]
    if len(set(taken)) != len(taken):
        raise TaskError(f"two tasks are named the same ({taken}); rename one (the name is the task's key)")
    return [t.with_images(existing=True) for t in loaded] if images else loaded


def _check_modalities(model: HookedMultimodalModel, *modalities: str) -> None:
    if "image" in modalities and model.image_placeholder is None:
        raise InputError(f"{model.cfg.model_name} is a text-only model: image prompts need a VLM "
                         "(use --modality text --query-modality text)")


def _other(modality: str) -> str:
    return "image" if modality == "text" else "text"


def _icl_vector(model, task: T.Task, modality: str, seed: int, args, layers: list[int] | str = "all") -> TaskVector:
    """The mean task vector of ``task.val`` ICL prompts with ``modality`` demos (from ``train`` when it has any)."""
    prompts = P.icl(task.val, n_shots=args.n_shots, modality=modality, pool=task.train or None, seed=seed,
                    chat=args.chat, template=args.template)
    return extract_task_vector(model, prompts, layers=layers, batch_size=args.batch_size, task=task.name, seed=seed,
                               progress=not args.no_progress)


def _instruction_vector(model, task: T.Task, layers: list[int] | str = "all") -> TaskVector:
    if not task.instruction:
        raise TaskError(f"task {task.name!r} has no instruction: add an \"instruction\" field to its JSON file")
    return instruction_vector(model, task.instruction, layers=layers, task=task.name)


# ---------------------------------------------------------------------------------------------- files and shards
def fill_out_template(text: str, shard: tuple[int, int] | None) -> str:
    """``--out`` with ``{i}`` / ``{n}`` filled in from ``--shard`` (``0`` / ``1`` unsharded); other fields raise."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as err:
        raise UsageError(f"--out {text!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    unknown = sorted(fields - set(OUT_FIELDS))
    if unknown:
        raise UsageError(f"--out {text!r}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
                         "only {i} and {n} (the shard) can be filled in")
    index, count = shard or (0, 1)
    try:
        return text.format(i=index, n=count)
    except (ValueError, IndexError) as err:
        raise UsageError(f"--out {text!r}: {_one_line(err)}") from None


def _out_path(args, default: str) -> Path:
    """``--out`` (``{i}`` / ``{n}`` filled in with the shard), or ``default`` (``.shard{i}of{n}`` when sharded)."""
    shard = getattr(args, "shard", None)
    if args.out:
        return Path(fill_out_template(args.out, shard))
    path = Path(default)
    return path.with_name(f"{path.stem}.shard{shard[0]}of{shard[1]}{path.suffix}") if shard else path


def _table_path(args, default: str) -> Path:
    path = _out_path(args, default)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UsageError(f"--out {path}: a table is written as .csv or .json, not {path.suffix or 'no suffix'!r} "
                         f"(the figure goes next to it as .html)")
    return path


def check_outputs(outputs: Sequence[Path], inputs: Sequence[str | Path] = ()) -> list[Path]:
    """Before any compute: each output distinct, none an input of the run, each one writable."""
    resolved: dict[str, Path] = {}
    for path in outputs:
        key = os.path.realpath(path)
        if key in resolved:
            raise OutputPathError(f"two outputs of this run would go to {path}; choose another --out")
        resolved[key] = path
    for given in inputs:
        if given is not None and os.path.realpath(given) in resolved:
            raise OutputPathError(f"--out {given} is also an input of this run; write elsewhere")
    for path in outputs:
        check_writable(path)
    return list(outputs)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def write_table(frame: pd.DataFrame, path: Path, kind: str, **extra: Any) -> Path:
    """``.json``: ``{"kind", **extra, "rows"}``; anything else: CSV. Written atomically (:mod:`tv_lens.io`)."""
    if path.suffix.lower() == ".json":
        rows = json.loads(frame.to_json(orient="records"))
        with atomic_write(path) as fh:
            fh.write(json.dumps({"kind": kind, **extra, "rows": rows}, indent=1) + "\n")
    else:   # strings quoted: model answers may hold line breaks, commas and quotes
        with atomic_write(path, newline="") as fh:
            frame.to_csv(fh, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


def provenance(args, model, tasks: Sequence[T.Task], **more: Any) -> str:
    """What a table's rows depend on, as one canonical JSON string (the ``provenance`` column).

    Shard-independent on purpose: the shards of one run carry the same string, so ``merge`` can demand equality.
    """
    record = {
        "tv_lens": __version__, "command": args.command, "model": model.cfg.model_name, "family": model.cfg.family,
        "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
        "tasks": {t.name: {"n_val": len(t.val), "n_test": len(t.test), "n_train": len(t.train), "seed": t.seed}
                  for t in tasks},
        "n_val": args.n_val, "n_test": args.n_test, "n_shots": args.n_shots, "seeds": list(args.seed),
        "template": args.template, "chat": bool(args.chat), "case_sensitive": not args.case_insensitive,
        **more}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _provenance_of(frame: pd.DataFrame, name: str | Path) -> dict:
    """The one provenance record of a table (raises unless every row carries the same one)."""
    if "provenance" not in frame:
        raise ProvenanceError(f"{name} has no provenance column (written by an older tv-lens?); run it again")
    values = set(frame["provenance"].astype(str))
    if len(values) != 1:
        raise ProvenanceError(f"{name} mixes rows of {len(values)} different runs")
    try:
        record = json.loads(values.pop())
    except (json.JSONDecodeError, RecursionError):
        raise ProvenanceError(f"{name}: its provenance column is not valid JSON") from None
    if not isinstance(record, dict):
        raise ProvenanceError(f"{name}: its provenance is not a JSON object")
    return record


def _check_same_run(frames: dict[str, pd.DataFrame]) -> dict:
    """All tables come from one run (same provenance); returns it."""
    records = {name: _provenance_of(frame, name) for name, frame in frames.items()}
    first_name, first = next(iter(records.items()))
    for name, record in records.items():
        diff = sorted(k for k in set(first) | set(record) if first.get(k) != record.get(k))
        if diff:
            detail = "; ".join(f"{k}: {first.get(k)!r} vs {record.get(k)!r}" for k in diff[:3])
            raise ProvenanceError(f"{first_name} and {name} come from different runs ({detail}); merge only the "
                                  "shards of one run")
    return first


def read_table(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_table` (CSV or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return pd.DataFrame(data["rows"] if isinstance(data, dict) else data)
        with path.open(encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise InputError(f"{path}: column(s) {twice} appear twice in the header")
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (ValueError, KeyError, TypeError, RecursionError, pd.errors.ParserError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path} is not a tv-lens output table ({_one_line(err)})") from None


def _kind(frame: pd.DataFrame, name: str | Path) -> str:
    columns = set(frame.columns)
    if {"query", "first_token", "method"} <= columns:
        return "predictions"
    if {"task", "method", "seed", "n_correct", "n_total"} <= columns:
        return "scores"
    if {"task", "seed", "layer", "accuracy"} <= columns and "method" not in columns:
        return "sweep"
    raise InputError(f"{name}: not a sweep, evaluate or predictions output of tv-lens (columns {sorted(columns)})")


def _shard_units(units: list, shard: tuple[int, int] | None) -> list:
    """Every n-th unit from the i-th: the same split on every machine."""
    if shard is None:
        return list(units)
    index, count = shard
    if count > len(units):
        raise InputError(f"--shard {index}/{count}: this run has only {len(units)} units of work; use at most "
                         f"{len(units)} shards")
    return units[index::count]


def _shard_label(shard: tuple[int, int] | None) -> str:
    return f"{shard[0]}/{shard[1]}" if shard else "0/1"


def _check_shards(frames: dict[str, pd.DataFrame], allow_partial: bool) -> None:
    """Each file is one shard ``i/n`` (its ``shard`` column); all share ``n``; none twice; none missing."""
    seen: dict[int, str] = {}
    counts = set()
    for name, frame in frames.items():
        labels = set(frame["shard"].astype(str)) if "shard" in frame else set()
        if len(labels) != 1:
            raise InputError(f"{name}: expected one shard label in its 'shard' column, found {sorted(labels)}")
        label = labels.pop()
        try:
            index, count = parse_shard(label)
        except argparse.ArgumentTypeError:
            raise InputError(f"{name}: {label!r} is not a shard label i/n") from None
        counts.add(count)
        if index in seen:
            raise InputError(f"{seen[index]} and {name} are both shard {index}/{count}")
        seen[index] = name
    if len(counts) > 1:
        raise InputError(f"the files come from runs split differently (n = {sorted(counts)})")
    missing = sorted(set(range(counts.pop())) - set(seen))
    if missing and not allow_partial:
        raise InputError(f"shard(s) {missing} are missing (--allow-partial merges anyway)")


# ---------------------------------------------------------------------------------------------- hooks, extract
def cmd_hooks(args) -> int:
    model = _model_from(args)
    print(model)
    for name in model.hook_names():
        print(name)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _vector_out(args, default: str) -> Path:
    """``--out`` for a vector: a file name (``.safetensors`` appended if missing) or a folder to write INTO."""
    from .vectors import vector_path

    if not args.out:
        return vector_path(default)
    text = fill_out_template(args.out, None)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        path = path / default
    return vector_path(path)


def cmd_extract(args) -> int:
    if len(args.seed) != 1:
        raise UsageError("extract takes one --seed")
    images = args.modality == "image" and args.kind != "instruction"
    (task,) = load_tasks([args.task], args.n_val, args.n_test, images=images)
    default = f"{task.name}.{args.kind}" + (f".{args.modality}" if args.kind != "instruction" else "")
    (out,) = check_outputs([_vector_out(args, default + ".safetensors")], inputs=[args.task])
    model = _model_from(args)
    _check_modalities(model, args.modality)
    layers = "all" if args.layers is None else args.layers
    if args.kind == "instruction":
        vector = _instruction_vector(model, task, layers)
    else:
        prompts = P.icl(getattr(task, args.split), n_shots=args.n_shots, modality=args.modality,
                        pool=(task.train or None) if args.split != "train" else None, seed=args.seed[0],
                        chat=args.chat, template=args.template)
        vector = extract_task_vector(model, prompts, layers=layers, position=args.position,
                                     batch_size=args.batch_size, task=task.name, seed=args.seed[0],
                                     progress=not args.no_progress)
        if args.kind == "ensemble":
            vector = ensemble([vector, _instruction_vector(model, task, layers)])
    record = json.loads(provenance(args, model, [task], split=args.split, position=args.position,
                                   kind=args.kind, modality=args.modality))
    vector = dataclasses.replace(vector, extra={**vector.extra, "provenance": record})
    path = vector.save(out)
    print(vector)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------- sweep
def cmd_sweep(args) -> int:
    tasks = load_tasks(args.tasks, args.n_val, args.n_test, images="image" in (args.modality, args.query_modality))
    given: dict[str, TaskVector] = {}
    files: dict[str, str] = {}
    for file in args.vector or []:
        vector = TaskVector.load(file)
        key = vector.task or Path(file).stem
        if key in given:
            raise UsageError(f"two --vector files are for task {key!r}; give one per task")
        given[key], files[key] = vector, file
    names = [t.name for t in tasks]
    if given and len(given) == 1 and len(names) == 1 and next(iter(given.values())).task is None:
        given = {names[0]: next(iter(given.values()))}   # one task, one vector without a task: it is for it
    foreign = sorted(set(given) - set(names))
    if foreign:
        raise ProvenanceError(f"--vector file(s) for task(s) {foreign} (from {[files.get(k) for k in foreign]}); "
                              f"this run's tasks are {names}")
    path = _table_path(args, "sweep.csv")
    check_outputs([path] + ([] if args.shard else [_sibling(path, ".html")]),
                  inputs=[*args.tasks, *(args.vector or [])])
    model = _model_from(args)
    _check_modalities(model, args.modality, args.query_modality)
    for name, vector in given.items():
        vector.check_compatible(model)
        if vector.model_name != model.cfg.model_name or vector.n_model_layers != model.cfg.n_layers:
            raise ProvenanceError(f"the --vector for {name!r} comes from {vector.model_name} "
                                  f"({vector.n_model_layers} layers), not {model.cfg.model_name} "
                                  f"({model.cfg.n_layers}); to use a vector across models call tvl.transfer")
    all_layers = (list(range(model.cfg.n_layers)) if args.layers is None
                  else sorted({model.layer_index(layer) for layer in args.layers}))
    vector_record = {name: {"seed": v.seed, "n_prompts": v.n_prompts, "kind": v.kind, "modality": v.modality,
                            "position": v.position} for name, v in given.items()}
    record = provenance(args, model, tasks, layers=all_layers, modality=args.modality,
                        query_modality=args.query_modality, vectors=vector_record or None)
    mine = _shard_units([(task.name, layer) for task in tasks for layer in all_layers], args.shard)
    frames = []
    for task in tqdm(tasks, desc="tasks", disable=args.no_progress, leave=False):
        layers = [layer for name, layer in mine if name == task.name]
        if not layers:
            continue
        if given:
            vector = given.get(task.name)
            if vector is None:
                raise InputError(f"no --vector for task {task.name!r}; the files hold {sorted(given)}")
            vectors = [vector]
        else:
            vectors = [_icl_vector(model, task, args.modality, seed, args, layers) for seed in args.seed]
        # batch_size prompts per forward whatever the shard's layer count, so every shard batches alike
        result = layer_sweep(model, {task.name: vectors}, {task.name: task}, query_modality=args.query_modality,
                             layers=layers, case_sensitive=not args.case_insensitive,
                             max_rows=args.batch_size * len(layers), progress=not args.no_progress,
                             template=args.template)
        frame = result.scores.assign(n=len(task.val), query_modality=args.query_modality,
                                     vector_modality=vectors[0].modality, shard=_shard_label(args.shard),
                                     provenance=record)
        frames.append(frame)
    return _finish_sweep(pd.concat(frames, ignore_index=True), path, partial=args.shard is not None)


def _finish_sweep(frame: pd.DataFrame, path: Path, partial: bool) -> int:
    """Write the per-layer table; unless it is one shard, pick the best layer and draw Figure 11."""
    frame = frame[SWEEP_COLUMNS + [c for c in frame.columns if c not in SWEEP_COLUMNS]]
    if partial:
        write_table(frame, path, "sweep", best_layer=None)
        print(f"wrote {path} (one shard: `tv-lens merge` the shards to pick the layer)")
        return 0
    result = SweepResult(scores=frame, best=best_layer(SweepResult(frame, 0).accuracy_by_layer()))
    write_table(frame, path, "sweep", best_layer=result.best)
    figure = plot.save(plot.sweep(result), _sibling(path, ".html"))
    accuracy = result.accuracy_by_layer()
    print(accuracy.round(3).to_frame("accuracy").T.to_string())
    print(f"best layer: {result.best} (accuracy {accuracy.loc[result.best]:.3f}, mean over seeds then tasks)")
    print(f"wrote {path} and {figure}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def _read_layer(value: str, model) -> int:
    """``--layer``: an int, or a sweep output file whose best layer is used."""
    try:
        return model.layer_index(int(value))
    except ValueError:
        pass
    frame = _sweep_file(value)
    record = _provenance_of(frame, value)
    if record.get("model") != model.cfg.model_name or record.get("n_layers") != model.cfg.n_layers:
        raise ProvenanceError(f"--layer {value} is a sweep of {record.get('model')} ({record.get('n_layers')} "
                              f"layers), not of {model.cfg.model_name} ({model.cfg.n_layers})")
    return model.layer_index(best_layer(SweepResult(frame, 0).accuracy_by_layer()))


def _sweep_file(value: str) -> pd.DataFrame:
    """``--layer FILE``: a sweep output with provenance (checked before the model loads)."""
    frame = read_table(value)
    if _kind(frame, value) != "sweep":
        raise InputError(f"--layer {value}: neither a layer number nor a sweep output")
    _provenance_of(frame, value)
    return frame


def _patch_vectors(model, task: T.Task, methods: list[str], args, layers: list[int] | str) -> dict[str, list]:
    """``{method: one vector per seed}`` for the patch methods of ``task``."""
    query = args.query_modality
    icl: dict[tuple[str, int], TaskVector] = {}

    def icl_vector(modality: str, seed: int) -> TaskVector:
        if (modality, seed) not in icl:
            icl[modality, seed] = _icl_vector(model, task, modality, seed, args, layers)
        return icl[modality, seed]

    instruction = (_instruction_vector(model, task, layers)
                   if {"instruction_patch", "ensemble_patch"} & set(methods) else None)
    out: dict[str, list] = {}
    for method in methods:
        if method == "patch":
            out[method] = [icl_vector(query, seed) for seed in args.seed]
        elif method == "xpatch":
            out[method] = [icl_vector(_other(query), seed) for seed in args.seed]
        elif method == "instruction_patch":
            out[method] = [instruction]
        elif method == "ensemble_patch":   # the paper's ensemble: text exemplars + the instruction
            out[method] = [ensemble([icl_vector("text", seed), instruction]) for seed in args.seed]
    return out


def _given_layers(values: list[str] | None, methods: list[str]) -> dict[str, str]:
    """``--layer 16`` (every patch method) and ``--layer xpatch=sweep.csv`` (one method) → ``{method: value}``."""
    given: dict[str, str] = {}
    for value in values or []:
        method, sep, layer = value.rpartition("=")
        if sep and method not in PATCH_METHODS:
            raise InputError(f"--layer {value}: {method!r} is not a patch method ({', '.join(PATCH_METHODS)})")
        given.update({method: layer} if sep else {m: layer for m in methods if m not in given})
    return {m: given[m] for m in methods if m in given}


def _patch_layers(model, tasks: list[T.Task], methods: list[str], vectors: dict, args) -> dict[str, int]:
    """``{method: layer}``: from ``--layer``, else the best layer of a sweep on val over all tasks."""
    layers = {method: _read_layer(value, model) for method, value in _given_layers(args.layer, methods).items()}
    for method in methods:
        if method not in layers:
            sweep = layer_sweep(model, {t.name: vectors[t.name][method] for t in tasks}, {t.name: t for t in tasks},
                                query_modality=args.query_modality, case_sensitive=not args.case_insensitive,
                                max_rows=args.batch_size * model.cfg.n_layers, progress=not args.no_progress,
                                template=args.template)
            layers[method] = sweep.best
            print(f"{method}: layer {sweep.best} (best on val; --layer {method}=N skips this sweep)")
    return layers


def cmd_evaluate(args) -> int:
    methods, query = args.methods, args.query_modality
    needs_other = bool({"xbase", "xpatch"} & set(methods))
    tasks = load_tasks(args.tasks, args.n_val, args.n_test, images=query == "image" or needs_other)
    patch_methods = [m for m in methods if m in PATCH_METHODS]
    layer_files = []
    for value in _given_layers(args.layer, patch_methods).values():
        try:
            int(value)
        except ValueError:
            _sweep_file(value)
            layer_files.append(value)
    path = _table_path(args, "results.csv")
    check_outputs([path, _sibling(path, ".predictions.csv")], inputs=[*args.tasks, *layer_files])
    model = _model_from(args)
    _check_modalities(model, query, _other(query) if needs_other else query)
    item_methods = [m for m in methods if m not in CONTEXT_METHODS]
    context_methods = [m for m in methods if m in CONTEXT_METHODS]
    vectors = {}
    if len(_given_layers(args.layer, patch_methods)) < len(patch_methods):   # a sweep needs every layer's vector
        vectors = {t.name: _patch_vectors(model, t, patch_methods, args, "all") for t in tasks}
    layer_of = _patch_layers(model, tasks, patch_methods, vectors, args) if patch_methods else {}

    units = []
    for task in tasks:
        units += [(task.name, "item", i) for i in range(len(task.test))] if item_methods else []
        units += [(task.name, "seed", s) for s in args.seed] if context_methods else []
    mine = _shard_units(units, args.shard)
    common = dict(query_modality=query, n_shots=args.n_shots, case_sensitive=not args.case_insensitive,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=not args.no_progress,
                  template=args.template)
    results = []
    for task in tqdm(tasks, desc="tasks", disable=args.no_progress, leave=False):
        items = [task.test[i] for name, kind, i in mine if name == task.name and kind == "item"]
        seeds = [s for name, kind, s in mine if name == task.name and kind == "seed"]
        if items:
            if patch_methods and task.name not in vectors:
                vectors[task.name] = _patch_vectors(model, task, patch_methods, args, sorted(set(layer_of.values())))
            results.append(evaluate(model, items, item_methods, vectors=vectors.get(task.name), layer=layer_of,
                                    seeds=args.seed, task=task.name, **common))
        if seeds:
            results.append(evaluate(model, task, context_methods, seeds=seeds, **common))
    result = EvalResult.concat(results)
    totals = {t.name: len(t.test) for t in tasks}
    scores = result.scores.assign(
        n_correct=(result.scores["accuracy"] * result.scores["n"]).round().astype(int),
        n_exact=(result.scores["exact_match"] * result.scores["n"]).round().astype(int),
        n_total=[totals[t] for t in result.scores["task"]])
    record = provenance(args, model, tasks, methods=methods, query_modality=query, layers=layer_of,
                        max_new_tokens=args.max_new_tokens)
    scores = _merge_scores(scores).assign(shard=_shard_label(args.shard), provenance=record)
    predictions = _sort_predictions(result.predictions).assign(provenance=record)
    return _finish_evaluate(scores, predictions, path, partial=args.shard is not None)


def _merge_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Sum the counts of rows of the same (task, method, modality, seed, layer); recompute the rates from them."""
    scores = scores.assign(layer=scores["layer"].astype("Int64"))
    merged = scores.groupby(SCORE_KEYS, dropna=False, sort=False, as_index=False).agg(
        n=("n", "sum"), n_correct=("n_correct", "sum"), n_exact=("n_exact", "sum"), n_total=("n_total", "max"),
        n_totals=("n_total", "nunique"))
    if (merged["n_totals"] > 1).any():
        raise InputError("the files disagree on the size of a task's test split: were they run with the same "
                         "--n-val / --n-test and task files?")
    merged = merged.assign(accuracy=merged["n_correct"] / merged["n"], exact_match=merged["n_exact"] / merged["n"],
                           method_order=merged["method"].map({m: i for i, m in enumerate(METHODS)}))
    merged = merged.sort_values(["task", "method_order", "seed"], kind="stable")
    keep = SCORE_KEYS + ["accuracy", "exact_match", "n", "n_correct", "n_exact", "n_total"]
    return merged[keep].reset_index(drop=True)


def _sort_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    return predictions.sort_values(["task", "method", "seed", "query"], kind="stable").reset_index(drop=True)


def _finish_evaluate(scores: pd.DataFrame, predictions: pd.DataFrame | None, path: Path, partial: bool) -> int:
    """Write the scores (and the per-item predictions next to them); print the methods × tasks table."""
    written = [write_table(scores, path, "scores")]
    if predictions is not None:
        written.append(write_table(predictions, _sibling(path, ".predictions.csv"), "predictions"))
    note = " (one shard: `tv-lens merge` the shards)" if partial else ""
    print(f"accuracy of the first token, mean over seeds{note}")
    print(EvalResult(scores, predictions).table().round(3).to_string())
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


# ---------------------------------------------------------------------------------------------- phases
def cmd_phases(args) -> int:
    if len(args.seed) != 1:
        raise UsageError("phases takes one --seed")
    tasks = load_tasks(args.tasks, args.n_val, args.n_test, images=args.modality == "image")
    path = _out_path(args, "phases.html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {path}: the phases figure is an .html file (the curves go next to it as .csv)")
    table_path = path.with_suffix(".csv")
    check_outputs([path, table_path], inputs=args.tasks)
    model = _model_from(args)
    _check_modalities(model, args.modality)
    curves = {}
    for task in tqdm(tasks, desc="tasks", disable=args.no_progress, leave=False):
        if args.task_word:
            task = dataclasses.replace(task, task_word=args.task_word)
        queries = (task.val + task.test)[:args.n_prompts]
        prompts = P.icl(queries, n_shots=args.n_shots, modality=args.modality, pool=task.train or None,
                        seed=args.seed[0], chat=args.chat, template=args.template)
        curves[task.name] = lens.phase_curves(model, prompts, task=task, layers=args.layers,
                                              batch_size=args.batch_size, progress=not args.no_progress)
    figure = plot.phases(curves if len(curves) > 1 else next(iter(curves.values())),
                         title=f"{model.cfg.model_name}: {args.modality} ICL, logit lens at the last token")
    plot.save(figure, path)
    frame = pd.concat([c.frame.assign(task=name) for name, c in curves.items()], ignore_index=True)
    frame = frame.assign(provenance=provenance(args, model, tasks, layers=args.layers, modality=args.modality,
                                               n_prompts=args.n_prompts, task_word=args.task_word))
    table = write_table(frame[["task"] + [c for c in frame.columns if c != "task"]], table_path, "phases")
    for name, c in curves.items():
        peaks = ", ".join(f"{row.Index} at layer {row.peak_layer} ({row.peak_prob:.3f})"
                          for row in c.peaks.itertuples())
        print(f"{name}: peaks {peaks}")
    print(f"wrote {path} and {table}")
    return 0


# ---------------------------------------------------------------------------------------------- merge
def cmd_merge(args) -> int:
    frames = {file: read_table(file) for file in dict.fromkeys(args.files)}
    if len(frames) < len(args.files):
        raise InputError("a file is named twice")
    kinds = {file: _kind(frame, file) for file, frame in frames.items()}
    if len(set(kinds.values())) > 1:
        raise InputError(f"cannot merge different kinds of output: {kinds}")
    kind = next(iter(kinds.values()))
    record = _check_same_run(frames)
    if kind != "predictions":
        _check_shards(frames, args.allow_partial)
    frame = pd.concat(frames.values(), ignore_index=True).assign(shard=_shard_label(None))
    path = Path(args.out)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UsageError(f"--out {path}: a table is written as .csv or .json")
    siblings = [_sibling(Path(f), ".predictions.csv") for f in frames]
    with_predictions = kind == "scores" and all(p.is_file() for p in siblings)
    extra_out = {"sweep": [_sibling(path, ".html")], "scores": [_sibling(path, ".predictions.csv")]
                 if with_predictions else []}.get(kind, [])
    check_outputs([path, *extra_out], inputs=[*args.files, *(siblings if with_predictions else [])])
    if kind == "sweep":
        clash = frame[frame.duplicated(["task", "seed", "layer"], keep=False)]
        if not clash.empty:
            row = clash.iloc[0]
            raise InputError(f"task {row.task!r} seed {row.seed} layer {row.layer} is in two files: were they run "
                             "with the same options?")
        if not args.allow_partial:
            _check_sweep_complete(frame, record)
        return _finish_sweep(frame.sort_values(["task", "seed", "layer"], kind="stable").reset_index(drop=True),
                             path, partial=False)
    if kind == "predictions":
        merged = _sort_predictions(frame.drop(columns="shard").drop_duplicates())
        write_table(merged, path, "predictions")
        print(f"wrote {path} ({len(merged)} predictions)")
        return 0
    predictions = None
    if with_predictions:   # the per-item predictions that `evaluate` wrote next to each file
        tables = {str(p): read_table(p) for p in siblings}
        if _check_same_run(tables) != record:
            raise ProvenanceError("the .predictions.csv files next to the shards come from another run")
        predictions = _sort_predictions(pd.concat(tables.values(), ignore_index=True))
    scores = _merge_scores(frame).assign(shard=_shard_label(None), provenance=frame["provenance"].iloc[0])
    if not args.allow_partial:
        _check_scores_complete(scores, record)
    return _finish_evaluate(scores, predictions, path, partial=False)


def _check_sweep_complete(frame: pd.DataFrame, record: dict) -> None:
    """Every task of the run has every layer for each of its seeds: no row missing."""
    layers = set(record.get("layers") or [])
    for task in record.get("tasks") or {}:
        rows = frame[frame["task"] == task]
        if rows.empty:
            raise InputError(f"no rows for task {task!r}: it is in the run's provenance but in no file")
        for seed, group in rows.groupby("seed"):
            missing = sorted(layers - set(int(x) for x in group["layer"]))
            if missing:
                raise InputError(f"task {task!r} seed {seed}: layer(s) {missing} are missing from the files "
                                 "(rows deleted? --allow-partial merges anyway)")


def _check_scores_complete(scores: pd.DataFrame, record: dict) -> None:
    """Every (task, method) of the run is there and counts all of the task's test items."""
    for task in record.get("tasks") or {}:
        for method in record.get("methods") or []:
            if scores[(scores["task"] == task) & (scores["method"] == method)].empty:
                raise InputError(f"no rows for task {task!r} method {method!r} (rows deleted? --allow-partial)")
    short = scores[scores["n"] != scores["n_total"]]
    if not short.empty:
        row = short.iloc[0]
        raise InputError(f"task {row.task!r} method {row.method!r} seed {row.seed}: {row.n} of {row.n_total} test "
                         "items in the files (rows missing; --allow-partial merges anyway)")


# ---------------------------------------------------------------------------------------------- parser
def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id, local folder (save_pretrained), or offline: 'smollm2' (real LM), "
                                      "'reference' (the reference VLM)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: where it loads)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's)")
    parser.add_argument("--device-map", default=None, help="passed to transformers, e.g. 'auto' for big models")
    parser.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit (NF4); needs a GPU")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_options(parser: argparse.ArgumentParser, out_help: str, *, layers: bool = True, modality: bool = True,
                 query: bool = True, shard: bool = False, chat: bool = True) -> None:
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--n-shots", type=nonnegative_int, default=5, help="demos per ICL prompt (default 5)")
    parser.add_argument("--seed", type=parse_ints, default=[0], help="demo seed(s), e.g. 0 or 0,1,2 (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--n-val", type=positive_int, default=30, help="validation items per task (default 30)")
    parser.add_argument("--n-test", type=nonnegative_int, default=100, help="test items per task (default 100)")
    parser.add_argument("--case-insensitive", action="store_true", help="score ignoring case (paper: Fig. 8 only)")
    if layers:
        parser.add_argument("--layers", type=parse_layers, default=None, help="all (default), 12, 0,4,8 or 10-20")
    if modality:
        parser.add_argument("--modality", choices=("text", "image"), default="text",
                            help="modality of the ICL demos the vector comes from (default text)")
    if query:
        parser.add_argument("--query-modality", choices=("text", "image"), default="text",
                            help="modality of the queries (default text)")
    if shard:
        parser.add_argument("--shard", type=parse_shard, default=None,
                            help="i/n: run the i-th of n shares of the work (0-based); join with `tv-lens merge`")
    if chat:
        parser.add_argument("--chat", action="store_true", help="ICL prompts in the model's chat template")
        parser.add_argument("--template", choices=sorted(P.TEMPLATES), default="qa",
                            help="prompt layout: qa = Q:{x}\\nA:{y} (paper, default); qa_space = Q: {x}\\nA: {y} "
                                 "(suits BPE tokenizers); colon = {x}: {y}")
    else:
        parser.set_defaults(chat=False, template="qa")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tv-lens", description="Task vectors and hooks for VLMs.",
                     epilog="Docs: docs/cli.md. --debug (anywhere on the line) or TV_LENS_DEBUG=1 shows tracebacks.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the offline demo on the real SmolLM2-135M")
    demo.add_argument("--out", default="tv_lens_demo", help="folder for the report")
    demo.add_argument("--quick", action="store_true", help="fewer items, for a smoke run")
    demo.add_argument("--suite", choices=("both", *suites()), default="both",
                      help="the reference tasks (chosen for SmolLM2), the paper's six tasks, or both (default: "
                           "the reference suite first)")
    demo.add_argument("--template", choices=sorted(P.TEMPLATES), default="qa",
                      help="prompt layout (default qa, the paper's Q:{x}\\nA:{y}; see `tvl.prompts.TEMPLATES`)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--dtype", default=None)
    demo.set_defaults(func=cmd_demo)

    hooks = sub.add_parser("hooks", help="list a model's hook names")
    _model_options(hooks)
    hooks.set_defaults(func=cmd_hooks)

    extract = sub.add_parser("extract", help="extract a task vector into a .safetensors file")
    _model_options(extract)
    extract.add_argument("task", help="task name or .json/.csv file")
    _run_options(extract, "the .safetensors file (default TASK.KIND[.MODALITY].safetensors)", query=False)
    extract.add_argument("--kind", choices=("icl", "instruction", "ensemble"), default="icl",
                         help="mean over ICL prompts (default), the instruction, or their ensemble")
    extract.add_argument("--split", choices=("val", "train", "test"), default="val",
                         help="the items whose ICL prompts are averaged (default val)")
    extract.add_argument("--position", default="delimiter[-1]",
                         help="where to read (default delimiter[-1], the last demo's delimiter)")
    extract.set_defaults(func=cmd_extract)

    sweep = sub.add_parser("sweep", help="accuracy of a patched task vector at every layer, on val")
    _model_options(sweep)
    sweep.add_argument("tasks", nargs="+", help="task names, 'all', or .json/.csv files")
    _run_options(sweep, "sweep.csv (default) or .json; the figure goes next to it as .html", shard=True)
    sweep.add_argument("--vector", action="append", help="a vector file from `extract` (repeat: one per task); "
                                                         "default: extract from --modality ICL prompts per --seed")
    sweep.set_defaults(func=cmd_sweep)

    evaluation = sub.add_parser("evaluate", help="Table-3 methods on the test split")
    _model_options(evaluation)
    evaluation.add_argument("tasks", nargs="+", help="task names, 'all', or .json/.csv files")
    _run_options(evaluation, "results.csv (default) or .json; per-item predictions go next to it", layers=False,
                 modality=False, shard=True, chat=False)
    evaluation.add_argument("--methods", type=parse_methods, default=parse_methods("no_context,majority,xbase,xpatch"),
                            help=f"comma-separated, from {','.join(CLI_METHODS)} (default no_context,majority,"
                                 "xbase,xpatch)")
    evaluation.add_argument("--layer", action="append",
                            help="patch layer: an int or a sweep output file (its best layer), for every patch "
                                 "method or one (xpatch=16; repeat); default: sweep on val")
    evaluation.add_argument("--max-new-tokens", type=positive_int, default=6, help="tokens per answer (default 6)")
    evaluation.set_defaults(func=cmd_evaluate)

    phases = sub.add_parser("phases", help="logit-lens phase curves (Figure 3) as an HTML figure")
    _model_options(phases)
    phases.add_argument("tasks", nargs="+", help="task names, 'all', or .json/.csv files")
    _run_options(phases, "phases.html (default); the curves go next to it as .csv", query=False)
    phases.add_argument("--n-prompts", type=positive_int, default=100, help="ICL prompts per task (default 100)")
    phases.add_argument("--task-word", default=None, help="the 'task' token set, for tasks that name none")
    phases.set_defaults(func=cmd_phases)

    merge = sub.add_parser("merge", help="join the outputs of sharded sweep / evaluate runs")
    merge.add_argument("files", nargs="+", help="shard outputs (.csv or .json)")
    merge.add_argument("--out", required=True, help="merged file (.csv or .json)")
    merge.add_argument("--allow-partial", action="store_true", help="merge even when a shard is missing")
    merge.set_defaults(func=cmd_merge)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line (``tv-lens: error: ...``) and exit status 2."""

    def error(self, message: str):
        print(f"tv-lens: error: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def validate(args) -> None:
    """Checks that need no model and no data: run before anything loads (output paths are checked per command,
    also before the model loads)."""
    check_device(getattr(args, "device", None))
    if getattr(args, "dtype", None):
        try:
            _parse_dtype(args.dtype)
        except (TvLensError, ValueError, TypeError) as err:
            raise UsageError(f"--dtype {args.dtype}: {_one_line(err)}") from None
    if getattr(args, "load_in_4bit", False) and not torch.cuda.is_available():
        raise UsageError("--load-in-4bit needs a CUDA GPU (bitsandbytes); none is available here")
    if getattr(args, "model", None) and args.command != "demo":
        check_model_folder(args.model, args.trust_remote_code)
    if getattr(args, "out", None) and args.command not in ("merge", "demo"):
        fill_out_template(args.out, getattr(args, "shard", None))
    if args.command == "demo":
        check_writable(Path(args.out) / "report.md")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 1 an unexpected error, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("TV_LENS_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            validate(args)
            return args.func(args)
    except KeyboardInterrupt:
        print("tv-lens: interrupted", file=sys.stderr)
        return 130
    except Exception as err:   # noqa: BLE001 - the one place that turns any error into one line
        if debug:
            traceback.print_exc()
        if isinstance(err, (TvLensError, OSError, ImportError)):
            print(f"tv-lens: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_ERROR
        print(f"tv-lens: error: unexpected {type(err).__name__}: {_one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
