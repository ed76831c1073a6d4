"""A run from start to end: `fit(config)` is what `deit train` calls. Resolve the run directory (new, resumed, or
`resume="auto"`: resumed when it holds a run, else new), refuse bad settings before any work, hold the directory's
lock (one writer), set the process up (one process or one of a torchrun job), train with a Trainer until the end
or a stop signal, and leave the process group; `fit_or_reuse` is fit for pipelines (a finished run is reused)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..config import TrainConfig
from ..fileio import check_writable
from .run_dir import METRICS, STATE, RunLock, default_output, load_state, read_run_config
from .runtime import STOP_EXIT_CODE, Runtime, launched_ranks, setup_runtime, stop_on_signals
from .stopping import record_stop, stop_record
from .tracking import open_trackers
from .run_setup import check_config
from .trainer import RunResult, Trainer


def _run_dir(config: TrainConfig | None, resume) -> Path:
    if resume == "auto":
        if config is None or not config.output:
            raise ValueError("--resume auto needs --output RUN: the run directory to continue when it holds a run, "
                             "else to start in (the same command line every time)")
        return Path(config.output)
    if resume is not None:
        return Path(resume)
    return Path(config.output) if config.output else default_output(config)


def _saved_config(run_dir: Path) -> TrainConfig:
    saved = read_run_config(run_dir)
    if saved is None or not (run_dir / STATE).exists():
        raise FileNotFoundError(f"{run_dir} is not a resumable run (needs config.json and state.pt)")
    try:
        return TrainConfig.from_dict(saved["train"])
    except ValueError as e:  # written by another version of deit (options it has and this one lacks)
        raise ValueError(f"{run_dir} cannot be resumed by this version of deit: {e}") from None


def _differing(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The settings that shape the result and differ (execution-only ones may change, and the output: a run
    directory may be moved)."""
    free = (*TrainConfig.execution_only(), "output")
    return [k for k, v in config.to_dict().items() if k not in free and getattr(saved, k) != v]


def _resolve_run(config: TrainConfig | None, resume, run_dir: Path) -> tuple[TrainConfig, bool]:
    """The run's config and whether it resumes."""
    if resume is None or (resume == "auto" and not (run_dir / STATE).exists()):
        if resume is None and (run_dir / STATE).exists():
            raise ValueError(f"{run_dir} already holds a run; pass --resume {run_dir} (or --resume auto) to continue "
                             "it or choose another --output")
        return config, False
    saved = _saved_config(run_dir)
    if config is None:
        return saved, True
    if resume == "auto":
        differing = _differing(saved, config)
        if differing:
            flags = ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)!r} (the run has {getattr(saved, k)!r})"
                              for k in differing)
            raise ValueError(f"{run_dir} holds a run of other settings: {flags}; --resume auto continues only the run "
                             "its command describes: drop the change, or choose another --output")
    # Execution-only settings may change on resume; everything that shapes the result may not.
    return saved.replace(**{k: getattr(config, k) for k in TrainConfig.execution_only()}), True


