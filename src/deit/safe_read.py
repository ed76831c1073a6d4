"""Reading the files a user hands us without running anything in them: torch files with `weights_only=True`
(a pickled global that runs code refused, any other object replaced by an inert stand-in), safetensors, JSON.
Every failure is a ValueError of one line naming the file."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor


class StandIn:
    """Takes the place of any pickled Python object in a torch file: nothing is imported, nothing is run."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


# Modules whose functions run commands or code: a pickle that names one is an attack, not a checkpoint, and is
# refused outright (bare names are builtins: eval, exec, getattr, __import__). Other unknown globals (an
# argparse.Namespace, a PosixPath) become inert stand-ins; either way nothing a file names is ever called.
CODE_MODULES = frozenset({"os", "posix", "nt", "sys", "subprocess", "commands", "builtins", "__builtin__", "shutil",
                          "importlib", "runpy", "pty", "socket", "ctypes", "pickle", "_pickle", "marshal", "code",
                          "codeop", "webbrowser", "multiprocessing", "signal", "io", "_io", "tempfile", "pathlib.Path"})


def pickled_global(error: Exception) -> str | None:
    """The global a weights-only load refused, as the file names it."""
    found = re.search(r"GLOBAL (\S+?)(?: was not an allowed global| whose module)", str(error))
    return found.group(1) if found else None


def refuse_code(file: Path, name: str) -> None:
    """ValueError when the pickled global `name` is one that runs code."""
    module = name.split(".")[0]
    if "." not in name or module in CODE_MODULES or name.rsplit(".", 1)[0] in CODE_MODULES:
        raise ValueError(f"{file} holds pickled code (it calls {name}); refused, nothing in it was run. "
                         "Load only checkpoints from sources you trust")


def torch_load_weights_only(file: Path) -> Any:
    stand_ins: list[str] = []
    while True:
        try:
            with torch.serialization.safe_globals([(StandIn, name) for name in stand_ins]):
                return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = pickled_global(e)
            if found is not None:
                refuse_code(file, found)
            if found is None or found in stand_ins:
                raise ValueError(f"{file} is not a readable checkpoint: {first_line(e)}") from None
            stand_ins.append(found)
        except Exception as e:  # truncated zip, garbage after a pickle header, ...
            raise ValueError(f"{file} is not a readable checkpoint: {first_line(e)}") from None


def read_safetensors(file: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{file} is not a readable checkpoint: {first_line(e)}") from None


def is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header.
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not readable JSON: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return data
