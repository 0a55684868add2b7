"""Supernet overhead: a path-wise training step on the supernet vs the same step on the extracted
standalone network (same path, same batch, same optimizer settings), timed in one run, interleaved
and repeated; the ratio of the medians is the overhead of training through the supernet.

Both steps run ``detnas.stages.train.train_step`` (forward, backward, gradient all-reduce, SGD with momentum
and weight decay), i.e. the code of the training loop. Workloads follow the demo: classification at
32px with batch 64 (pretraining), FPN Faster R-CNN at 128px with batch 8 (finetuning).

    .venv/bin/python benchmarks/supernet_overhead.py [--reps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from detnas.config.schema import SamplingConfig
from detnas.model.detector import DetectorConfig, build_detector, extract_detector, set_path
from detnas.model.flops import arch_cost
from detnas.model.space import arch_to_str, get_space
from detnas.model.supernet import ShuffleNetBackbone
from detnas.stages.train import Job, param_groups, path_for_step, train_step

# the demo's settings (src/detnas/config/packaged/demo.yaml)
DETECTOR = DetectorConfig(kind="fpn", fpn_channels=64, box_head_channels=256, anchor_size=8, min_size=128,
                          max_size=128, box_batch_size_per_image=64)


def make_step(model, loss, batch, arch, weight_decay):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(param_groups(model, weight_decay), lr=1e-4, momentum=0.9)
    job = Job("bench", model, None, None, loss, lambda s: arch, lambda m: {})

    def step():
        torch.manual_seed(0)  # the same RoI/anchor sampling in both networks
        train_step(model, job, batch, arch, torch.device("cpu"), params, optimizer, None)

    def optimizer_only():
        """What the supernet adds: SGD and zero_grad walk every parameter, on the path or not."""
        grads = [(p, p.grad) for p in params if p.grad is not None]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for p, g in grads:
            p.grad = g
        optimizer.step()
        return time.perf_counter() - t0, len(params), len(grads)

    step.optimizer_only = optimizer_only
    return step


def interleaved(steps: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for f in steps.values():
            f()
    times = {k: [] for k in steps}
    names = list(steps)
    for i in range(reps):
        for name in names if i % 2 == 0 else names[::-1]:  # alternate the order: no position bias
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def classification_case(space, arch, control=False):
    torch.manual_seed(1)
    supernet = ShuffleNetBackbone(space, num_classes=10)
    subnet = supernet.subnet(arch)
    if control:  # A/A: two copies of the standalone network, to see the noise floor
        supernet = supernet.subnet(arch)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def loss(model, batch, arch, device):
        return F.cross_entropy(model.classify(batch[0], arch), batch[1], label_smoothing=0.1), len(batch[1])

    return make_step(supernet, loss, (x, y), arch, 4e-5), make_step(subnet, loss, (x, y), arch, 4e-5)


def detection_case(space, arch, control=False):
    torch.manual_seed(1)
    supernet = build_detector(ShuffleNetBackbone(space), 10, DETECTOR)
    subnet = extract_detector(supernet, arch, 10, DETECTOR)
    if control:  # A/A: two copies of the standalone network, to see the noise floor
        supernet = extract_detector(supernet, arch, 10, DETECTOR)
    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(8):
        images.append(torch.rand(3, 128, 128))
        xy = rng.uniform(0, 90, (3, 2))
        wh = rng.uniform(14, 38, (3, 2))
        targets.append({"boxes": torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32),
                        "labels": torch.tensor(rng.integers(1, 11, 3))})

    def loss(model, batch, arch, device):
        set_path(model, arch)
        losses = model(*batch)
        return sum(losses.values()), len(batch[0])

    batch = (images, targets)
    return make_step(supernet, loss, batch, arch, 1e-4), make_step(subnet, loss, batch, arch, 1e-4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared machine)")
    ap.add_argument("--paths", type=int, default=2, help="sampled paths per workload")
    ap.add_argument("--control", type=int, default=1, choices=(0, 1),
                    help="also time the standalone network against a copy of itself (the noise floor)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    space = get_space("small")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.reps} interleaved repetitions, median times")
    print()
    print("| workload | path | body MACs | supernet step | standalone step | overhead (ratio of medians) "
          "| median of paired ratios |")
    print("|---|---|---|---|---|---|---|")
    parts = []
    for name, case in (("classification 32px, batch 64", classification_case),
                       ("FPN Faster R-CNN 128px, batch 8", detection_case)):
        for k in range(args.paths + args.control):
            control = k == args.paths
            arch = path_for_step(space, 0, 0 if control else k, SamplingConfig())
            sup, sub = case(space, arch, control)
            t = interleaved({"supernet": sup, "standalone": sub}, args.reps, args.warmup)
            ms = {key: statistics.median(v) * 1e3 for key, v in t.items()}
            paired = statistics.median(a / b for a, b in zip(t["supernet"], t["standalone"]))
            label = f"{name}, control: standalone vs a copy" if control else name
            print(f"| {label} | {arch_to_str(arch)} | {arch_cost(space, arch).body_flops / 1e6:.0f}M "
                  f"| {ms['supernet']:.1f} ms | {ms['standalone']:.1f} ms | {ms['supernet'] / ms['standalone']:.3f} "
                  f"| {paired:.3f} |", flush=True)
            if k == 0:
                opt = {}
                for key, f in (("supernet", sup), ("standalone", sub)):
                    runs = [f.optimizer_only() for _ in range(50)]
                    opt[key] = (statistics.median(r[0] for r in runs) * 1e3, runs[0][1], runs[0][2])
                parts.append((name, opt, ms))
    print()
    print("Where a supernet step could lose time: zero_grad + SGD step walk all parameters (off-path ones "
          "have no gradient and are skipped).")
    print()
    print("| workload | parameters (with gradient) supernet / standalone | zero_grad + SGD step supernet "
          "| standalone | difference, share of a standalone step |")
    print("|---|---|---|---|---|")
    for name, opt, ms in parts:
        (ts, ns, gs), (tb, nb, gb) = opt["supernet"], opt["standalone"]
        print(f"| {name} | {ns} ({gs}) / {nb} ({gb}) | {ts:.2f} ms | {tb:.2f} ms "
              f"| {ts - tb:.2f} ms, {(ts - tb) / ms['standalone'] * 100:.2f}% |")


if __name__ == "__main__":
    main()
