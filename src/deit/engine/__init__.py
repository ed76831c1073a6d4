"""The training engine: runtime (device, precision, processes), optimisation, the distillation task, the
Trainer and its run directory, evaluation."""

from .evaluate import evaluate, evaluate_run, metrics_from_predictions, predict
from .fit import fit, fit_or_reuse
from .trainer import RunResult, Trainer

__all__ = ["RunResult", "Trainer", "evaluate", "evaluate_run", "fit", "fit_or_reuse", "metrics_from_predictions",
           "predict"]
