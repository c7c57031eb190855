"""``tv-lens extract MODEL TASK --out vec.safetensors``: one task vector (ICL, instruction or ensemble) in a file
that :meth:`tv_lens.TaskVector.load` reads, with the run's provenance in its metadata."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..errors import UsageError
from ..runs import check_modalities, check_outputs, load_tasks, task_instruction_vector
from ..vectors import SUFFIX, ensemble, vector_path
from .options import (check_demo_pools, fill_out_template, model_from, model_options, provenance, recipe_from,
                      run_options)

#: Suffixes of other file formats: ``--out v.csv`` is refused rather than written as ``v.csv.safetensors``.
OTHER_FORMATS = (".csv", ".json", ".jsonl", ".tsv", ".txt", ".html", ".htm", ".md", ".pt", ".pth", ".bin", ".ckpt",
                 ".npy", ".npz", ".pkl", ".pickle", ".gguf", ".h5", ".onnx", ".png", ".jpg", ".jpeg", ".yaml",
                 ".yml", ".parquet")


def add_parser(sub) -> None:
    parser = sub.add_parser("extract", help="extract a task vector into a .safetensors file")
    model_options(parser)
    parser.add_argument("task", help="task name or .json/.csv file")
    run_options(parser, "the .safetensors file (default TASK.KIND[.MODALITY].safetensors)", query=False)
    parser.add_argument("--kind", choices=("icl", "instruction", "ensemble"), default="icl",
                        help="mean over ICL prompts (default), the instruction, or their ensemble")
    parser.add_argument("--split", choices=("val", "train", "test"), default="val",
                        help="the items whose ICL prompts are averaged (default val)")
    parser.add_argument("--position", default="delimiter[-1]",
                        help="where to read (default delimiter[-1], the last demo's delimiter)")
    parser.set_defaults(func=run, check=check)


def check(args) -> None:
    """Before anything loads: one seed, and an ``--out`` that names a vector file (or a folder to write into).

    Raises:
        UsageError: several seeds; ``--out`` ending in another format's suffix (``v.csv``): the vector would land
            in ``v.csv.safetensors``, a name the user did not ask for.
    """
    if len(args.seed) != 1:
        raise UsageError("extract takes one --seed")
    if args.out:
        text = fill_out_template(args.out, None)
        suffix = Path(text).suffix.lower()
        if suffix in OTHER_FORMATS and not Path(text).is_dir() and not text.endswith(("/", os.sep)):
            stem = text[: -len(suffix)]
            raise UsageError(f"--out {text}: a task vector is a {SUFFIX} file, not {suffix}; write --out "
                             f"{stem}{SUFFIX} (or --out {text}{SUFFIX} to keep the name)")


def vector_out(args, default: str) -> Path:
    """``--out`` for a vector: a file name (``.safetensors`` appended if missing) or a folder to write INTO."""
    if not args.out:
        return vector_path(default)
    text = fill_out_template(args.out, None)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        path = path / default
    return vector_path(path)


def run(args) -> int:
    check(args)
    images = args.modality == "image" and args.kind != "instruction"
    (task,) = load_tasks([args.task], args.n_val, args.n_test, images=images)
    if args.kind != "instruction" and args.split != "train":
        check_demo_pools([task], args.n_shots, [args.modality])
    default = f"{task.name}.{args.kind}" + (f".{args.modality}" if args.kind != "instruction" else "")
    (out,) = check_outputs([vector_out(args, default + SUFFIX)], inputs=[args.task])
    model = model_from(args)
    check_modalities(model, args.modality)
    layers = "all" if args.layers is None else args.layers
    if args.kind == "instruction":
        vector = task_instruction_vector(model, task, layers)
    else:
        vector = recipe_from(args).vector(model, task, args.modality, args.seed[0], layers, split=args.split,
                                          position=args.position)
        if args.kind == "ensemble":
            vector = ensemble([vector, task_instruction_vector(model, task, layers)])
    record = json.loads(provenance(args, model, [task], split=args.split, position=args.position,
                                   kind=args.kind, modality=args.modality))
    vector = dataclasses.replace(vector, extra={**vector.extra, "provenance": record})
    path = vector.save(out)
    print(vector)
    print(f"wrote {path}")
    return 0
