"""A real 2-rank torchrun (gloo, loopback) training from WebDataset shards: each rank records the samples of the
batches it trained on (DEIT_LOG_SAMPLES, data.sample_log), and together they are every training image of the shards
exactly once per epoch, each with the class its tar member holds (the members read with Python's tarfile, not our
index)."""

import csv
import tarfile
from collections import Counter

from deit.data import write_shards
from test_distributed import failure, torchrun
from test_folder import build_folder, needs_fashion

pytestmark = needs_fashion


def tar_samples(shards) -> dict[str, int]:
    """"<shard>@<offset of the image's data>" -> class of every sample, from the tar members themselves."""
    samples = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = [m for m in tar if m.isfile()]
            classes = {m.name.rsplit(".", 1)[0]: int(tar.extractfile(m).read()) for m in members
                       if m.name.endswith(".cls")}
            for m in members:
                if m.name.endswith(".jpg"):
                    samples[f"{shard}@{m.offset_data}"] = classes[m.name.rsplit(".", 1)[0]]
    return samples


def test_two_ranks_over_shards_see_every_training_image_once_per_epoch(tmp_path):
    folder = build_folder(tmp_path / "folder", per_class=(16, 4), sizes=(40, 72), fmt="jpg", rgb=True)
    write_shards(f"imagefolder:{folder}", tmp_path / "wds", shard_size="12KB")  # 48 train images in 19 shards
    shards = sorted(str(p) for p in (tmp_path / "wds" / "train").glob("*.tar"))
    assert len(shards) >= 8  # several shards a rank
    # 48 images, 24 a step, 2 ranks: 2 steps an epoch of 12 images a rank, nothing padded or dropped
    args = ["train", "--preset", "fmnist-cpu", "--data", f"wds:{tmp_path / 'wds'}", "--img-size", "28",
            "--epochs", "2", "--batch-size", "24", "--num-workers", "1", "--mixup", "0", "--cutmix", "0",
            "--eval-every", "2", "--precision", "fp32", "--device", "cpu", "--no-progress",
            "--output", str(tmp_path / "run")]
    result = torchrun(args, env={"DEIT_LOG_SAMPLES": str(tmp_path / "samples")}, timeout=120)
    assert result.returncode == 0, failure(result)

    want = tar_samples(shards)
    assert len(want) == 48
    rows = {}
    for rank in (0, 1):
        with open(tmp_path / "samples" / f"train-rank{rank}.tsv") as f:
            rows[rank] = list(csv.DictReader(f, delimiter="\t"))
    for epoch in ("0", "1"):
        seen = Counter()
        for rank in (0, 1):
            mine = [r for r in rows[rank] if r["epoch"] == epoch]
            assert len(mine) == 24 and {r["batch"] for r in mine} == {"0", "1"}
            for r in mine:
                assert int(r["label"]) == want[r["source"]], r  # the class the batch carried is the member's
            seen.update(r["source"] for r in mine)
        assert seen == Counter(want.keys())  # every image of the shards, exactly once, over the two ranks
    orders = [[r["source"] for r in rows[0] if r["epoch"] == e] for e in ("0", "1")]
    assert orders[0] != orders[1]  # each epoch its own order
