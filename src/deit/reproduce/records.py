"""What a study keeps of each finished run in its results.json ("records"), so a study spans sessions and machines
whose runs/ directory is gone: the run's metrics, its command, the teacher it had, and for seed-0 runs its
predictions on the test set (for Table 4). A record is reused only while its row's settings are unchanged."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig


def fingerprint(options: dict[str, Any], row_teacher: str | None, teacher_checkpoint: str | None, preset: str,
                seed: int) -> str:
    """The settings that decide a run's outcome, as canonical JSON (execution-only settings left out)."""
    skip = set(TrainConfig.execution_only())
    settings = {k: v for k, v in options.items() if k not in skip}
    return json.dumps({"preset": preset, "seed": seed, "teacher": row_teacher, "teacher_checkpoint": teacher_checkpoint,
                       "options": settings}, sort_keys=True, default=str)


def settings_changes(before: str, now: str) -> dict[str, tuple[Any, Any]]:
    """The settings two fingerprints disagree on: name -> (before, now)."""
    def flat(text: str) -> dict[str, Any]:
        settings = json.loads(text)
        return {**{k: v for k, v in settings.items() if k != "options"}, **settings["options"]}

    a, b = flat(before), flat(now)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def settings_difference(before: str, now: str) -> str:
    """The settings two fingerprints disagree on, as "name: before -> now" (for a user deciding whether to rerun)."""
    return ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in settings_changes(before, now).items())


def earlier_teacher_top1(record: dict[str, Any], teacher_top1: float | None) -> float | None:
    """The test top-1 of the teacher a student record was distilled from, when it is not the teacher's current
    record's (the teacher was trained again since, e.g. its weights were gone); else None."""
    then = (record.get("teacher") or {}).get("top1")
    if then is None or teacher_top1 is None or abs(then - teacher_top1) <= 1e-6:
        return None
    return then


def encode_classes(classes: torch.Tensor) -> str:
    """One class index per image (predictions or labels), compressed for JSON."""
    return base64.b64encode(zlib.compress(classes.to(torch.int16).numpy().tobytes(), 9)).decode()


def decode_classes(text: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.int16).copy())


def encode_predictions(pred: dict[str, torch.Tensor]) -> dict[str, str]:
    """The predicted class of every image per head ("logits", "cls", "dist"), compressed for JSON."""
    return {head: encode_classes(value.argmax(1)) for head, value in pred.items() if head != "targets"}


def decode_predictions(encoded: dict[str, str]) -> dict[str, torch.Tensor]:
    return {head: decode_classes(text) for head, text in encoded.items()}


def previous_records(output: Path) -> dict[str, dict[str, Any]]:
    """The records of an earlier call's results.json in `output` ({} if none)."""
    path = Path(output) / "results.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("records", {})


def records_of(source: str | Path) -> dict[str, dict[str, Any]]:
    """The records of another call's results.json (a file, or the directory holding it), e.g. of the same study
    run in part on another machine; one line if it is not one."""
    path = Path(source)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"--merge {source}: no results.json there")
    try:
        records = json.loads(path.read_text()).get("records")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        records = None
    if not isinstance(records, dict) or not all(isinstance(r, dict) and "fingerprint" in r and "metrics" in r
                                                 for r in records.values()):
        raise ValueError(f"--merge {source}: {path} is not the results.json of a deit reproduce study")
    return records
