"""Demo supernet finetuning: training throughput (images/s) and peak memory (max RSS).

Runs the real training loop (``detnas.stages.train.run_training`` on ``stages.finetune_job``) with the demo's
detector and finetuning settings (Small space, FPN Faster R-CNN, 128px, batch 8; read from the
packaged demo config) on demo data built with fewer images (same image size), for a few dozen steps.
Throughput is taken from the training log, after the first window (start-up excluded).

    .venv/bin/python benchmarks/finetune_throughput.py [--iters 40] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import SOURCE, demo_finetune, demo_settings
from detnas.config.runs import LOG_FILE
from detnas.data.demo import build_demo_data
from detnas.stages.jobs import finetune_job
from detnas.stages.train import run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--images", type=int, default=120, help="demo detection training images to build")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (default: a temporary one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "demo"
        t0 = time.perf_counter()
        paths = build_demo_data(root, seed=0, cls_train=1000, cls_val=10, det_train=args.images, det_val=2,
                                det_test=2)  # image_size and digit sizes: the demo's defaults
        build_s = time.perf_counter() - t0
        demo = demo_settings(paths)
        train = demo.finetune.model_dump(exclude={"iters", "milestones", "decay"})
        data = demo.detection.model_dump(exclude={"holdout", "test"})  # every image trains
        cfg = demo_finetune(demo, data=data, train={**train, "iters": args.iters},
                            eval={"archs": ["0" * 20], "recalib_images": 8, "batch_size": 8})
        job = finetune_job(cfg, Path(tmp) / "run")
        t1 = time.perf_counter()
        run_training(job, cfg.train, cfg.seed, Path(tmp) / "run", False, workers=cfg.data.workers,
                     log_every=args.log_every, checkpoint_every=10**9, progress=False)
        total_s = time.perf_counter() - t1
        log = [json.loads(line) for line in (Path(tmp) / "run" / LOG_FILE).read_text().splitlines()]
    windows = [r["images_per_s"] for r in log if "step" in r][1:]  # the first window holds the start-up
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"settings: {SOURCE}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"demo data: {args.images} detection images at 128px built in {build_s:.1f} s")
    print()
    print("| space | detector | input | batch | steps | images/s (median of windows) | min - max | "
          "peak RSS | wall (train + final eval) |")
    print("|---|---|---|---|---|---|---|---|---|")
    det = cfg.detector
    print(f"| {cfg.space} | {det.kind} | {det.min_size}-{det.max_size}px | {cfg.train.batch_size} | {args.iters} "
          f"| {statistics.median(windows):.1f} | {min(windows):.1f} - {max(windows):.1f} | {peak_gb:.2f} GiB "
          f"| {total_s:.0f} s |")


if __name__ == "__main__":
    main()
