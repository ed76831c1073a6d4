from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list registered model names and parameter counts")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'deit_*distilled*'")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.models import count_parameters, create_model, list_models

    for name in list_models(args.pattern):
        print(f"{name:40s} {count_parameters(create_model(name)):>12,d}")
    return 0
