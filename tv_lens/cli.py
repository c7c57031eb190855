"""The ``tv-lens`` command line."""

from __future__ import annotations

import argparse
import sys

from .errors import TvLensError


def _load(name: str, dtype: str | None, device: str | None):
    from .model import HookedMultimodalModel

    if name in ("smollm2", "SmolLM2-135M-Instruct"):
        from .models import load_smollm2

        model, tokenizer = load_smollm2()
        return HookedMultimodalModel.from_hf(model.to(device) if device else model, tokenizer=tokenizer)
    return HookedMultimodalModel.from_pretrained(name, dtype=dtype, device=device)


def cmd_hooks(args) -> int:
    model = _load(args.model, args.dtype, args.device)
    print(model)
    for name in model.hook_names():
        print(name)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tv-lens", description="Task vectors and hooks for VLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the offline demo on the real SmolLM2-135M")
    demo.add_argument("--out", default="tv_lens_demo", help="folder for the report")
    demo.add_argument("--quick", action="store_true", help="fewer items, for a smoke run")
    demo.set_defaults(func=cmd_demo)

    hooks = sub.add_parser("hooks", help="list a model's hook names")
    hooks.add_argument("model", help="hub id, local folder, or 'smollm2'")
    hooks.set_defaults(func=cmd_hooks)

    for p in (demo, hooks):
        p.add_argument("--device", default=None)
        p.add_argument("--dtype", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TvLensError as err:
        print(f"tv-lens: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ModuleNotFoundError) as err:
        print(f"tv-lens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
