"""Is a latency table's prediction (the sum of an architecture's blocks and the fixed parts) right?

Measures a table (``latency.measure_table``, as ``detnas latency`` does) at the demo detector's input
size, then the end-to-end latency of random architectures (each drawn with its own random
probabilities of the four choices, so that they span the space from mostly-cheap to
mostly-expensive rather than all sitting at its average): their standalone backbone and their whole
FPN Faster R-CNN (``latency.measure_arch``), each on random weights. Prints, for the backbone and the
detector, the mean absolute % error of the prediction and the Spearman rank correlation between
predicted and measured latency, next to what a table of blocks timed alone (each block on its own
input, repeated) would predict.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency_prediction.py [--archs 20] [--rounds 3] [--clock cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from _common import demo_settings
from detnas.model.latency_table import LatencyTable
from detnas.model.space import NUM_CHOICES, get_space
from detnas.model.supernet import ShuffleNetBackbone
from detnas.tools.latency import Timer, check_clock, measure_arch, measure_table, parse_size


def isolated_blocks(space, size, batch, device, warmup, reps, clock) -> tuple[np.ndarray, float]:
    """Each block timed alone on its input, many times in a row: the naive table (and the stem)."""
    dev = torch.device(device)
    timer = Timer(dev, warmup, reps, clock)
    supernet = ShuffleNetBackbone(space).eval().to(dev)
    x = torch.rand(batch, 3, *size, device=dev)
    with torch.inference_mode():
        inputs = [supernet.stem(x)]
        for i in range(space.num_blocks - 1):
            inputs.append(supernet.blocks[i][0](inputs[-1]))
    out = np.zeros((space.num_blocks, NUM_CHOICES))
    for i, choices in enumerate(supernet.blocks):
        for c, block in enumerate(choices):
            out[i, c] = timer(lambda: block(inputs[i]))
    return out, timer(lambda: supernet.stem(x))


def report(name: str, predicted: list[float], measured: list[float]) -> None:
    p, m = np.array(predicted), np.array(measured)
    mape = 100 * np.mean(np.abs(p - m) / m)
    print(f"| {name} | {m.mean():.2f} ({m.min():.2f}-{m.max():.2f}) | {p.mean():.2f} | {mape:.1f}% "
          f"| {spearmanr(p, m).statistic:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--input-size", default=None, help="H or HxW (default: the demo detector's min_size)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", default="wall", help="wall, or cpu (thread CPU time; needs --threads 1)")
    ap.add_argument("--rounds", type=int, default=3, help="measure everything this many times, keep the minima")
    args = ap.parse_args()

    check_clock(args.clock, args.device, args.threads)
    torch.set_num_threads(args.threads)
    demo = demo_settings()
    space = get_space(demo.space, demo.width_mult)
    size = parse_size(args.input_size or str(demo.detector.min_size))
    classes = 10  # the demo's digits
    rng = np.random.default_rng(args.seed)
    archs = [tuple(int(v) for v in rng.choice(NUM_CHOICES, space.num_blocks, p=rng.dirichlet(np.ones(NUM_CHOICES))))
             for _ in range(args.archs)]
    # Rounds, each measuring the table and every architecture, and the minimum of each number over
    # the rounds: the load of a shared machine changes over seconds, and a round that met a quiet
    # moment gives every number the same conditions.
    tables, naives, measured = [], [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        tables.append(measure_table(space, size, args.batch, args.device, args.threads, demo.detector, classes,
                                    args.warmup, args.reps, seed=r, clock=args.clock))
        naives.append(isolated_blocks(space, size, args.batch, args.device, args.warmup, args.reps, args.clock))
        measured.append([measure_arch(space, a, size, args.batch, args.device, demo.detector, classes, args.warmup,
                                      args.reps, args.clock) for a in archs])
        print(f"round {r + 1}/{args.rounds}: {time.perf_counter() - t0:.1f} s", flush=True)
    table = LatencyTable(space.name, space.width_mult, size, args.batch, np.minimum.reduce([t.blocks for t in tables]),
                         {k: min(t.fixed[k] for t in tables) for k in tables[0].fixed}, tables[0].meta)
    naive = np.minimum.reduce([n[0] for n in naives])
    naive_stem = min(n[1] for n in naives)
    print("fixed parts (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in table.fixed.items()))
    rows = []
    for k, arch in enumerate(archs):
        m = {part: min(round_[k][part] for round_ in measured) for part in ("backbone", "detector")}
        naive_ms = naive_stem + naive[np.arange(len(arch)), list(arch)].sum()
        rows.append((arch, table.backbone_ms(arch), table.predict_ms(arch), naive_ms, m["backbone"], m["detector"]))
        print(f"{k:2d} {''.join(map(str, arch))}  backbone predicted {rows[-1][1]:6.2f} measured {m['backbone']:6.2f}"
              f"  detector predicted {rows[-1][2]:6.2f} measured {m['detector']:6.2f}", flush=True)
    print()
    print(f"{args.archs} random architectures of the {space.describe()} space, input {size[0]}x{size[1]} x{args.batch}, "
          f"{args.device}, {torch.get_num_threads()} thread(s), {args.clock} clock, torch {torch.__version__}; each the fastest "
          f"of {args.reps} repetitions after {args.warmup} warm-up, in {args.rounds} rounds")
    print()
    print("| latency (ms) | measured: mean over archs (range) | predicted mean | mean abs error | Spearman rho |")
    print("|---|---:|---:|---:|---:|")
    report("backbone, table (blocks timed inside passes)", [r[1] for r in rows], [r[4] for r in rows])
    report("backbone, blocks timed alone", [r[3] for r in rows], [r[4] for r in rows])
    report("whole detector, table", [r[2] for r in rows], [r[5] for r in rows])


if __name__ == "__main__":
    main()
