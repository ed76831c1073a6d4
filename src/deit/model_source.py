"""A model to classify with, from any source `deit predict` and `deit eval` take: a run directory of `deit train`, a
directory exported with `deit convert --layout hf|timm` (or any transformers DeiT/ViT or timm directory), or any of
these by name on the hub (hf-hub:ORG/NAME[@REVISION], timm:NAME[.TAG], resolved through deit.hub and its cache)
-> the model, its class names and its evaluation preprocessing, each read from what the source itself records:
a run's config.json, an HF config.json's id2label + preprocessor_config.json, a timm config.json's label_names +
pretrained_cfg."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from .checkpoint import CONFIG_NAME, RUN_WEIGHTS, described_model, is_run_dir, load_checkpoint, load_run
from .data.preprocessing import EvalPreprocessing, eval_preprocessing, run_classes
from .hf_layout import hf_classes, preprocessing_from_hf
from .hub import fetch_beside, local_source
from .safe_read import read_json
from .timm_layout import preprocessing_from_timm, timm_classes

HF_PREPROCESSOR = "preprocessor_config.json"


@dataclass
class ModelSource:
    model: nn.Module  # in eval mode, on the CPU
    classes: list[str]  # in the order of the model's outputs
    preprocessing: EvalPreprocessing
    source: str  # as given
    run_config: Optional[dict] = None  # a run of ours: its config.json (which data it was trained on, ...)
    hub: Optional[dict] = None  # what a hub name resolved to (deit.hub.HubWeights.record)


def load_model_source(source, weights: str = "model") -> ModelSource:
    """Resolve and load `source`; every failure (a bad or uncached hub name, a folder that is no model, a
    preprocessing this evaluation cannot do) is one ValueError / FileNotFoundError line, before any image is read.
    weights: a run directory's model | best | ema."""
    text = str(source)
    path, hub = local_source(text)
    folder = hub.directory if hub is not None else path
    record = hub.record() if hub is not None else None
    if is_run_dir(folder):
        model, config = load_run(folder, weights)
        return ModelSource(model.eval(), run_classes(config), eval_preprocessing(config, text), text, config, record)
    if weights != "model":
        raise ValueError(f"{text} is no run directory of `deit train`: --weights {weights} (one of "
                         f"{', '.join(RUN_WEIGHTS)}) is only for those")
    if not folder.exists():
        raise FileNotFoundError(f"{text} does not exist (hub models are named hf-hub:ORG/NAME or timm:NAME)")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{text} is not a run directory of `deit train` or a model directory of `deit "
                                f"convert` (it has no {CONFIG_NAME}); hub models are named hf-hub:ORG/NAME or timm:NAME")
    config = read_json(folder / CONFIG_NAME)
    if "model_type" in config:  # transformers
        processor = fetch_beside(hub, HF_PREPROCESSOR) if hub is not None else folder / HF_PREPROCESSOR
        if processor is None or not processor.is_file():
            fetch = f" (`hf download {hub.repo} {HF_PREPROCESSOR}`)" if hub is not None else ""
            raise FileNotFoundError(f"{text} has no {HF_PREPROCESSOR}{fetch}: nothing says how its images are "
                                    "resized and normalised")
        prep = preprocessing_from_hf(read_json(processor), config.get("num_channels", 3), text)
        classes = hf_classes(config)
    elif "architecture" in config:  # timm's hub layout
        prep, classes = preprocessing_from_timm(config, text), timm_classes(config)
    else:
        raise ValueError(f"{text}: its {CONFIG_NAME} is neither a run's, a transformers model's nor a timm model's")
    # the weights file a hub name resolved to (a timm pretrained_cfg may name another), else the folder's
    model = load_checkpoint(hub.path if hub is not None else folder, described_model(config)).model
    if len(classes) != _num_outputs(model):
        raise ValueError(f"{text}: {len(classes)} class names for a model of {_num_outputs(model)} outputs")
    return ModelSource(model.eval(), classes, prep, text, None, record)


def _num_outputs(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return config.num_classes if config is not None else model.num_classes  # ours, else timm's
