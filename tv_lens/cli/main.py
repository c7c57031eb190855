"""The ``tv-lens`` entry point: the root parser registers the commands (one module each, ``add_parser`` + ``run``),
checks what needs no model, runs the command, and turns any error into ONE line and an exit status."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

import torch

from ..errors import TvLensError, UsageError
from ..model import _parse_dtype
from ..runs import check_device, check_model_folder, one_line
from . import demo, evaluate, extract, hooks, merge, phases, sweep
from .options import fill_out_template

#: The commands, in the order ``tv-lens --help`` lists them.
COMMANDS = (demo, hooks, extract, sweep, evaluate, phases, merge)
EXIT_ERROR = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line (``tv-lens: error: ...``) and exit status 2."""

    def error(self, message: str):
        print(f"tv-lens: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The ``tv-lens`` parser: each command module adds its own sub-parser."""
    parser = _Parser(prog="tv-lens", description="Task vectors and hooks for VLMs.",
                     epilog="Docs: docs/cli.md. --debug (anywhere on the line) or TV_LENS_DEBUG=1 shows tracebacks.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def validate(args) -> None:
    """Checks that need no model and no data: run before anything loads (output paths are checked per command,
    also before the model loads)."""
    check_device(getattr(args, "device", None))
    if getattr(args, "dtype", None):
        try:
            _parse_dtype(args.dtype)
        except (TvLensError, ValueError, TypeError) as err:
            raise UsageError(f"--dtype {args.dtype}: {one_line(err)}") from None
    if getattr(args, "load_in_4bit", False) and not torch.cuda.is_available():
        raise UsageError("--load-in-4bit needs a CUDA GPU (bitsandbytes); none is available here")
    if getattr(args, "model", None) and args.command != "demo":
        check_model_folder(args.model, args.trust_remote_code)
    if getattr(args, "out", None) and args.command not in ("merge", "demo"):
        fill_out_template(args.out, getattr(args, "shard", None))
    if getattr(args, "check", None):
        args.check(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tv-lens: warning: {one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 1 an unexpected error, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("TV_LENS_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            validate(args)
            return args.func(args)
    except KeyboardInterrupt:
        print("tv-lens: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:   # noqa: BLE001 - the one place that turns any error into one line
        if debug:
            traceback.print_exc()
        if isinstance(err, (TvLensError, OSError, ImportError)):
            print(f"tv-lens: error: {one_line(err)}", file=sys.stderr)
            return EXIT_ERROR
        print(f"tv-lens: error: unexpected {type(err).__name__}: {one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_INTERNAL", "build_parser", "main", "validate"]
