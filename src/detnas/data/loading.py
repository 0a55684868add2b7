"""How images reach the model: the number of DataLoader workers, pinned memory on CUDA, and batches
that are decoded once and kept in memory only while they fit a budget.

A path of a supernet is scored on the same recalibration images and the same search split as every
other path, so decoding them once saves most of the search's CPU time; but at COCO scale (4000
recalibration images at 800x1333, ~11 MB each as float tensors) keeping them all does not fit in RAM.
``CachedBatches`` keeps the first batches that fit its budget and decodes the rest again on every
pass, through a DataLoader whose workers live as long as it does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch

Workers = int | Literal["auto"]
WORKERS_ENV = "DETNAS_DATA_WORKERS"  # overrides "auto" (the tests set 0)
MAX_AUTO_WORKERS = 8


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def data_workers(value: Workers = "auto", processes_per_node: int | None = None) -> int:
    """DataLoader workers for one training process: ``value``, or for ``"auto"`` ``$DETNAS_DATA_WORKERS``
    if set, else the CPUs this process may use, shared by the node's processes (torchrun's
    LOCAL_WORLD_SIZE), less one for the process itself, at most 8."""
    if value != "auto":
        return int(value)
    if os.environ.get(WORKERS_ENV, "").strip():
        return int(os.environ[WORKERS_ENV])
    cpus = usable_cpus()
    per_node = processes_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(per_node, 1) - 1))


def loader_options(workers: int, device: torch.device | str | None = None) -> dict:
    """DataLoader keyword arguments shared by every loader: the worker count, page-locked batches
    when they go to a CUDA device (so the copy can overlap compute, as torchvision's references do),
    and a generator of its own, so that creating an iterator never draws from the global RNG, which
    training checkpoints."""
    cuda = device is not None and torch.device(device).type == "cuda"
    return {"num_workers": workers, "pin_memory": cuda, "generator": torch.Generator()}


def nbytes(obj: Any) -> int:
    """Bytes held by the tensors in ``obj`` (nested lists, tuples and dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


class CachedBatches:
    """The batches of ``dataset`` in order (``batch_size`` each, the last one smaller), each passed
    through ``keep`` (e.g. the images of an (images, targets) batch).

    The first batches are decoded at construction and kept while their total stays within
    ``budget_bytes``; the others are decoded again on every pass by a DataLoader with ``workers``
    persistent workers. Decoding is deterministic, so a pass yields the same tensors either way;
    memory held stays under the budget plus the batches in flight (about ``2 * workers + 1``).
    """

    def __init__(self, dataset, batch_size: int, collate_fn: Callable | None = None, workers: int = 0,
                 budget_bytes: float = math.inf, device: torch.device | str | None = None,
                 keep: Callable[[Any], Any] = lambda batch: batch):
        self.batch_size, self.collate_fn, self.keep = batch_size, collate_fn, keep
        self.num_batches = math.ceil(len(dataset) / batch_size)
        self.cached: list = []
        self.cached_bytes = 0
        if budget_bytes > 0:
            for batch in self._loader(dataset, workers, None, persistent=False):
                batch = keep(batch)
                if self.cached_bytes + nbytes(batch) > budget_bytes:
                    break
                self.cached.append(batch)
                self.cached_bytes += nbytes(batch)
        rest = range(len(self.cached) * batch_size, len(dataset))
        self.streamed = None
        if len(rest):
            self.streamed = self._loader(torch.utils.data.Subset(dataset, rest), workers, device, persistent=True)

    def _loader(self, dataset, workers: int, device, persistent: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                           persistent_workers=persistent and workers > 0,
                                           **loader_options(workers, device))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator:
        yield from self.cached
        if self.streamed is not None:
            for batch in self.streamed:
                yield self.keep(batch)
