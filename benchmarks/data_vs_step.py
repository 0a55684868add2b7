"""Which one limits finetuning at the paper's input size: the data pipeline or the training step?

Prints the images/s of the data pipeline alone (the training loop's own loader, ``train.batches_from``:
decoding COCO-sized 640x480 JPEGs, resizing them to 800x1333 and flipping, at 0 and N workers) next to
the images/s of the training step alone (``train.train_step`` on batches already loaded: FPN Faster
R-CNN with the paper's settings around the Small supernet, a sampled path per step, batch 2 per
worker, with each AMP setting), on this machine's device (CUDA if there is one, else the CPU).
Each part runs alone; when both run together on a CPU, the workers and the step also share the cores.

    .venv/bin/python benchmarks/data_vs_step.py [--workers N] [--steps 3] [--amp off,bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import PAPER_DETECTOR, synthetic_coco
from detnas.config.schema import FinetuneConfig
from detnas.data.loading import data_workers
from detnas.distributed import init_distributed
from detnas.model.amp import grad_scaler
from detnas.stages.jobs import finetune_job
from detnas.stages.train import batches_from, param_groups, train_step


def data_rate(job, cfg, workers: int, batches: int, device) -> float:
    """Images/s of the loader, after its first batch (worker start-up excluded)."""
    loader = batches_from(job, cfg.train, cfg.seed, workers, 0, 1, 0, device)
    next(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        images, _ = next(loader)
    elapsed = time.perf_counter() - t0
    del loader
    return batches * cfg.train.batch_size / elapsed


def step_rate(job, cfg, batch, amp: str, steps: int, device) -> tuple[float, float]:
    """(images/s, seconds per step): median over ``steps`` after one warm-up step."""
    model = job.model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=1e-4, momentum=0.9)
    scaler = grad_scaler(amp, device)
    times = []
    for step in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, job, batch, job.arch_for_step(step), device, params, optimizer, None, amp, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    return cfg.train.batch_size / seconds, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=None, help="data workers besides 0 (default: data.workers auto)")
    ap.add_argument("--batches", type=int, default=16, help="batches timed for the data pipeline")
    ap.add_argument("--steps", type=int, default=3, help="training steps timed per AMP setting")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--amp", default="off,bf16", help="comma-separated AMP settings to time")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers if args.workers is not None else max(1, data_workers("auto"))
    device = init_distributed().device
    with tempfile.TemporaryDirectory() as tmp:
        n_images = (args.batches + 2) * args.batch_size
        ann, images = synthetic_coco(Path(tmp), n_images)
        cfg = FinetuneConfig.model_validate({
            "data": {"train": {"format": "coco", "annotations": str(ann), "images": str(images)}},
            "detector": PAPER_DETECTOR,
            "train": {"iters": 1000, "batch_size": args.batch_size, "lr": 0.02},
        })
        job = finetune_job(cfg, Path(tmp) / "run")
        data = {w: data_rate(job, cfg, w, args.batches, device) for w in (0, workers)}
        batch = next(batches_from(job, cfg.train, cfg.seed, 0, 0, 1, 0))
        steps = {amp: step_rate(job, cfg, batch, amp, args.steps, device) for amp in args.amp.split(",")}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)")
    print(f"input: 640x480 JPEGs resized to {cfg.detector.min_size}x{cfg.detector.max_size} "
          f"(800x1067), batch {args.batch_size}; detector: paper FPN Faster R-CNN, Small supernet, 80 classes")
    print()
    print("| part | setting | images/s |")
    print("|---|---|---|")
    for w, rate in data.items():
        setting = "0 workers (main process)" if w == 0 else f"{w} worker{'s' if w > 1 else ''}"
        print(f"| data pipeline alone | {setting} | {rate:.1f} |")
    for amp, (rate, seconds) in steps.items():
        print(f"| training step alone | amp {amp} ({seconds:.2f} s/step) | {rate:.2f} |")
    best_step = max(rate for rate, _ in steps.values())
    best_data = max(data.values())
    limit = "the training step" if best_step < best_data else "the data pipeline"
    fastest = max(data, key=data.get)
    print()
    print(f"{limit} limits: data {best_data:.1f} images/s ({fastest} worker{'' if fastest == 1 else 's'}) vs step "
          f"{best_step:.2f} images/s (ratio data/step {best_data / best_step:.1f})")


if __name__ == "__main__":
    main()
