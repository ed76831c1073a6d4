"""The one way this project writes a file: atomically (a reader never sees half a file, a crash never leaves one)."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from .faults import fault_point


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) into a unique temporary name beside `path`, flush it to disk, then rename it over `path`.

    The temporary name is unique per call (not per path), so two writers never share one; fsync before the
    rename makes a power loss leave either the old file or the new one, never an empty one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fault_point("write", file=path.name)  # the new file complete but not yet in place (crash tests)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        # A full disk or an unwritable directory: say which file, and that the previous one still stands.
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise type(e)(e.errno, f"could not write {path}: {e.strerror or e}; {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_writable(folder: str | Path, flag: str = "--output") -> None:
    """ValueError unless files can be created in `folder`, or in the first of its parents that exists (nothing is
    created): tried with a real anonymous file, since permission bits say nothing for root, a read-only mount or
    a file standing where a directory should be."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot create {folder}: {existing} is a file, not a directory; choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ValueError(f"cannot write in {existing} ({e.strerror}); choose another {flag}") from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def read_machine_cache(path: Path) -> dict:
    """A per-machine JSON cache of measurements (~/.cache/deit/*.json): {} when absent or unreadable (a cache
    that cannot be read is measured again, never an error)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def update_machine_cache(path: Path, key: str, value) -> None:
    """One entry of such a cache set, best effort: a cache that cannot be written costs a measurement next time."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**read_machine_cache(path), key: value})
    except OSError:
        pass
