import json
import os
from pathlib import Path

import pytest
import torch

FMNIST_DIR = Path(os.environ.get("DEIT_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session", autouse=True)
def parse_installed_fashion_mnist_once():
    """The installed Fashion-MNIST files are read-only: each is decompressed and parsed once a session (by the real
    reader, deit.data.builtin.read_idx), not once per run (~0.3 s a training run). Other files (the tests' own,
    corrupt or truncated ones) are read every time."""
    import functools

    import deit.data.builtin

    read_idx = deit.data.builtin.read_idx
    cached = functools.lru_cache(maxsize=8)(lambda path, magic, stamp: read_idx(path, magic))

    def read(path, expected_magic):
        path = Path(path)
        if path.parent != FMNIST_DIR:
            return read_idx(path, expected_magic)
        stat = path.stat()
        return cached(path, expected_magic, (stat.st_size, stat.st_mtime_ns))  # a read-only array: never changed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deit.data.builtin, "read_idx", read)
        yield


@pytest.fixture(scope="session")
def fmnist_dir() -> str:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return str(FMNIST_DIR)


def write_fashion_mnist(folder: Path, test_images: int) -> str:
    """A Fashion-MNIST data dir for subprocess runs (which parse their files anew): the installed training split whole
    (a run's --train-subset is drawn from all of it) and the first `test_images` test images, as uncompressed IDX
    files (read without decompressing 30 MB in every process)."""
    import struct

    import numpy as np

    from deit.data.builtin import FASHION_MNIST_FILES, read_idx

    folder.mkdir(parents=True, exist_ok=True)
    for split, keep in (("train", None), ("val", test_images)):
        for stem in FASHION_MNIST_FILES[split]:
            magic = 2051 if "images" in stem else 2049
            array = np.ascontiguousarray(read_idx(FMNIST_DIR / f"{stem}.gz", magic)[:keep])
            header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
            (folder / stem).write_bytes(header + array.tobytes())
    return str(folder)


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


def first_test_images(monkeypatch, count: int) -> None:
    """Runs in this process evaluate on the first `count` test images (all 10,000 would dominate toy-scale tests)."""
    import deit.data

    full_split = deit.data.load_split
    monkeypatch.setattr(deit.data, "load_split", lambda config, split, **kw: (
        full_split(config, split, **kw) if split == "train" else full_split(config, split, **kw).subset(range(count))))


@pytest.fixture
def small_val(monkeypatch):
    """Toy scale: runs evaluate on the first 500 test images."""
    first_test_images(monkeypatch, 500)


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
