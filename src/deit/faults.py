"""Fault injection for tests of crash safety and distributed failure: the one hook, off unless asked for.

DEIT_FAULT="point[:key=value...][:action]" makes `fault_point(point, **where)` fail where every key=value
matches (e.g. "step:rank=1:step=3:raise", "write:file=state.pt:kill"). Actions: raise (RuntimeError, the
default) or kill (SIGKILL of this process: nothing runs after it, as after a power cut)."""

from __future__ import annotations

import os
import signal

ACTIONS = ("raise", "kill")


def fault_point(point: str, **where) -> None:
    spec = os.environ.get("DEIT_FAULT")
    if not spec:
        return
    name, *parts = spec.split(":")
    action = parts.pop() if parts and parts[-1] in ACTIONS else "raise"
    wanted = dict(part.split("=", 1) for part in parts)
    if name != point or any(str(where.get(k)) != v for k, v in wanted.items()):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault at {point} ({', '.join(f'{k}={v}' for k, v in where.items())})")
