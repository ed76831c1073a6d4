"""Fault injection for tests of crash safety and distributed failure: the one hook, off unless asked for.

DEIT_FAULT="point[:key=value...][:action]" makes `fault_point(point, **where)` fail where every key=value
matches (e.g. "step:rank=1:step=3:raise", "write:file=state.pt:kill"). hit=N fails only the N-th matching call
of this process (e.g. the second save of state.pt: "write:file=state.pt:hit=2:kill"); restart=N matches only in
torchrun's N-th restart of the workers (TORCHELASTIC_RESTART_COUNT, 0 outside torchrun). Several faults:
separated by commas. Actions: raise (RuntimeError, the default), kill (SIGKILL of this process: nothing runs
after it, as after a power cut), term (SIGTERM to this process, as torchrun or a scheduler sends it),
term-group (SIGTERM to this process's group, as a scheduler or a terminal signals every process of a job, the
DataLoader workers too: start the process in its own session), enospc (OSError "No space left on device", as
from a full disk) and nan (fault_point returns True and the caller poisons the value it names: a numerical
fault)."""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ACTIONS = ("raise", "kill", "term", "term-group", "enospc", "nan")
_hits: Counter = Counter()  # matching calls so far, per spec


def fault_point(point: str, **where) -> bool:
    """False unless DEIT_FAULT names this point here; then fail as its action says (nan: return True)."""
    faults = os.environ.get("DEIT_FAULT")
    if not faults:
        return False
    where = {"restart": os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), **where}
    return any(_fail(spec, point, where) for spec in faults.split(","))


def _fail(spec: str, point: str, where: dict) -> bool:
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
    if action in ("term", "term-group"):  # delivered like an outside signal; the run goes on to its handler
        (os.kill(os.getpid(), signal.SIGTERM) if action == "term" else os.killpg(os.getpgrp(), signal.SIGTERM))
        return False
    if action == "nan":
        return True
    place = f"{point} ({', '.join(f'{k}={v}' for k, v in where.items() if k != 'restart')})"
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {place})")
    raise RuntimeError(f"injected fault at {place}")


def reset() -> None:
    """Forget the hit counts (tests that run several faulty runs in one process)."""
    _hits.clear()
