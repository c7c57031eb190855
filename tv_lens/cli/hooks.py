"""``tv-lens hooks MODEL``: the model's summary line, then every hook name, one a line."""

from __future__ import annotations

from .options import model_from, model_options


def add_parser(sub) -> None:
    parser = sub.add_parser("hooks", help="list a model's hook names")
    model_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    model = model_from(args)
    print(model)
    for name in model.hook_names():
        print(name)
    return 0
