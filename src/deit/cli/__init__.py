"""The `deit` command. Each subcommand lives in its own module with `register(subparsers)`, which adds
its parser and sets `func` to a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module name under deit.cli -> registered in this order in --help
SUBCOMMANDS = ["models", "train", "eval", "pipeline", "reproduce", "predict", "analyze", "convert", "export", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deit", description="Data-efficient image transformers (DeiT).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"deit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        # Bad input or a missing optional package: one clear line, no traceback.
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
        print(f"deit {args.command}: error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
