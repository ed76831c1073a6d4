"""WebDataset shards (deit.data.shard_writer / shards / sampler.ShardSampler): packing a folder of real Fashion-MNIST
JPEGs and reading it back (bytes, labels, classes, shard sizes, webdataset's own reader), the epoch order over ranks and
workers (every image once), evaluation over ranks (every image once), determinism and mid-epoch resume, and a short
training run from the shards against the same run from the folder they were packed from."""

import gc
import hashlib
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from deit.data import (AugmentConfig, ShardSampler, StreamLoader, load_data, make_loader, scan_shard, write_shards)
from deit.data.shard_writer import parse_size
from test_folder import build_folder, needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A folder of 3 x 40 train and 3 x 10 val JPEGs (40-72 px) and its shards, ~8 KB each (3-4 images a shard)."""
    root = tmp_path_factory.mktemp("shards")
    folder = build_folder(root / "folder", per_class=(40, 10), sizes=(40, 72), fmt="jpg", rgb=True)
    write_shards(f"imagefolder:{folder}", root / "wds", shard_size="12KB")
    return folder, root / "wds"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_packing_keeps_every_image_once_with_its_class(packed, tmp_path):
    folder, out = packed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == ["sneaker", "trouser", "tshirt"] and meta["grayscale"] is False
    for split, count in (("train", 120), ("val", 30)):
        src = load_data(f"imagefolder:{folder}", split, img_size=32)
        data = load_data(f"wds:{out}", split, img_size=32)
        assert data.classes == src.classes and data.name == f"wds:{out}" and len(data) == count
        want = sorted((digest(Path(src.listing.files[i]).read_bytes()), int(src.labels[i])) for i in range(count))
        got = sorted((digest(data.read_bytes(i)), int(data.labels[i])) for i in range(count))
        assert got == want  # every file's bytes, unchanged, once, with its label
        shards = sorted((out / split).glob("*.tar"))
        assert len(shards) == len(meta["splits"][split]["shards"]) > 3
        assert all(s.stat().st_size <= 12_000 for s in shards)
        assert sum(meta["splits"][split]["shard_samples"]) == count
    # decoded as the folder decodes the same file
    src, data = load_data(f"imagefolder:{folder}", "train", img_size=32), load_data(f"wds:{out}", "train", img_size=32)
    by_digest = {digest(Path(src.listing.files[i]).read_bytes()): i for i in range(len(src))}
    for i in (0, 57):
        j = by_digest[digest(data.read_bytes(i))]
        assert np.array_equal(np.asarray(data.decode(i)[0]), np.asarray(src.decode(j)[0]))
    # webdataset's own reader sees the same samples
    import webdataset as wds

    urls = [str(p) for p in sorted((out / "train").glob("*.tar"))]
    read = sorted((digest(s["jpg"]), int(s["cls"])) for s in wds.WebDataset(urls, shardshuffle=False))
    assert read == sorted((digest(data.read_bytes(i)), int(data.labels[i])) for i in range(len(data)))
    # the same folder and seed give the same shards, byte for byte; another seed another packing order
    write_shards(f"imagefolder:{folder}", tmp_path / "again", shard_size="12KB")
    write_shards(f"imagefolder:{folder}", tmp_path / "seed1", shard_size="12KB", seed=1)
    first = out / "train" / "train-000000.tar"
    assert (tmp_path / "again/train/train-000000.tar").read_bytes() == first.read_bytes()
    assert (tmp_path / "seed1/train/train-000000.tar").read_bytes() != first.read_bytes()


def test_brace_patterns_read_shards_written_elsewhere(packed):
    """'wds:TRAIN;VAL' scans the tar headers: the same index as the one `deit shards` stored; classes are indices."""
    _, out = packed
    stored = load_data(f"wds:{out}", "val", img_size=32)
    n_train, n_val = (len(list((out / s).glob("*.tar"))) for s in ("train", "val"))
    pattern = f"{out}/train/train-{{000000..{n_train - 1:06d}}}.tar;{out}/val/val-{{000000..{n_val - 1:06d}}}.tar"
    scanned = load_data(f"wds:{pattern}", "val", img_size=32)
    assert scanned.classes == ["0", "1", "2"] and len(scanned) == len(stored)
    for key in ("shard", "offset", "size", "label", "kind"):
        assert np.array_equal(getattr(scanned.index, key), getattr(stored.index, key)), key
    assert scan_shard(stored.index.shards[0]).label.tolist() == stored.labels[stored.index.shard == 0].tolist()


def keys_of_epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [i for k in range(len(loader)) for _, _, i in loader.batch_keys(epoch, k)]


def test_an_epoch_over_2_ranks_and_2_workers_sees_every_image_once(packed):
    _, out = packed
    data = load_data(f"wds:{out}", "train", img_size=24)
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = StreamLoader(data, 6, train=True, augment=None, seed=3, num_workers=2, world_size=2, rank=rank)
            assert len(loader) == 10  # 60 images a rank, no partial batch dropped
            keys = keys_of_epoch(loader, epoch)
            labels = torch.cat([y for _, y in loader.iterate(0)])  # read in the two workers
            assert labels.tolist() == data.labels[keys].tolist()
            seen += keys
            # a rank reads its own shards: a contiguous run of the epoch's shard order
            assert sorted(keys) == sorted(loader.sampler.stream(epoch)[rank * 60:(rank + 1) * 60].tolist())
        assert sorted(seen) == list(range(len(data)))
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shard order and buffer each epoch


def test_a_dropped_loader_ends_its_workers_at_once(packed):
    """Freed by reference counting, not left to the garbage collector (which clears the index queues' finalizers
    before the DataLoader's, so persistent workers never got their stop message: 20 s of join timeouts a loader)."""
    _, out = packed
    data = load_data(f"wds:{out}", "train", img_size=24)
    StreamLoader(data, 6, train=True, augment=None)  # imports done: a first import may keep a frame (the caller's)
    gc.collect()
    gc.disable()
    try:
        loader = StreamLoader(data, 6, train=True, augment=None, seed=3, num_workers=2)
        assert len([y for _, y in loader.iterate(0)]) == 20
        workers, freed = loader._worker_loader._iterator._workers, weakref.ref(loader)
        del loader
        assert freed() is None and not any(w.is_alive() for w in workers)
    finally:
        gc.enable()


def test_sampler_semantics():
    sizes = [7, 3, 9, 5, 6]
    for world in (1, 2, 3):
        runs = [ShardSampler(sizes, 1, world, r, seed=5, buffer=4).indices(2) for r in range(world)]
        seen = torch.cat(runs).tolist()
        assert all(len(r) == -(-30 // world) for r in runs)
        assert set(seen) == set(range(30)) and len(seen) - len(set(seen)) == -(-30 // world) * world - 30
    rep = ShardSampler(sizes, 3, 2, 0, seed=5, buffer=4).indices(0)  # repeated augmentation: 5 images x 3
    assert len(rep) == 15 and sorted(torch.bincount(rep).tolist())[-5:] == [3] * 5
    # the buffer only mixes within its reach: buffer 1 keeps the stream's order
    sampler = ShardSampler(sizes, 1, 1, 0, seed=5, buffer=1)
    assert torch.equal(sampler.indices(0), sampler.stream(0))


def test_eval_sees_every_image_once_across_ranks(packed):
    _, out = packed
    val = load_data(f"wds:{out}", "val", img_size=24)
    for world in (1, 2, 4):
        keys, labels = [], []
        for rank in range(world):
            loader = make_loader(val, 4, train=False, num_workers=2 if world == 2 else 0, world_size=world, rank=rank)
            keys += [i for k in range(len(loader)) for _, _, i in loader.batch_keys(0, k)]
            labels += [y for _, y in loader]
        assert sorted(keys) == list(range(30)) and torch.cat(labels).tolist() == val.labels[keys].tolist()


def test_same_seed_same_batches_and_mid_epoch_resume(packed):
    """Batches with DeiT's augmentations: the same seed gives the same batches whatever the worker count; a loader
    started at batch 4 of epoch 1 (a resume) gives exactly batches 4.. of the uninterrupted epoch."""
    _, out = packed
    data = load_data(f"wds:{out}", "train", img_size=24)
    augment = AugmentConfig(randaugment="rand-m9-mstd0.5-inc1", reprob=0.25)

    def loader(seed, workers):
        made = StreamLoader(data, 8, train=True, augment=augment, seed=seed, num_workers=workers, world_size=2, rank=1)
        made.set_epoch(1)
        return made
    full = [(x, y) for x, y in loader(0, 2).iterate(0)]
    resumed = [(x, y) for x, y in loader(0, 0).iterate(4)]
    assert len(full) == 7 and len(resumed) == 3
    for (x, y), (rx, ry) in zip(full[4:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    other = next(loader(1, 0).iterate(0))
    assert not torch.equal(other[0], full[0][0])


def test_training_from_shards_matches_the_folder(packed, tmp_path):
    """The same run (deit_mini, 2 full-batch steps, no augmentation, so the order within the batch is all the shards
    change) from the folder and from its shards: equal losses up to float summation order, equal val metrics."""
    from deit.config import preset_config
    from deit.engine import fit

    folder, out = packed
    results = {}
    for name, data in (("folder", f"imagefolder:{folder}"), ("shards", f"wds:{out}")):
        config = preset_config("fmnist-cpu", data=data, img_size=28, epochs=2, batch_size=120, mixup=0.0, cutmix=0.0,
                               warmup_epochs=1, eval_every=2, progress=False, threads=1, num_workers=0,
                               precision="fp32", output=str(tmp_path / name))
        run = fit(config).output
        if name == "shards":  # `deit eval` rebuilds the val split from config.json's "wds:..." as training read it
            from deit.engine.evaluate import evaluate_run

            evaluated = evaluate_run(run, device="cpu", precision="fp32")
            trained = json.loads((run / "metrics.json").read_text())
            assert evaluated["top1"] == trained["top1"] and evaluated["num_images"] == 30
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        results[name] = ([r["train_loss"] for r in rows if "train_loss" in r],
                         json.loads((run / "metrics.json").read_text()))
    (folder_losses, folder_metrics), (shard_losses, shard_metrics) = results["folder"], results["shards"]
    assert len(folder_losses) == 2 and shard_losses == pytest.approx(folder_losses, rel=1e-5)
    assert shard_metrics["num_images"] == folder_metrics["num_images"] == 30
    assert shard_metrics["top1"] == folder_metrics["top1"]
    assert shard_metrics["loss"] == pytest.approx(folder_metrics["loss"], rel=1e-5)


def test_bad_input_is_one_clear_line(packed, tmp_path, capsys):
    from deit.cli import main

    folder, out = packed
    assert parse_size("1GB") == 10**9 and parse_size("256MiB") == 2**28 and parse_size("1e6") == 10**6
    with pytest.raises(ValueError, match="--shard-size"):
        parse_size("big")
    assert main(["shards", f"imagefolder:{folder}", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["shards", str(folder), str(tmp_path / "x")]) == 2
    assert "imagefolder:PATH" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_data(f"wds:{folder}", "train", img_size=28)
    with pytest.raises(FileNotFoundError, match="no directory"):
        load_data(f"wds:{tmp_path}/absent", "train", img_size=28)
    with pytest.raises(ValueError, match="two brace patterns"):
        load_data(f"wds:{out}/train/train-000000.tar", "train", img_size=28)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_data(f"wds:{out}/train/train-{{000000..000999}}.tar;{out}/val/val-000000.tar", "train", img_size=28)
    with pytest.raises(ValueError, match="--cache-images"):
        load_data(f"wds:{out}", "train", img_size=28, cache_images=True)


def test_a_run_from_shards_resumed_mid_epoch_equals_the_uninterrupted_run(packed, tmp_path):
    """Stopped inside epoch 2 and resumed with another worker count == uninterrupted (CPU, deterministic), with
    random erasing, flips and Mixup/CutMix on."""
    from deit.config import preset_config
    from deit.engine import fit
    from deit.engine.state_file import read_state

    _, out = packed

    def config(name, workers=0):
        return preset_config("fmnist-cpu", data=f"wds:{out}", img_size=28, epochs=2, batch_size=30, hflip=0.5,
                             reprob=0.25, warmup_epochs=0.5, eval_every=2, progress=False, threads=1,
                             num_workers=workers, precision="fp32", deterministic=True, output=str(tmp_path / name))
    full = fit(config("full"))
    assert fit(config("parted"), stop_after_steps=6).metrics == {}  # 4 steps an epoch: inside epoch 2
    resumed = fit(config("parted", workers=1), resume=tmp_path / "parted")
    a, b = read_state(full.output / "state.pt"), read_state(resumed.output / "state.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert full.metrics["top1"] == resumed.metrics["top1"]
