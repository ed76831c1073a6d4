import json
import os
from pathlib import Path

import pytest
import torch

FMNIST_DIR = Path(os.environ.get("DEIT_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def fmnist_dir() -> str:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return str(FMNIST_DIR)


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Jitter every parameter: init leaves biases 0 and LayerNorms 1/0, which would hide a misplaced tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def make_run_dir(model: torch.nn.Module, run_dir: Path, classes: list[str], mean, std, img_size) -> Path:
    """A run directory as `deit train` records it (weights, model spec, data and preprocessing entries), for a
    model that was not trained: what prediction and export read from a run."""
    from deit.checkpoint import save_model

    save_model(model, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    in_chans = len(mean)
    config["data"] = {"name": "test", "num_classes": len(classes), "in_chans": in_chans,
                      "img_size": list(img_size), "mean": list(mean), "std": list(std), "classes": classes}
    config["preprocessing"] = {"mean": list(mean), "std": list(std), "img_size": list(img_size), "in_chans": in_chans}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture
def small_val(monkeypatch):
    """Toy scale: runs evaluate on the first 500 test images (all 10,000 would dominate these tests)."""
    import deit.data

    full_split = deit.data.load_split
    monkeypatch.setattr(deit.data, "load_split", lambda config, split, **kw: (
        full_split(config, split, **kw) if split == "train" else full_split(config, split, **kw).subset(range(500))))


def use_offline_hub_cache(monkeypatch, cache: Path) -> Path:
    """This process sees `cache` as the Hugging Face cache, offline (huggingface_hub reads its environment once, at
    import: its constants are set too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (largest gap between the two empirical CDFs)."""
    import numpy as np

    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a, cdf_b = np.searchsorted(a, grid, "right") / len(a), np.searchsorted(b, grid, "right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))
