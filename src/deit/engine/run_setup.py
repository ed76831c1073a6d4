"""What a run derives from its config before any data or model exists: each process's share of the batch, the
model's overrides from the data, and the refusals that need neither (checked before anything is loaded)."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from .tracking import check_trackers


def model_overrides(config: TrainConfig, data) -> dict:
    from ..models import model_family

    overrides = dict(num_classes=data.num_classes, in_chans=data.in_chans)
    family = model_family(config.model)
    if family == "vit":
        overrides.update(img_size=data.img_size, combine=config.combine)
    if family in ("vit", "timm") and config.drop_path is not None:
        overrides["drop_path_rate"] = config.drop_path
    return overrides


def per_rank_batch(config: TrainConfig, world_size: int) -> int:
    """--batch-size is the global batch: each of the world_size processes takes an equal share."""
    if config.batch_size % world_size:
        raise ValueError(f"--batch-size {config.batch_size} is the global batch and must divide evenly among "
                         f"{world_size} processes; use a multiple of {world_size}")
    share = config.batch_size // world_size
    if config.mixing and share % 2:
        raise ValueError(f"Mixup/CutMix need an even batch per process; {config.batch_size} over {world_size} "
                         f"processes gives {share}: use a multiple of {2 * world_size}")
    if share % config.accum_steps:
        raise ValueError(f"--accum-steps {config.accum_steps} must divide each process's {share} images of the "
                         f"batch into equal micro-batches: use a --batch-size that is a multiple of "
                         f"{world_size * config.accum_steps}")
    return share


def micro_batch(config: TrainConfig, world_size: int) -> int:
    """What one forward/backward of a process holds: its share of the batch over --accum-steps."""
    return per_rank_batch(config, world_size) // config.accum_steps


def check_config(config: TrainConfig, world_size: int = 1) -> None:
    """The refusals that need no data or model: cheap, before anything is loaded."""
    from ..hub import is_hub_source, resolve
    from ..models import model_family

    model_family(config.model)
    per_rank_batch(config, world_size)
    check_trackers(config.report_to)
    if config.teacher is not None and config.distillation != "none" and not Path(config.teacher).is_dir() \
            and config.teacher_weights is None and not is_hub_source(config.teacher):
        raise ValueError(f"teacher {config.teacher!r} is not a run directory; give an architecture name "
                         "with --teacher-weights FILE")
    teacher_weights = config.teacher_weights or config.teacher
    if config.distillation != "none" and is_hub_source(teacher_weights):
        resolve(teacher_weights)  # a teacher named on the hub: in the cache (or fetched), or refused, before any data
