"""Fault injection for tests of crash safety and distributed failure: the one hook, off unless asked for.

DEIT_FAULT="point[:key=value...][:action]" makes `fault_point(point, **where)` fail where every key=value
matches (e.g. "step:rank=1:step=3:raise", "write:file=state.pt:kill"). hit=N fails only the N-th matching call
of this process (e.g. the second save of state.pt: "write:file=state.pt:hit=2:kill"). Actions: raise
(RuntimeError, the default), kill (SIGKILL of this process: nothing runs after it, as after a power cut), enospc
(OSError "No space left on device", as from a full disk) and nan (fault_point returns True and the caller
poisons the value it names: a numerical fault)."""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ACTIONS = ("raise", "kill", "enospc", "nan")
_hits: Counter = Counter()  # matching calls so far, per spec


def fault_point(point: str, **where) -> bool:
    """False unless DEIT_FAULT names this point here; then fail as its action says (nan: return True)."""
    spec = os.environ.get("DEIT_FAULT")
    if not spec:
        return False
    name, *parts = spec.split(":")
    action = parts.pop() if parts and parts[-1] in ACTIONS else "raise"
    wanted = dict(part.split("=", 1) for part in parts)
    hit = int(wanted.pop("hit", 1))
    if name != point or any(str(where.get(k)) != v for k, v in wanted.items()):
        return False
    _hits[spec] += 1
    if _hits[spec] != hit:
        return False
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "nan":
        return True
    place = f"{point} ({', '.join(f'{k}={v}' for k, v in where.items())})"
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {place})")
    raise RuntimeError(f"injected fault at {place}")


def reset() -> None:
    """Forget the hit counts (tests that run several faulty runs in one process)."""
    _hits.clear()
