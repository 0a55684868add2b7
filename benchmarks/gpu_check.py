"""One GPU check in a few minutes: what only a CUDA machine shows, printed as one table.

1. A few supernet finetuning steps under ``torchrun --nproc_per_node 1`` (NCCL, torch's SyncBatchNorm),
   run twice and once killed and resumed: how far the resumed run's weights are from an uninterrupted
   one, next to how far two uninterrupted runs are apart (CUDA kernels are not bit-deterministic).
2. A training step of the supernet detector at 800x1333, batch 2, the paper's FPN sizes: step time and
   peak GPU memory with amp off and bf16 (fp16 too, with its gradient scaler).
3. The search's candidates per minute on a 200-image search split (BN recalibration on 64 images).

Data: synthetic COCO images (textured noise with filled boxes of two classes), made in ``--work``.

    python benchmarks/gpu_check.py                 # on a CUDA machine
    python benchmarks/gpu_check.py --smoke         # tiny sizes, any device: checks that the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from detnas.checkpoint import load_checkpoint
from detnas.config.runs import CHECKPOINT, FINETUNE
from detnas.config.schema import FinetuneConfig, FitnessConfig


def make_coco(root: Path, n: int, height: int, width: int, seed: int = 0) -> Path:
    """``n`` JPEGs with 1-4 filled boxes of 2 classes on smoothed noise, and their COCO file."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for i in range(1, n + 1):
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)).copy()
        for _ in range(rng.integers(1, 5)):
            h, w = (int(v) for v in rng.integers(height // 10, height // 3, 2))
            y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
            label = int(rng.integers(1, 3))
            image[y:y + h, x:x + w] = (255, 40, 40) if label == 1 else (40, 40, 255)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": label,
                                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(image).save(root / "images" / f"{i:05d}.jpg", quality=90)
        coco["images"].append({"id": i, "file_name": f"{i:05d}.jpg", "width": width, "height": height})
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path


def finetune_config(work: Path, args, iters: int) -> dict:
    source = {"format": "coco", "annotations": str(work / "data" / "train.json"), "images": str(work / "data" / "images")}
    return {
        "data": {"train": source, "holdout": {"size": args.split}, "workers": 2},
        "detector": {"fpn_channels": args.fpn, "box_head_channels": args.box_head, "anchor_size": 32,
                     "min_size": args.height, "max_size": args.width},
        "train": {"iters": iters, "batch_size": 2, "lr": 0.02, "warmup_iters": 2, "grad_clip": 10.0},
        "amp": "auto", "eval": {"archs": ["0" * 20], "recalib_images": 8, "batch_size": 2},
        "logging": {"log_every": 1, "checkpoint_every": 3, "progress": False},
    }


def torchrun_finetune(work: Path, cfg: dict, out: Path, kill_after_step: int | None = None) -> float:
    """``detnas finetune`` under torchrun with one process; optionally SIGKILLed once a checkpoint of at
    least that step exists, then resumed. Returns the wall time."""
    path = work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "detnas", "finetune", "--config", str(path), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after_step is not None:
        while proc.poll() is None and not _checkpoint_step(out) >= kill_after_step:
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if (out / "metrics.json").exists():
            raise SystemExit("the run finished before it could be killed: raise --iters")
        proc = subprocess.Popen([*command, "--resume"], start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"torchrun finetune failed:\n{err[-3000:]}")
    return time.perf_counter() - start


def _checkpoint_step(out: Path) -> int:
    try:
        return load_checkpoint(out / CHECKPOINT, FINETUNE)["step"]
    except Exception:  # noqa: BLE001 - not written yet, or being written
        return -1


def max_weight_difference(a: Path, b: Path) -> float:
    sa, sb = (load_checkpoint(p / CHECKPOINT, FINETUNE)["model"] for p in (a, b))
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def step_time(cfg: FinetuneConfig, amp: str, device: torch.device, steps: int) -> tuple[float, float]:
    """Median step time (s) and peak memory (GiB; CUDA only) of the supernet detector's training step."""
    from detnas.model.amp import grad_scaler
    from detnas.stages.jobs import finetune_job
    from detnas.stages.train import param_groups, train_step

    job = finetune_job(cfg, Path(tempfile.mkdtemp()))
    model = job.model.to(device)
    groups = param_groups(model, 1e-4)
    optimizer = torch.optim.SGD(groups, lr=0.001, momentum=0.9)
    params = [p for g in groups for p in g["params"]]
    scaler = grad_scaler(amp, device)
    batch = job.collate([job.dataset[i] for i in range(2)])
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(model, job, batch, job.arch_for_step(i), device, params, optimizer, 10.0, amp, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:  # warm-up: cuDNN autotuning, allocator growth
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return float(np.median(times)), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device, to check the script")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "detnas-gpu-check")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine (or --smoke to check the script)")
    args.height, args.width, args.split, images = (96, 128, 8, 24) if args.smoke else (800, 1333, 200, 260)
    args.fpn, args.box_head = (32, 64) if args.smoke else (256, 1024)
    iters, timed = (6, 2) if args.smoke else (24, 10)
    work = args.work
    if not (work / "data" / "train.json").exists():
        make_coco(work / "data", images, args.height, args.width)
    rows = [("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)")]

    cfg = finetune_config(work, args, iters)
    for name in ("a", "b", "resumed"):
        shutil.rmtree(work / name, ignore_errors=True)
    seconds = torchrun_finetune(work, cfg, work / "a")
    rows.append((f"torchrun finetune, {iters} steps, batch 2 ({'NCCL' if device.type == 'cuda' else 'gloo'}, "
                 "SyncBatchNorm) incl. start-up and final evaluation", f"{seconds:.1f} s"))
    torchrun_finetune(work, cfg, work / "b")
    torchrun_finetune(work, cfg, work / "resumed", kill_after_step=3)
    rows.append(("max abs weight difference, two uninterrupted runs", f"{max_weight_difference(work / 'a', work / 'b'):.2e}"))
    rows.append(("max abs weight difference, killed + resumed vs uninterrupted",
                 f"{max_weight_difference(work / 'a', work / 'resumed'):.2e}"))

    fcfg = FinetuneConfig.model_validate({**cfg, "data": {**cfg["data"], "holdout": {"size": 0}, "workers": 0}})
    for amp in ("off", "bf16", "fp16"):
        if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        if amp == "fp16" and device.type != "cuda":
            continue
        t, peak = step_time(fcfg.model_copy(update={"amp": amp}), amp, device, timed)
        rows.append((f"training step {args.height}x{args.width} batch 2, amp {amp}", f"{t * 1000:.0f} ms, peak {peak:.2f} GiB"))

    from detnas.model.flops import sample_arch
    from detnas.model.space import get_space
    from detnas.stages.search import SupernetEvaluator

    evaluator = SupernetEvaluator(work / "a", FitnessConfig(recalib_images=64 if not args.smoke else 8, batch_size=8))
    rng = np.random.default_rng(0)
    archs = [sample_arch(get_space("small"), rng) for _ in range(6 if not args.smoke else 2)]
    evaluator(archs[0])  # warm-up
    start = time.perf_counter()
    for arch in archs[1:]:
        evaluator(arch)
    per = (time.perf_counter() - start) / (len(archs) - 1)
    rows.append((f"search: candidates per minute ({args.split}-image split, recalibration on "
                 f"{evaluator.fitness.recalib_images})", f"{60 / per:.1f}"))

    width = max(len(k) for k, _ in rows)
    print(f"| {'check'.ljust(width)} | result |\n|{'-' * (width + 2)}|---|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


if __name__ == "__main__":
    main()
