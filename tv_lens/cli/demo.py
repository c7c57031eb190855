"""``tv-lens demo``: the offline demo on the reference VLM (:mod:`tv_lens.demo`), the reference suite first."""

from __future__ import annotations

from pathlib import Path

from ..demo import run_demo, suites
from ..io import check_writable
from .options import template_option


def add_parser(sub) -> None:
    parser = sub.add_parser("demo", help="the offline demo on the reference VLM (real SmolLM2-135M)")
    parser.add_argument("--out", default="tv_lens_demo", help="folder for the report")
    parser.add_argument("--quick", action="store_true", help="fewer items, for a smoke run")
    parser.add_argument("--suite", choices=("both", *suites()), default="both",
                        help="the reference tasks (chosen for SmolLM2), the paper's six tasks, or both (default: "
                             "the reference suite first)")
    template_option(parser, "prompt layout (default qa, the paper's Q:{x}\\nA:{y}; see `tvl.prompts.TEMPLATES`)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.set_defaults(func=run, check=check)


def check(args) -> None:
    """Before the model loads: the report's folder is writable."""
    check_writable(Path(args.out) / "report.md")


def run(args) -> int:
    return run_demo(args)
