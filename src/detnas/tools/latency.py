"""Measuring latency tables (``detnas latency``): every choice block at every position timed inside
whole forward passes, the fixed parts, and end-to-end timings of one architecture to check a table's
prediction (``benchmarks/latency_prediction.py``). The table itself is ``detnas.model.latency_table``.
"""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from detnas.config.loader import load_config
from detnas.errors import UserError
from detnas.model.detector import DetectorConfig, build_detector
from detnas.model.latency_table import LatencyTable
from detnas.model.space import NUM_CHOICES, Arch, SearchSpace
from detnas.model.supernet import ShuffleNetBackbone

CLOCKS = {
    "wall": time.perf_counter,
    # CPU time of this thread: with one thread on the CPU, the latency the computation itself takes,
    # without the time other processes held the core (what a shared machine adds to the wall time)
    "cpu": time.thread_time,
}


def check_clock(clock: str, device: str, threads: int | None) -> None:
    if clock not in CLOCKS:
        raise UserError(f"--clock must be wall or cpu, got {clock!r}")
    if clock == "cpu" and (device != "cpu" or threads != 1):
        raise UserError("--clock cpu measures one thread's CPU time: it needs --device cpu and --threads 1")


class Timer:
    """The fastest of ``reps`` timed runs of a callable in ms, after warm-up runs, with the device
    synchronised (why the minimum: see ``measure_table``)."""

    def __init__(self, device: torch.device, warmup: int = 5, reps: int = 20, clock: str = "wall"):
        self.device, self.warmup, self.reps, self.now = device, warmup, reps, CLOCKS[clock]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            self.sync()
            t0 = self.now()
            fn()
            self.sync()
            times.append(self.now() - t0)
        return 1e3 * min(times)


class _Marks:
    """Time stamps between the parts of one forward pass, without synchronising in between (CUDA
    events on a GPU): the parts run as they do inside the whole network."""

    def __init__(self, device: torch.device, clock: str = "wall"):
        self.cuda, self.now = device.type == "cuda", CLOCKS[clock]
        self.stamps: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.stamps.append(event)
        else:
            self.stamps.append(self.now())

    def spans_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.stamps, self.stamps[1:])]
        return [1e3 * (b - a) for a, b in zip(self.stamps, self.stamps[1:])]


