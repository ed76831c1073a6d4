import os
from pathlib import Path

import pytest

FMNIST_DIR = Path(os.environ.get("DEIT_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def fmnist_dir() -> str:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return str(FMNIST_DIR)
