"""`deit train`: every TrainConfig field is a flag; --preset picks a recipe, explicit flags win."""

from __future__ import annotations

import argparse
import dataclasses
import json


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --field-name for each TrainConfig field; defaults are suppressed so that only given flags
    override the preset."""
    from deit.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default {f.default})"
        kind = {"bool": bool, "int": int, "float": float}.get(f.type.replace("Optional[", "").rstrip("]"), str)
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parse = _parse_optional(kind) if f.type.startswith("Optional") else kind
            parser.add_argument(flag, dest=f.name, type=parse, default=argparse.SUPPRESS, help=help_text)


def config_from_args(args):
    from deit.config import TrainConfig, default_preset, preset_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    base: dict = {}
    if getattr(args, "config", None):
        with open(args.config) as f:
            loaded = json.load(f)
        base = loaded.get("train", loaded)  # a run's config.json or a plain option dict
        TrainConfig.from_dict(base)  # unknown keys: one clear error
    source = given.get("finetune", base.get("finetune"))
    if source and "model" not in given and "model" not in base:
        from deit.finetune import source_model_name

        name = source_model_name(source)  # the architecture the source says it is, over the preset's
        if name is not None:
            given["model"] = name
    preset = getattr(args, "preset", None)
    if preset is None and not base:  # no recipe chosen: never the ImageNet one on a small built-in set
        preset = default_preset(given.get("data", TrainConfig.data))
        if preset is not None:
            print(f"deit train: no --preset given: using {preset}, the small-data recipe for "
                  f"{given.get('data', TrainConfig.data)} (--preset deit for the paper's ImageNet recipe)")
    if preset is not None:
        return preset_config(preset, **{**base, **given})
    return TrainConfig(**{**base, **given})


def register(sub) -> None:
    from deit.config import PRESETS

    p = sub.add_parser("train", help="train a model (DeiT student or CNN teacher) with the DeiT recipe",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="recipe preset applied under explicit flags (default: the paper's Table 9)")
    p.add_argument("--config", default=None, help="JSON file of options (a run's config.json works)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR|auto",
                   help="continue an interrupted run exactly; auto: continue --output when it holds a run of these "
                        "settings, else start it (the same command line for every attempt: requeued jobs, torchrun "
                        "--max-restarts)")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                   help="stop after global step N, leaving a run that --resume continues (split a long run)")
    add_config_flags(p)
    p.set_defaults(func=run)


def resume_config(args):
    """The saved recipe with the execution-only flags given now, or None when none is given. A flag that would
    change the recipe is refused: ignoring it silently would train something else than the command says."""
    from deit.config import TrainConfig
    from deit.engine.run_dir import read_run_config

    saved = read_run_config(args.resume)
    if saved is None:
        return None  # fit says what a resumable run needs
    if not isinstance(saved.get("train"), dict):
        raise ValueError(f"{args.resume} is not a run of `deit train` (its config.json has no training options)")
    try:
        recipe = TrainConfig.from_dict(saved["train"])
    except ValueError as e:  # options this version does not have: written by another version of deit
        raise ValueError(f"{args.resume} cannot be resumed by this version of deit: {e}") from None
    execution = set(TrainConfig.execution_only())
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in execution and hasattr(args, f.name) and getattr(args, f.name) != getattr(recipe, f.name)]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} (the run has {getattr(recipe, k)!r})" for k in changed)
        raise ValueError(f"{flags} cannot change on --resume; drop it, or start a new run with another --output")
    given = {k: getattr(args, k) for k in execution if hasattr(args, k)}
    return recipe.replace(**given) if given else None


def run(args) -> int:
    from deit.engine import fit
    from deit.engine.runtime import launched_ranks

    from deit.engine.runtime import STOP_EXIT_CODE

    stop = args.stop_after_steps
    if args.resume == "auto":  # the whole recipe is given, every time; fit checks it against a saved run
        result = fit(config_from_args(args), resume="auto", stop_after_steps=stop)
    elif args.resume:  # the saved recipe, with any execution-only flags given now (threads, progress, ...)
        result = fit(config=resume_config(args), resume=args.resume, stop_after_steps=stop)
    else:
        result = fit(config_from_args(args), stop_after_steps=stop)
    if result.stopped_by:  # state saved: every process exits with the code that says "run me again"
        if launched_ranks()[1] == 0:
            print(f"continue with the same command and --resume auto, or: deit train --resume {result.output}")
        return STOP_EXIT_CODE
    if launched_ranks()[1] != 0:
        return 0
    if not result.metrics:
        print(f"stopped after step {stop}; continue with: deit train --resume {result.output}")
        return 0
    keys = [k for k in ("top1", "top1_cls", "top1_dist", "top5") if k in result.metrics]
    print("final: " + ", ".join(f"{k} {result.metrics[k]:.2f}%" for k in keys) + f" -> {result.output}")
    return 0
