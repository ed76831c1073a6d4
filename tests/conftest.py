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
