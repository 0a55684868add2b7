"""What a distributed CPU training step costs over gloo: one collective's latency, and the demo's supernet
pretraining step on 2 workers (torchrun's environment, gloo, ``SyncBatchNorm2d``, ``train.train_step``)
against the same per-worker batch in one process, with the collectives each step makes.

On a 2-core machine a gloo collective between two processes takes far longer than a loopback TCP round
trip (several thread hand-offs per message), so a distributed step's time is mostly its collectives: this
prints how many a step makes and what they cost. Times are medians of ``--reps`` steps (25-75%), after a
warm-up; the paths cycle through ``--paths`` training paths, the same in both runs.

    .venv/bin/python benchmarks/distributed_step.py [--batch 2] [--image-size 32] [--reps 20]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as under `detnas` (cli/__init__.py)

import argparse
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _common import demo_pretrain_batch, demo_settings, quartiles, training_paths
from detnas.distributed import cleanup_distributed, convert_sync_batchnorm, init_distributed
from detnas.model.layout import apply_layout
from detnas.stages.train import param_groups, train_step

WORLD = 2


def collective_latency(reps: int) -> dict[str, list[float]]:
    """Seconds per all_reduce and per all_gather of a BN's worth of statistics (129 floats)."""
    t = torch.randn(129)
    out = [torch.empty_like(t) for _ in range(WORLD)]
    ops = {"all_reduce": lambda: dist.all_reduce(t), "all_gather": lambda: dist.all_gather(out, t)}
    times = {}
    for name, op in ops.items():
        for _ in range(20):
            op()
        dist.barrier()
        times[name] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - t0)
    return times


def collectives(run) -> int:
    """The gloo collectives that ``run()`` makes, as torch's profiler records them (the functional
    collectives' too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.name.startswith("gloo:") for e in prof.events())


def step_times(args) -> tuple[list[float], int]:
    """Seconds per training step of this process (distributed if a group is up), and the collectives
    of one step."""
    cfg, job, batch = demo_pretrain_batch(demo_settings(), args.image_size, args.batch)
    model = convert_sync_batchnorm(apply_layout(job.model), "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: the weights stay at their initialisation, so no repetition can diverge (2 images per worker
    # give BN 4 values per channel on the last stage's 1x1 maps, and gradients of 1e8-1e12); a step
    # costs the same whatever the values
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.0, momentum=0.9)
    archs = training_paths(model.space, cfg.seed, cfg.grow_iters, cfg.sampling, args.paths)
    device = torch.device("cpu")
    for arch in archs:  # warm-up: every path once
        train_step(model, job, batch, arch, device, params, optimizer, None)
    count = collectives(lambda: train_step(model, job, batch, archs[0], device, params, optimizer, None))
    times = []
    for i in range(args.reps):
        t0 = time.perf_counter()
        train_step(model, job, batch, archs[i % len(archs)], device, params, optimizer, None)
        times.append(time.perf_counter() - t0)
    return times, count


def worker(rank: int, port: int, args, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    init_distributed()
    latency = collective_latency(args.reps * 10)
    times, count = step_times(args)
    if rank == 0:
        results.update(latency=latency, times=times, count=count)
    cleanup_distributed()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2, help="images per worker and step (the tests' torchrun runs: 2)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--paths", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, (port, args, results), nprocs=WORLD)
        results = dict(results)
    torch.set_num_threads(args.threads)
    alone, _ = step_times(args)

    print(f"torch {torch.__version__}, {WORLD} workers over gloo, {args.threads} thread(s) each; demo pretraining "
          f"at {args.image_size} px, {args.batch} images per worker and step\n")
    print("| measured | median | 25-75% |\n|---|---:|---|")
    for name, times in results["latency"].items():
        lo, med, hi = (1e6 * v for v in quartiles(times))
        print(f"| one {name} of 129 floats (us) | {med:.0f} | {lo:.0f}-{hi:.0f} |")
    for name, times in (("step, 2 workers", results["times"]), ("step, one process", alone)):
        lo, med, hi = (1e3 * v for v in quartiles(times))
        print(f"| {name} (ms) | {med:.1f} | {lo:.1f}-{hi:.1f} |")
    print(f"\ncollectives per step: {results['count']}; 2 workers / one process: "
          f"{statistics.median(results['times']) / statistics.median(alone):.1f}x")


if __name__ == "__main__":
    main()
