"""What a dry run says about speed and scale: the learning rate against the batch it was set for, and
how long the run will take, from a few steps timed on this machine.

The timed steps are the run's own computations on random data: a pretraining step (forward,
backward, SGD) at the classification image size, a detection training step at the detector's
largest input (min_size x max_size: real images are as large or smaller), and a forward pass of
inference; each on a new random path of the supernet (or the one architecture of a retraining), in
the run's precision and memory layout. On a GPU each step is the worker's whole batch, after one
untimed step (allocation, cuDNN's choice of algorithms); on a CPU, whose time grows with the images
it computes, ``CPU_IMAGES`` of it, the time scaled to the batch: a CPU estimate of a full-size run
stays a minute or two. Data loading, evaluation and the communication between workers are not timed: the
estimate is a lower bound for a run whose data or network keeps up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from detnas.config.schema import ScheduleConfig
from detnas.model.amp import autocast, resolve_amp
from detnas.model.detector import build_detector, set_path
from detnas.model.detector_config import DetectorConfig
from detnas.model.flops import sample_arch
from detnas.model.layout import apply_layout
from detnas.model.space import Arch, SearchSpace
from detnas.model.supernet import ShuffleNetBackbone

CPU_IMAGES = 2  # images per timed step on a CPU; BatchNorm in training mode needs two


def lr_scaling(schedules: list[tuple[str, ScheduleConfig]], workers: int, as_set: bool = False) -> list[str]:
    """A warning for each schedule (named by its key) whose lr was set for another whole batch than
    ``workers`` x its batch size, with the lr the linear scaling rule gives (Goyal et al. 2017);
    ``as_set``: the keys are the config file's, so the warning says the ``--set`` that changes it."""
    lines = []
    for key, s in schedules:
        batch = workers * s.batch_size
        if s.lr_batch is None or s.lr_batch == batch:
            continue
        scaled = s.lr * batch / s.lr_batch
        same = (f", or keep the batch of {s.lr_batch} with {s.lr_batch // s.batch_size} workers"
                if s.lr_batch % s.batch_size == 0 else "")
        lines.append(f"warning: {key}: lr {s.lr:g} was set for a batch of {s.lr_batch} images, this run's is "
                     f"{workers} worker(s) x {s.batch_size} = {batch}: linear scaling gives lr {scaled:.4g} "
                     f"({'--set ' if as_set else 'set '}{key}.lr={scaled:.4g}){same}")
    return lines


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
        torch.device("cpu")


class StepTimer:
    """Seconds per image of the run's steps on this machine's device (see the module's docstring);
    each measurement is made once per shape."""

    def __init__(self, space: SearchSpace, amp: str, steps: int, seed: int = 0):
        self.space, self.steps = space, steps
        self.device = _device()
        self.amp = resolve_amp(amp, self.device)
        self.rng = np.random.default_rng(seed)
        self._cache: dict[tuple, float] = {}

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"{os.cpu_count()} CPUs"
        precision = "float32" if self.amp == "off" else self.amp
        return f"{self.device} ({name}), {precision}"

    def _images(self, batch: int) -> int:
        return batch if self.device.type == "cuda" else min(batch, CPU_IMAGES)

    def _path(self, arch: Arch | None) -> Arch:
        return arch if arch is not None else sample_arch(self.space, self.rng)

    def _time(self, key: tuple, images: int, step: Callable[[], None]) -> float:
        if key not in self._cache:
            if self.device.type == "cuda":
                step()  # untimed: allocation, cuDNN's choice of algorithms
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            for _ in range(self.steps):
                step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._cache[key] = (time.perf_counter() - start) / (self.steps * images)
        return self._cache[key]

    def classification(self, arch: Arch | None, image_size: int, batch: int, n_classes: int) -> float:
        """Seconds per image of a pretraining step (supernet, or the standalone network ``arch``)."""
        n = self._images(batch)
        net = apply_layout(ShuffleNetBackbone(self.space, arch, num_classes=n_classes).to(self.device), self.device)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(n, 3, image_size, image_size, device=self.device)
        y = torch.randint(n_classes, (n,), device=self.device)

        def step() -> None:
            with autocast(self.amp, self.device):
                loss = F.cross_entropy(net.classify(x, self._path(arch)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return self._time(("classification", arch, image_size, n, n_classes), n, step)

    def _detector(self, arch: Arch | None, detector: DetectorConfig, n_classes: int):
        det = build_detector(ShuffleNetBackbone(self.space, arch), n_classes, detector).to(self.device)
        return apply_layout(det, self.device)

    def _images_and_targets(self, n: int, detector: DetectorConfig, n_classes: int):
        h, w = detector.min_size, detector.max_size
        images = [torch.rand(3, h, w, device=self.device) for _ in range(n)]
        corners = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.3, 0.2, 0.9, 0.6], [0.5, 0.5, 0.7, 0.9]])
        boxes = corners * torch.tensor([w, h, w, h])
        targets = [{"boxes": boxes.to(self.device), "labels": torch.tensor([1, 1, n_classes]).to(self.device)}
                   for _ in range(n)]
        return images, targets

    def detection(self, arch: Arch | None, detector: DetectorConfig, batch: int, n_classes: int) -> float:
        """Seconds per image of a detection training step."""
        n = self._images(batch)
        det = self._detector(arch, detector, n_classes).train()
        opt = torch.optim.SGD(det.parameters(), lr=1e-4, momentum=0.9)
        images, targets = self._images_and_targets(n, detector, n_classes)

        def step() -> None:
            set_path(det, self._path(arch))
            with autocast(self.amp, self.device):
                loss = sum(det(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()

        return self._time(("detection", arch, detector, n, n_classes), n, step)

    def inference(self, detector: DetectorConfig, batch: int, n_classes: int) -> float:
        """Seconds per image of the supernet detector's forward pass on a random path (a search's
        recalibration and scoring passes each cost about one)."""
        n = self._images(batch)
        det = self._detector(None, detector, n_classes).eval()
        images, _ = self._images_and_targets(n, detector, n_classes)

        def step() -> None:
            set_path(det, self._path(None))
            with torch.no_grad(), autocast(self.amp, self.device):
                det(images)

        return self._time(("inference", detector, n, n_classes), n, step)
