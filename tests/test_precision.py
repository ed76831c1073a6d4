"""--precision auto by measurement: the probe times the model's own step, leaves the model and RNG as they
were, caches its answer, and the trainer records it."""

import json

import pytest
import torch

from deit.config import preset_config
from deit.engine import fit
from deit.engine import precision as precision_module
from deit.engine.precision import PROBE_CANDIDATES, probe_training_precision, resolve_precision
from deit.models import create_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "probe.json"
    monkeypatch.setattr(precision_module, "PROBE_CACHE", path)
    return path


def test_probe_measures_both_leaves_the_model_and_rng_alone_and_caches(cache):
    model = create_model("deit_mini_distilled_patch7_28", num_classes=10, in_chans=1, drop_path_rate=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    probe = probe_training_precision(model, (8, 1, 28, 28), "deit_mini_distilled_patch7_28")
    assert set(probe.seconds) == set(PROBE_CANDIDATES) and all(t > 0 for t in probe.seconds.values())
    assert probe.choice == min(probe.seconds, key=probe.seconds.get) and not probe.cached
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    again = probe_training_precision(model, (8, 1, 28, 28), "deit_mini_distilled_patch7_28")
    assert again.cached and again.seconds == probe.seconds
    other_shape = probe_training_precision(model, (4, 1, 28, 28), "deit_mini_distilled_patch7_28")
    assert not other_shape.cached  # a cached answer is only reused for the same step
    assert len(json.loads(cache.read_text())) == 2


def test_a_cnn_with_batchnorm_keeps_its_running_statistics(cache):
    model = create_model("resnet8_tiny", num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe_training_precision(model, (8, 1, 28, 28), "resnet8_tiny")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auto_training_on_cpu_records_the_probe_and_resume_keeps_the_choice(cache, tmp_path, fmnist_dir):
    config = preset_config("fmnist-cpu", epochs=1, batch_size=32, train_subset=128, eval_every=100, progress=False,
                           threads=1, precision="auto", device="cpu", output=str(tmp_path / "run"),
                           data_dir=fmnist_dir)
    fit(config, stop_after_steps=2)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    probe = saved["precision_probe"]
    assert saved["precision"] == probe["choice"] and probe["choice"] in PROBE_CANDIDATES
    assert probe["bf16_speedup"] == pytest.approx(probe["seconds"]["fp32"] / probe["seconds"]["bf16"])
    cache.write_text("{}")  # a resume does not probe again: it trains on in the recorded precision
    fit(None, resume=tmp_path / "run")
    assert json.loads(cache.read_text()) == {}


def test_explicit_precisions_resolve_without_probing():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None and resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 training needs CUDA"):
        resolve_precision("fp16", cpu)
