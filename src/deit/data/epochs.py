"""The loader contract that BatchLoader (in-memory splits) and StreamLoader (streamed folders) share: batches of
an epoch from any start (exact mid-epoch resume), built in this process or in persistent worker processes, on
the loader's device."""

from __future__ import annotations

import atexit
import signal

import torch


def init_worker(_=None) -> None:
    """Each DataLoader worker process: one core (the training process keeps the rest), and deaf to the signals that
    ask a run to stop. A scheduler or a terminal signals every process of a job; the training process saves and
    stops at its next step, and would fail instead if its workers died of the signal under it."""
    torch.set_num_threads(1)
    for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def _kill_workers_left_at_exit() -> None:
    """At interpreter exit multiprocessing terminates its daemonic children (SIGTERM), then joins them: workers deaf to
    SIGTERM (init_worker) that are still alive then (a loader never garbage-collected) would hang the exit forever.
    They only read data: kill them. Registered after `import torch` has imported multiprocessing.util, so atexit
    (last in, first out) runs it before multiprocessing's own exit function."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_workers_left_at_exit)


class EpochLoader:
    """Subclasses set num_batches, sampler (None for evaluation), device, channels_last, _worker_loader (None:
    build in this process) with _worker_order (the sampler whose epoch/start it reads), and _build_batch."""

    epoch: int = 0

    def _build_batch(self, epoch: int, k: int):
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start_batch: int = 0):
        """Batches start_batch, start_batch + 1, ... of the current epoch (for exact mid-epoch resume)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in 0..{self.num_batches}, got {start_batch}")
        if self._worker_loader is None:
            built = (self._build_batch(self.epoch, k) for k in range(start_batch, self.num_batches))
        else:
            self._worker_order.epoch, self._worker_order.start = self.epoch, start_batch
            built = iter(self._worker_loader)
        for batch in built:
            yield self._finish(batch)

    def _finish(self, batch):
        """A built batch as the training step takes it: (images, labels) on the device (subclasses finish more)."""
        images, labels = batch
        return self._to_device(images), self._to_device(labels)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=self.device.type == "cuda")
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor
