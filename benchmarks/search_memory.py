"""Peak memory of the search's recalibration images against ``fitness.recalib_images``, at 800x1333.

For each number of recalibration images and each cache budget (``fitness.cache_gb``), a fresh process
builds the recalibration batches as the search does (``evaluate.recalibration_batches``, batch 8, with
DataLoader workers) and makes the passes of one or more candidates over them; it reports its peak
RSS and that of its largest worker, the bytes kept, and a checksum of the pixels each pass saw (equal
for every budget: the cache changes where images are decoded, never what a candidate sees).

Images are made in memory as the float 3x800x1067 tensors that ``DetectionTransform(800, 1333)`` gives
for a 640x480 COCO image, so that the runs measure memory rather than JPEG decoding on a loaded
machine. The detector's own memory is per batch and does not depend on ``recalib_images``.

    .venv/bin/python benchmarks/search_memory.py [--sizes 64,500,4000] [--budgets 0,0.5,2] [--workers 2] [--passes 2]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from detnas.data.detection import collate
from detnas.model.evaluate import recalibration_batches

HEIGHT, WIDTH = 800, 1067  # a 640x480 image resized to 800x1333


class SyntheticImages(torch.utils.data.Dataset):
    """Item i: a float image whose pixels all equal i / n (made, not decoded), and an empty target."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((3, HEIGHT, WIDTH), i / self.n), {"image_id": i}


def peak_rss_gib(pid: int) -> float:
    """A live process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def child(n: int, budget_gb: float, workers: int, passes: int) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    t0 = time.perf_counter()
    batches = recalibration_batches(SyntheticImages(2 * n), n, 8, collate, seed=0, workers=workers,
                                    budget_bytes=budget_gb * 1e9)
    cached = batches.cached_bytes
    sums = []
    for _ in range(passes):  # one per candidate
        sums.append(sum(float(im.sum()) for images in batches for im in images))
    # the streaming workers are alive (persistent); those that filled the cache have been reaped
    streaming = getattr(batches.streamed, "_iterator", None) if batches.streamed is not None else None
    live = [peak_rss_gib(w.pid) for w in getattr(streaming, "_workers", [])]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    workers_peak = max([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, *live])
    print(json.dumps({"peak_gib": peak, "workers_peak_gib": workers_peak, "cached_gb": cached / 1e9,
                      "sums": sums, "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,500,4000", help="recalib_images values")
    ap.add_argument("--budgets", default="0,0.5,2", help="cache_gb values (inf: keep everything, the old way)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2, help="candidates evaluated per run")
    ap.add_argument("--child", nargs=4, metavar=("N", "BUDGET", "WORKERS", "PASSES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), float(args.child[1]), int(args.child[2]), int(args.child[3]))
        return
    image_gb = 3 * HEIGHT * WIDTH * 4 / 1e9
    print(f"torch {torch.__version__}; images 3x{HEIGHT}x{WIDTH} float32 ({image_gb * 1e3:.1f} MB each), "
          f"batch 8, {args.workers} DataLoader workers, {args.passes} candidate pass(es) per run")
    print()
    print("| recalib_images | all decoded | cache_gb | kept | peak RSS (main) | peak RSS (largest worker) | "
          "pass checksum | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    checks: dict[int, list] = {}
    for n in map(int, args.sizes.split(",")):
        for budget in map(float, args.budgets.split(",")):
            if math.isinf(budget) and n * image_gb > 8:
                continue  # would not fit this machine: the problem this cache solves
            out = subprocess.run([sys.executable, __file__, "--child", str(n), str(budget), str(args.workers),
                                  str(args.passes)], capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            assert len(set(r["sums"])) == 1
            checks.setdefault(n, []).append(r["sums"][0])
            print(f"| {n} | {n * image_gb:.2f} GB | {budget:g} | {r['cached_gb']:.2f} GB | {r['peak_gib']:.2f} GiB "
                  f"| {r['workers_peak_gib']:.2f} GiB | {r['sums'][0]:.6e} | {r['seconds']:.0f} |", flush=True)
    same = all(len(set(v)) == 1 for v in checks.values())
    print()
    print(f"every budget gives the same pixels to every candidate: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