class _Features(nn.Module):
    """Stands in for a detector's backbone: returns the features it is given, so that timing the
    detector measures its transform, heads and post-processing only."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.features, self.out_channels = None, out_channels

    def forward(self, _x):
        return self.features


def detector_at(cfg, size: tuple[int, int]):
    """``cfg`` (a ``DetectorConfig``) with its resize set to leave images of ``size`` as they are."""
    return cfg.model_copy(update={"min_size": min(size), "max_size": max(size)})


def _timed_pass(supernet, backbone, detector, x: torch.Tensor, arch: Arch, device: torch.device,
                clock: str = "wall") -> list[float]:
    """One forward pass of ``arch`` (through the detector's FPN and heads when there is a detector),
    timed part by part: [stem, block 0, ..., block n-1(, fpn, heads)] in ms."""
    marks = _Marks(device, clock)
    feats = OrderedDict()
    marks.mark()
    h = supernet.stem(x)
    marks.mark()
    for i, choice in enumerate(arch):
        h = supernet.blocks[i][choice](h)
        marks.mark()
        if i in supernet._stage_ends:
            feats[supernet._stage_ends[i]] = h
    if detector is not None:
        pyramid = backbone.fpn(OrderedDict((f"p{f[1]}", feats[f]) for f in backbone.in_features))
        marks.mark()
        detector.backbone.features = pyramid
        detector(list(x))
        marks.mark()
    return marks.spans_ms()


def measure_table(space: SearchSpace, size: tuple[int, int], batch: int = 1, device: str = "cpu",
                  threads: int | None = None, detector_cfg=None, num_classes: int = 80, warmup: int = 5,
                  reps: int = 20, seed: int = 0, clock: str = "wall") -> LatencyTable:
    """Measure every (position, choice) block and the fixed parts (stem; with ``detector_cfg``, a
    ``DetectorConfig`` whose resize is set to keep ``size``, the FPN and the heads with their
    transform and post-processing) on random weights and inputs.

    Blocks are timed inside whole forward passes, not alone: alone, a block finds its weights and
    input in the cache and looks several times faster than in the network. Each repetition draws a
    random architecture r and runs the four architectures (r + c) mod 4, which together hold every
    choice at every position, in mixed neighbourhoods. An entry is the minimum over repetitions: the
    run least disturbed by other processes; on a dedicated device it is close to the median. (On a
    shared machine a preemption lands in a long end-to-end pass far more often than in a short block,
    so medians or means of the two see the load differently.) ``clock="cpu"`` (one thread on the CPU)
    times the thread's CPU time instead of the wall time: on a machine shared with other processes,
    the only figure that does not depend on their load."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    supernet = ShuffleNetBackbone(space).eval().to(dev)
    x = torch.rand(batch, 3, *size, device=dev)
    detector = backbone = None
    if detector_cfg is not None:
        body = ShuffleNetBackbone(space, space.baseline)
        detector = build_detector(body, num_classes, detector_at(detector_cfg, size)).eval().to(dev)
        backbone = detector.backbone
        detector.backbone = _Features(backbone.out_channels)
    n = space.num_blocks
    samples = []  # per repetition and shift c: the spans of one pass
    with torch.inference_mode():
        for rep in range(warmup + reps):
            r = rng.integers(0, NUM_CHOICES, n)
            passes = [_timed_pass(supernet, backbone, detector, x, tuple(int(v) for v in (r + c) % NUM_CHOICES), dev,
                                  clock) for c in range(NUM_CHOICES)]
            if rep >= warmup:
                samples.append((r, passes))
    blocks = np.zeros((n, NUM_CHOICES))
    for i in range(n):
        for choice in range(NUM_CHOICES):
            # the pass with shift c puts choice (r_i + c) mod 4 at position i
            blocks[i, choice] = min(
                passes[(choice - int(r[i])) % NUM_CHOICES][1 + i] for r, passes in samples)
    every = [p for _, passes in samples for p in passes]
    fixed = {"stem": min(p[0] for p in every)}
    if detector is not None:
        fixed["fpn"] = min(p[n + 1] for p in every)
        fixed["heads"] = min(p[n + 2] for p in every)
    meta = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "machine": platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "warmup": warmup, "reps": reps,
        "statistic": "min", "clock": clock, "num_classes": num_classes,
        "detector": None if detector_cfg is None else detector_at(detector_cfg, size).model_dump(mode="json"),
    }
    return LatencyTable(space.name, space.width_mult, tuple(size), batch, blocks, fixed, meta)


def parse_size(text: str) -> tuple[int, int]:
    """``"320"`` or ``"320x480"`` (height x width) as (height, width)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        h = w = 0
    if h < 32 or w < 32:
        raise UserError(f"--input-size must be H or HxW with sides of at least 32 pixels, got {text!r}")
    return h, w


class _DetectorSection(BaseModel):
    """Any stage config, read only for its ``detector`` section."""

    model_config = ConfigDict(extra="ignore")
    detector: DetectorConfig | None = None


def detector_of_config(path: Path | None, kind: str):
    """The ``detector`` section of a stage config (pipeline, finetune, retrain) or the defaults, of
    ``kind`` unless the config sets one."""
    detector = None if path is None else load_config(path, _DetectorSection).detector
    return DetectorConfig(kind=kind) if detector is None else detector


def measure_arch(space: SearchSpace, arch: Arch, size: tuple[int, int], batch: int = 1, device: str = "cpu",
                 detector_cfg=None, num_classes: int = 80, warmup: int = 5, reps: int = 20,
                 clock: str = "wall") -> dict[str, float]:
    """End-to-end latency (the minimum over repetitions, as in the table) (ms) of ``arch``'s standalone backbone and, with ``detector_cfg``, of its
    whole detector, on random weights: what a latency table predicts."""
    dev = torch.device(device)
    timer = Timer(dev, warmup, reps, clock)
    torch.manual_seed(0)
    x = torch.rand(batch, 3, *size, device=dev)
    body = ShuffleNetBackbone(space, arch).eval().to(dev)
    out = {"backbone": timer(lambda: body(x))}
    if detector_cfg is not None:
        detector = build_detector(body, num_classes, detector_at(detector_cfg, size)).eval().to(dev)
        images = list(x)
        out["detector"] = timer(lambda: detector(images))
    return out