def fit(config: TrainConfig | None, resume: str | Path | None = None,
        stop_after_steps: int | None = None) -> RunResult:
    """Train `config` to the end, or resume the run in `resume` (with `config`, only its execution-only
    settings apply: threads, progress, ...); resume="auto": resume config.output when it holds a run of the same
    settings, else start it there. `stop_after_steps` stops early, leaving a resumable run (used to test exact
    resume and to split long runs). A stop signal (SIGTERM, SIGINT, config.stop_signal) saves the state at the
    next step and returns a RunResult with stopped_by set."""
    run_dir = _run_dir(config, resume)
    config, resuming = _resolve_run(config, resume, run_dir)
    if resuming and resume == "auto" and (run_dir / METRICS).exists():  # a requeued job whose run had finished
        print(f"deit train: the run in {run_dir} is finished; nothing to do", flush=True)
        return RunResult(run_dir, json.loads((run_dir / METRICS).read_text()))
    # Everything that can be refused is checked before any training: cheap checks first.
    world_size, rank, _ = launched_ranks()
    check_config(config, world_size=world_size)
    check_writable(run_dir)
    # One writer per run directory: the main process holds its lock while the run may write (the others never
    # write). A second run into it is refused here, before any work.
    with (RunLock(run_dir) if rank == 0 else contextlib.nullcontext()) as lock:
        if lock is not None and lock.taken_over:
            print(f"deit train: took over the lock of {run_dir} left by pid {lock.taken_over.get('pid')} on "
                  f"{lock.taken_over.get('host')} (since {lock.taken_over.get('since')}; no longer running)", flush=True)
        rt = setup_runtime(config.device, config.precision, config.threads, config.deterministic)
        try:
            with stop_on_signals(rt, config.stop_signal):
                result, stop = _train(config, run_dir, rt, resuming, stop_after_steps)
        except BaseException:
            rt.close()
            raise
        # The Trainer (and DDP's hold on the process group) is gone: every process leaves together.
        rt.close(wait_for_all=True)
        if stop is not None and rt.is_main:
            record_stop(config, run_dir, stop)
    return result


def _train(config: TrainConfig, run_dir: Path, rt: Runtime, resuming: bool,
           stop_after_steps: int | None) -> tuple[RunResult, dict | None]:
    """The run's result, and where a stop signal stopped it (None when none did)."""
    (agreeing,) = rt.all_reduce([resuming])  # every process must see the same run directory (a shared file system)
    if agreeing not in (0, rt.world_size):
        raise RuntimeError(f"the processes disagree on whether {run_dir} holds a run to resume: every process must "
                           "see the run directory at the same path (a shared file system)")
    recorded = (read_run_config(run_dir) or {}).get("precision") if resuming else None
    trainer = Trainer(config, run_dir, rt, recorded_precision=recorded)
    if resuming:
        trainer.load_state_dict(load_state(run_dir, rt.device))
        trainer.restore_schedule((read_run_config(run_dir) or {}).get("schedule"))
        trainer.writer.keep_log_until(trainer.epoch)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        rt.print(f"deit train: resuming {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch} (step "
                 f"{trainer.step})" + (f"; torchrun restart {restart}" if restart else ""))
    else:
        trainer.writer.start(trainer.run_config())
        trainer.save(0, 0)  # resumable from the start: a crash in the first epoch loses nothing
    with open_trackers(config.report_to, trainer.writer, trainer.step if resuming else None) as trainer.reporter:
        result = trainer.fit(stop_after_steps)
        if result.metrics:  # the run ended (not stopped early): the curves and pictures
            trainer.reporter.finish(run_dir, trainer.step, rt.device)
    if not result.stopped_by:
        return result, None
    return result, stop_record(rt, result.stopped_by, trainer.step, trainer.steps_per_epoch)


def fit_or_reuse(config: TrainConfig) -> RunResult:
    """Train `config` into config.output, reusing a finished run of the same settings and resuming an
    interrupted one; a directory holding a run of other settings is refused. A run stopped by a signal ends the
    caller's process with the stop's exit code (a pipeline cannot go on without it; run again, it resumes)."""
    result = _fit_or_reuse(config)
    if result.stopped_by:
        raise SystemExit(STOP_EXIT_CODE)
    return result


def _fit_or_reuse(config: TrainConfig) -> RunResult:
    run_dir = Path(config.output)
    saved_run = read_run_config(run_dir)
    if saved_run is not None:
        differing = _differing(TrainConfig.from_dict(saved_run["train"]), config)
        if differing:
            raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(differing)}); "
                             "delete it or choose another output directory")
        if (run_dir / METRICS).exists():
            print(f"reusing the finished run in {run_dir}", flush=True)
            return RunResult(run_dir, json.loads((run_dir / METRICS).read_text()))
        if (run_dir / STATE).exists():
            print(f"resuming the interrupted run in {run_dir}", flush=True)
            return fit(config, resume=run_dir)
    return fit(config)
