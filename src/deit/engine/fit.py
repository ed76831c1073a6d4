"""A run from start to end: `fit(config)` is what `deit train` calls. Resolve the run directory (new or
resumed), refuse bad settings before any work, set the process up (one process or one of a torchrun job), train
with a Trainer, and leave the process group; `fit_or_reuse` is fit for pipelines (a finished run is reused)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainConfig
from ..fileio import check_writable
from .run_dir import STATE, default_output, load_state, read_run_config
from .runtime import Runtime, launched_ranks, setup_runtime
from .tracking import open_trackers
from .trainer import RunResult, Trainer, check_config


def _resolve_run(config: TrainConfig | None, resume) -> tuple[TrainConfig, Path]:
    if resume is None:
        run_dir = Path(config.output) if config.output else default_output(config)
        if (run_dir / STATE).exists():
            raise ValueError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                             "or choose another --output")
        return config, run_dir
    run_dir = Path(resume)
    saved = read_run_config(run_dir)
    if saved is None or not (run_dir / STATE).exists():
        raise FileNotFoundError(f"{run_dir} is not a resumable run (needs config.json and state.pt)")
    try:
        saved_config = TrainConfig.from_dict(saved["train"])
    except ValueError as e:  # written by another version of deit (options it has and this one lacks)
        raise ValueError(f"{run_dir} cannot be resumed by this version of deit: {e}") from None
    if config is None:
        return saved_config, run_dir
    # Execution-only settings may change on resume; everything that shapes the result may not.
    return saved_config.replace(**{k: getattr(config, k) for k in TrainConfig.execution_only()}), run_dir


def fit(config: TrainConfig | None, resume: str | Path | None = None,
        stop_after_steps: int | None = None) -> RunResult:
    """Train `config` to the end, or resume the run in `resume` (with `config`, only its execution-only
    settings apply: threads, progress, ...). `stop_after_steps` stops early, leaving a resumable run (used
    to test exact resume and to split long runs)."""
    config, run_dir = _resolve_run(config, resume)
    # Everything that can be refused is checked before any training: cheap checks first.
    check_config(config, world_size=launched_ranks()[0])
    check_writable(run_dir)
    rt = setup_runtime(config.device, config.precision, config.threads, config.deterministic)
    try:
        result = _train(config, run_dir, rt, resume, stop_after_steps)
    except BaseException:
        rt.close()
        raise
    # The Trainer (and DDP's hold on the process group) is gone: every process leaves together.
    rt.close(wait_for_all=True)
    return result


def _train(config: TrainConfig, run_dir: Path, rt: Runtime, resume, stop_after_steps: int | None) -> RunResult:
    recorded = (read_run_config(run_dir) or {}).get("precision") if resume is not None else None
    trainer = Trainer(config, run_dir, rt, recorded_precision=recorded)
    if resume is not None:
        trainer.load_state_dict(load_state(run_dir, rt.device))
        trainer.restore_schedule((read_run_config(run_dir) or {}).get("schedule"))
        trainer.writer.keep_log_until(trainer.epoch)
    else:
        trainer.writer.start(trainer.run_config())
        trainer.save(0, 0)  # resumable from the start: a crash in the first epoch loses nothing
    resumed_at = trainer.step if resume is not None else None
    with open_trackers(config.report_to, trainer.writer, resumed_at) as trainer.reporter:
        result = trainer.fit(stop_after_steps)
        if result.metrics:  # the run ended (not stopped early): the curves and pictures
            trainer.reporter.finish(run_dir, trainer.step, rt.device)
    return result


def fit_or_reuse(config: TrainConfig) -> RunResult:
    """Train `config` into config.output, reusing a finished run of the same settings and resuming an
    interrupted one; a directory holding a run of other settings is refused."""
    run_dir = Path(config.output)
    saved_run = read_run_config(run_dir)
    if saved_run is not None:
        saved, ours = TrainConfig.from_dict(saved_run["train"]).to_dict(), config.to_dict()
        differing = [k for k, v in ours.items() if saved[k] != v and k not in TrainConfig.execution_only()]
        if differing:
            raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(differing)}); "
                             "delete it or choose another output directory")
        if (run_dir / "metrics.json").exists():
            print(f"reusing the finished run in {run_dir}", flush=True)
            return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()))
        if (run_dir / STATE).exists():
            print(f"resuming the interrupted run in {run_dir}", flush=True)
            return fit(config, resume=run_dir)
    return fit(config)
