"""``LeanConv2d`` (model/conv.py) against torch's ``nn.Conv2d``, layer by layer, on the shapes of the demo's
workloads: forward + backward (training) and forward alone (no_grad), channels-last, float32. The
per-layer evidence for its rules (a 1x1 conv as a matrix product up to 4096 pixels a batch in training,
kernel taps cut to the map, the depthwise weight gradient as one convolution for 5x5/7x7 kernels at
stride 1 or 2).

Each shape runs both modules (the same weights) alternately; times are medians over repetitions, the
ratio the median of the paired ratios (torch's time / LeanConv2d's) with its 25-75% range.

    .venv/bin/python benchmarks/conv_kernels.py [--threads 1] [--reps 40]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as under `detnas` (cli/__init__.py)

import argparse
import statistics
import time

import torch
from torch import nn

from _common import quartiles
from detnas.model.conv import LeanConv2d

# (batch, in channels, map side, out channels, kernel, stride, depthwise): where the demo runs them
SHAPES = {
    "32 px pretraining, batch 64": [
        (64, 640, 1, 1024, 1, 1, False), (64, 320, 1, 320, 1, 1, False), (64, 160, 2, 160, 1, 1, False),
        (64, 32, 8, 32, 1, 1, False), (64, 320, 1, 320, 7, 1, True), (64, 160, 2, 160, 7, 1, True),
        (64, 160, 2, 160, 3, 1, True), (64, 80, 4, 80, 7, 1, True), (64, 32, 8, 32, 7, 1, True),
        (64, 32, 8, 32, 5, 1, True), (64, 32, 8, 32, 3, 1, True), (64, 160, 4, 160, 7, 2, True),
        (64, 64, 8, 64, 5, 2, True), (64, 32, 16, 32, 7, 2, True), (64, 160, 4, 160, 3, 2, True),
    ],
    "128 px detection, batch 8": [
        (8, 32, 32, 32, 1, 1, False), (8, 80, 16, 80, 1, 1, False), (8, 320, 4, 320, 1, 1, False),
        (8, 32, 32, 32, 7, 1, True), (8, 80, 16, 80, 5, 1, True), (8, 160, 8, 160, 7, 1, True),
        (8, 160, 8, 160, 3, 1, True), (8, 32, 64, 32, 7, 2, True), (8, 320, 8, 320, 7, 2, True),
    ],
}


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(shape, reps: int, train: bool) -> tuple[float, float, tuple[float, float, float]]:
    n, c, side, out, k, s, dw = shape
    torch.manual_seed(0)
    lean = LeanConv2d(c, out, k, s, k // 2, groups=c if dw else 1, bias=False)
    plain = nn.Conv2d(c, out, k, s, k // 2, groups=c if dw else 1, bias=False)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(n, c, side, side).contiguous(memory_format=torch.channels_last).requires_grad_(train)

    def run(conv):
        if not train:
            with torch.no_grad():
                return lambda: conv(x)
        return lambda: conv(x).square().sum().backward()
    runs = {"torch": run(plain), "lean": run(lean)}
    for f in runs.values():
        f(), f()
    times = {"torch": [], "lean": []}
    for i in range(reps):
        for name in ("torch", "lean") if i % 2 == 0 else ("lean", "torch"):
            times[name].append(_time(runs[name]))
    ratios = [a / b for a, b in zip(times["torch"], times["lean"])]
    return statistics.median(times["torch"]), statistics.median(times["lean"]), quartiles(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), channels-last float32, "
          f"{args.reps} reps\n")
    print("| workload | layer (batch x channels x side -> out, kernel, stride) | pass | torch (ms) | LeanConv2d (ms) "
          "| speed-up: median (25-75%) |")
    print("|---|---|---|---:|---:|---|")
    for workload, shapes in SHAPES.items():
        for shape in shapes:
            n, c, side, out, k, s, dw = shape
            layer = f"{n}x{c}x{side}x{side} -> {out}, {'depthwise ' if dw else ''}{k}x{k}, stride {s}"
            for train in (True, False):
                a, b, (q1, q2, q3) = compare(shape, args.reps, train)
                print(f"| {workload} | {layer} | {'fwd+bwd' if train else 'fwd'} | {a * 1e3:.3f} | {b * 1e3:.3f} "
                      f"| {q2:.2f}x ({q1:.2f}-{q3:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
