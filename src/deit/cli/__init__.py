"""The `deit` command. Each subcommand lives in its own module with `register(subparsers)`, which adds
its parser and sets `func` to a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module name under deit.cli -> registered in this order in --help
SUBCOMMANDS = ["models", "train", "eval", "pipeline", "reproduce", "predict", "analyze", "convert", "export", "bench",
               "shards"]


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
        _error_line(args.command, e)
        return 2
    except (OSError, FloatingPointError) as e:
        # A full disk, an unwritable directory, a non-finite loss: one line saying what happened and what was kept.
        _error_line(args.command, e)
        return 1


def _error_line(command: str, error: Exception) -> None:
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
    print(f"deit {command}: error{f' (rank {rank})' if rank else ''}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
