"""What every ``tv-lens`` command shares: argument types, the option groups, ``--out`` paths, the model and the
vector recipe from the parsed arguments."""

from __future__ import annotations

import argparse
import string
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

from .. import prompts as P
from ..errors import TaskError, UsageError
from ..methods import CLI_METHODS, CONTEXT_METHODS, METHODS
from ..model import HookedMultimodalModel
from ..protocol import demo_pool
from .. import runs
from ..runs import TABLE_SUFFIXES, Recipe, one_line, parse_shard_label
from ..runs import provenance as run_provenance

OUT_FIELDS = ("i", "n")   # the fields an --out template may use


# ---------------------------------------------------------------------------------------------- argument types
def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``."""
    try:
        return parse_shard_label(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    """``"no_context,xpatch"`` → the Table-3 methods the command line can run (head methods need Python)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    python_only = [m for m in methods if m in METHODS and m not in CLI_METHODS]
    if python_only:
        raise argparse.ArgumentTypeError(f"method(s) {', '.join(python_only)} need a head selection: run them "
                                         "from Python (tvl.heads, tvl.evaluate)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(CLI_METHODS)}")
    return methods


# ---------------------------------------------------------------------------------------------- option groups
def model_options(parser: argparse.ArgumentParser) -> None:
    """MODEL and how to load it (every command that runs a model)."""
    parser.add_argument("model", help="hub id, local folder (save_pretrained), or offline: 'smollm2' (real LM), "
                                      "'reference' (the reference VLM)")
    group = parser.add_argument_group("model")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: where it loads)")
    group.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's)")
    group.add_argument("--device-map", default=None, help="passed to transformers, e.g. 'auto' for big models")
    group.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit (NF4); needs a GPU")
    group.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_options(parser: argparse.ArgumentParser, out_help: str, *, layers: bool = True, modality: bool = True,
                query: bool = True, shard: bool = False, chat: bool = True) -> None:
    """``--out``, split sizes, seeds, batching, prompts (and the optional layers / modalities / shard options)."""
    parser.add_argument("--out", default=None, help=out_help)
    group = parser.add_argument_group("run")
    group.add_argument("--n-shots", type=nonnegative_int, default=5, help="demos per ICL prompt (default 5)")
    group.add_argument("--seed", type=parse_ints, default=[0], help="demo seed(s), e.g. 0 or 0,1,2 (default 0)")
    group.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass (default 8)")
    group.add_argument("--n-val", type=positive_int, default=30, help="validation items per task (default 30)")
    group.add_argument("--n-test", type=nonnegative_int, default=100, help="test items per task (default 100)")
    group.add_argument("--case-insensitive", action="store_true", help="score ignoring case (paper: Fig. 8 only)")
    if layers:
        group.add_argument("--layers", type=parse_layers, default=None, help="all (default), 12, 0,4,8 or 10-20")
    if modality:
        group.add_argument("--modality", choices=("text", "image"), default="text",
                           help="modality of the ICL demos the vector comes from (default text)")
    if query:
        group.add_argument("--query-modality", choices=("text", "image"), default="text",
                           help="modality of the queries (default text)")
    if shard:
        group.add_argument("--shard", type=parse_shard, default=None,
                           help="i/n: run the i-th of n shares of the work (0-based); join with `tv-lens merge`")
    if chat:
        group.add_argument("--chat", action="store_true", help="ICL prompts in the model's chat template")
        template_option(group)
    else:
        parser.set_defaults(chat=False, template="qa")


def template_option(parser: Any, help_text: str | None = None) -> None:
    """``--template``: one of :data:`tv_lens.prompts.TEMPLATES`."""
    parser.add_argument("--template", choices=sorted(P.TEMPLATES), default="qa",
                        help=help_text or "prompt layout: qa = Q:{x}\\nA:{y} (paper, default); qa_space = Q: {x}"
                                          "\\nA: {y} (suits BPE tokenizers); colon = {x}: {y}")


# ---------------------------------------------------------------------------------------------- --out
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
        raise UsageError(f"--out {text!r}: {one_line(err)}") from None


def out_path(args, default: str) -> Path:
    """``--out`` (``{i}`` / ``{n}`` filled in with the shard), or ``default`` (``.shard{i}of{n}`` when sharded)."""
    shard = getattr(args, "shard", None)
    if args.out:
        return Path(fill_out_template(args.out, shard))
    path = Path(default)
    return path.with_name(f"{path.stem}.shard{shard[0]}of{shard[1]}{path.suffix}") if shard else path


def table_path(args, default: str) -> Path:
    """:func:`out_path` for a table: ``.csv`` or ``.json`` (raises :class:`UsageError` otherwise)."""
    path = out_path(args, default)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UsageError(f"--out {path}: a table is written as .csv or .json, not {path.suffix or 'no suffix'!r} "
                         f"(the figure goes next to it as .html)")
    return path


# ---------------------------------------------------------------------------------------------- from the arguments
def model_from(args) -> HookedMultimodalModel:
    """Load ``args.model`` with the model options (:func:`tv_lens.runs.load_model`, looked up when called so that a
    test can stand in for it)."""
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return runs.load_model(args.model, args.dtype, args.device, args.device_map, args.load_in_4bit,
                      args.trust_remote_code)


def recipe_from(args) -> Recipe:
    """The run's vector :class:`~tv_lens.runs.Recipe` from ``--n-shots``, ``--template``, ``--chat``, batching."""
    return Recipe(n_shots=args.n_shots, template=args.template, chat=bool(args.chat), batch_size=args.batch_size,
                  progress=not args.no_progress)


def check_demo_pools(tasks: Sequence[Any], n_shots: int, modalities: Iterable[str | None]) -> None:
    """Before the model loads: each task's train split can give ``n_shots`` demos in each modality, none of them an
    item of the split being averaged or scored (:func:`tv_lens.protocol.demo_pool`, the check the vectors run).

    Raises:
        TaskError: naming the command-line fix (smaller ``--n-val`` / ``--n-test``, or fewer ``--n-shots``).
    """
    for task in tasks:
        for modality in sorted({m for m in modalities if m}):
            try:
                demo_pool(task.val, task.train, modality, n_shots, task.name)
            except TaskError as err:
                raise TaskError(f"{one_line(err)} On the command line: lower --n-val / --n-test (train keeps the "
                                "other items) or --n-shots.") from None


def provenance(args, model, tasks, **more: Any) -> str:
    """:func:`tv_lens.runs.provenance` of this command line's run."""
    return run_provenance(args.command, model, tasks, n_val=args.n_val, n_test=args.n_test, n_shots=args.n_shots,
                          seeds=args.seed, template=args.template, chat=args.chat,
                          case_sensitive=not args.case_insensitive, **more)


__all__ = ["CLI_METHODS", "CONTEXT_METHODS", "OUT_FIELDS", "check_demo_pools", "fill_out_template", "model_from", "model_options", "nonnegative_int",
           "out_path", "parse_ints", "parse_layers", "parse_methods", "parse_shard", "positive_int", "provenance",
           "recipe_from", "run_options", "table_path", "template_option"]
