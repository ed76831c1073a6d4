"""DEIT_LOG_SAMPLES=DIR: every rank of a run from a streamed folder or shards records the samples of each training
batch as it hands the batch to the step, one TSV file per rank (DIR/train-rank<R>.tsv; appended to, so a resumed or
restarted run continues the file). Rows: epoch, batch, source, label; the source is the image file of a folder, or
"<shard>@<offset>" of a shard (the byte offset of the image member's data in the tar: Python's
TarInfo.offset_data). The label is the one the batch carries, read by the worker that decoded the sample.

What it answers: did the ranks together see every image once an epoch (`tail -qn +2 DIR/train-rank*.tsv | cut -f1,3 |
sort | uniq -d` prints the samples seen twice), which batch held a bad file, what a resumed run read."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DEIT_LOG_SAMPLES"
HEADER = "epoch\tbatch\tsource\tlabel\n"


class SampleLog:
    def __init__(self, directory: str, split: str, rank: int):
        path = Path(directory) / f"{split}-rank{rank}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.file = open(path, "a", encoding="utf-8")
        if new:
            self.file.write(HEADER)

    def write(self, epoch: int, batch: int, sources: list[str], labels: list[int]) -> None:
        """One batch; flushed, so a rank that dies leaves every batch it handed over."""
        self.file.write("".join(f"{epoch}\t{batch}\t{s}\t{y}\n" for s, y in zip(sources, labels)))
        self.file.flush()


def sample_log(split: str, rank: int) -> SampleLog | None:
    """The log of this rank when DEIT_LOG_SAMPLES names a directory, else None."""
    directory = os.environ.get(ENV)
    return SampleLog(directory, split, rank) if directory else None
