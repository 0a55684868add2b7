"""Search speed on the demo: candidates evaluated per minute, where a candidate's time goes, the cost
against a straightforward evaluator, and 2 torchrun workers against 1 process.

Uses the demo's settings, read from ``src/detnas/config/packaged/demo.yaml`` (Small space, FPN Faster R-CNN
at 128 px, the held-out search split, fitness = BN recalibration on 64 training images in batches of
25, then COCO mAP on the search split) on the built-in demo data. The supernet is finetuned from
scratch with the demo's finetuning schedule, once, and kept in ``$TMPDIR/detnas-bench`` (or give
``--supernet``).

Per candidate, ours (``search_stage.SupernetEvaluator``) against a straightforward version measured in
the same run, interleaved: a deep copy of the whole supernet detector, BN recalibration through the
full supernet on images decoded from disk each time, image-by-image inference, pycocotools.

    .venv/bin/python benchmarks/search_speed.py [--supernet DIR] [--candidates 6] [--no-scaling]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    add_supernet_args,
    default_supernet,
    demo_settings,
    max_flops,
    prepare_supernet,
    pycocotools_stats,
    recalibration_set,
)
from detnas.data.detection import collate
from detnas.model.cocoeval import coco_map
from detnas.model.detector import extract_detector, set_path
from detnas.model.evaluate import detector_backbone_forward, predict, recalibrate_bn, recalibration_batches
from detnas.model.flops import sample_arch


def pycocotools_map(gt: dict, detections: list[dict]) -> float:
    if not detections:  # pycocotools cannot load an empty result list
        return 0.0
    return pycocotools_stats(gt, detections)[0]


def straightforward(evaluator, arch, train_set, fitness) -> dict:
    """The evaluation as one would first write it: copy the whole supernet detector, recalibrate
    through it on images decoded from disk, predict image by image, score with pycocotools."""
    t0 = time.perf_counter()
    model = copy.deepcopy(evaluator.detector)
    set_path(model, arch)
    t1 = time.perf_counter()
    subset = torch.utils.data.Subset(train_set, range(min(fitness.recalib_images, len(train_set))))
    loader = torch.utils.data.DataLoader(subset, batch_size=fitness.batch_size, collate_fn=collate)
    recalibrate_bn(model, detector_backbone_forward(model), (images for images, _ in loader), fitness.recalib_mode)
    t2 = time.perf_counter()
    detections = predict(model, evaluator.search_set, batch_size=1)
    t3 = time.perf_counter()
    value = pycocotools_map(evaluator.gt, detections)
    t4 = time.perf_counter()
    return {"map": value, "copy": t1 - t0, "recalib": t2 - t1, "inference": t3 - t2, "cocoeval": t4 - t3,
            "total": t4 - t0}


def ours(evaluator, arch) -> dict:
    t0 = time.perf_counter()
    r = evaluator(arch)
    total = time.perf_counter() - t0
    return {"map": r["map"], "recalib": r["seconds_recalib"], "inference": r["seconds_inference"],
            "cocoeval": r["seconds_cocoeval"], "total": total}


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def per_candidate(args) -> None:
    from detnas.stages.search import SupernetEvaluator

    fitness = demo_settings().fitness
    t0 = time.perf_counter()
    evaluator = SupernetEvaluator(args.supernet, fitness)
    setup_s = time.perf_counter() - t0
    demo = demo_settings()
    rng = np.random.default_rng(args.seed)
    archs = [sample_arch(evaluator.space, rng, None, max_flops(demo)) for _ in range(args.candidates)]
    train_set = recalibration_set(evaluator)

    ours(evaluator, archs[0])  # warm-up (first-call allocations), not counted
    fast, slow = [], []
    for i, arch in enumerate(archs):  # interleaved, alternating which goes first
        pair = [lambda: fast.append(ours(evaluator, arch)),
                lambda: slow.append(straightforward(evaluator, arch, train_set, fitness))]
        for run in pair if i % 2 == 0 else pair[::-1]:
            run()

    # pieces of our recalibration phase, and what caching the decoded images saves
    extract = []
    for arch in archs:
        t = time.perf_counter()
        extract_detector(evaluator.detector, arch, len(evaluator.classes), evaluator.detector_cfg)
        extract.append(time.perf_counter() - t)
    t = time.perf_counter()
    recalibration_batches(train_set, fitness.recalib_images, fitness.batch_size, collate)
    decode_recalib = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(evaluator.search_set)):
        evaluator.search_set[i]
    decode_split = time.perf_counter() - t
    t = time.perf_counter()
    sub = extract_detector(evaluator.detector, archs[0], len(evaluator.classes), evaluator.detector_cfg)
    recalibrate_bn(sub, detector_backbone_forward(sub), evaluator.recalib, fitness.recalib_mode)
    detections = predict(sub, evaluator.search_set, fitness.batch_size)
    t = time.perf_counter()
    coco_map(evaluator.gt, detections)
    faster = time.perf_counter() - t
    t = time.perf_counter()
    pycocotools_map(evaluator.gt, detections)
    pycoco = time.perf_counter() - t

    n_split = len(evaluator.search_set)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s) "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); supernet {args.supernet}")
    print(f"demo settings: {evaluator.cfg.space} space, {evaluator.detector_cfg.kind}, "
          f"{evaluator.detector_cfg.min_size}px, search split {n_split} images, recalibration "
          f"{fitness.recalib_images} images ({fitness.recalib_mode}) in batches of {fitness.batch_size}; "
          f"{len(archs)} candidates (body FLOPs <= {max_flops(demo) / 1e6:.0f}M), "
          f"medians; evaluator set-up (checkpoint, split, decoding {fitness.recalib_images} images) "
          f"{setup_s:.1f} s once per worker")
    print()
    print("| phase | ours | straightforward | ratio |")
    print("|---|---|---|---|")
    print(f"| copy of the supernet detector | - | {med(slow, 'copy'):.3f} s | - |")
    print(f"| path extraction (part of ours' recalibration) | {statistics.median(extract):.3f} s | - | - |")
    rows = [("BN recalibration", "recalib"), (f"inference on {n_split} images", "inference"),
            ("COCO evaluation", "cocoeval"), ("**total per candidate**", "total")]
    slow_copy = med(slow, "copy")
    for label, key in rows:
        a, b = med(fast, key), med(slow, key)
        if key == "recalib":
            label += " (ours: + extraction)"
        print(f"| {label} | {a:.3f} s | {b:.3f} s | {b / a:.2f}x |")
    per_min_fast, per_min_slow = 60 / med(fast, "total"), 60 / med(slow, "total")
    print(f"| **candidates per minute** | **{per_min_fast:.1f}** | {per_min_slow:.1f} | "
          f"{per_min_fast / per_min_slow:.2f}x |")
    print()
    share = {k: med(fast, k) / med(fast, "total") for k in ("recalib", "inference", "cocoeval")}
    print(f"ours, share of a candidate: recalibration {share['recalib']:.0%}, inference {share['inference']:.0%}, "
          f"COCO evaluation {share['cocoeval']:.0%}; straightforward copy share "
          f"{slow_copy / med(slow, 'total'):.0%}")
    print(f"decoding alone: {fitness.recalib_images} recalibration images {decode_recalib:.3f} s "
          f"(ours: once per worker), the {n_split} search images {decode_split:.3f} s (both: every candidate)")
    print(f"COCO evaluation of the same {len(detections)} detections: faster-coco-eval {faster:.3f} s, "
          f"pycocotools {pycoco:.3f} s")
    diffs = [abs(a["map"] - b["map"]) for a, b in zip(fast, slow)]
    print(f"mAP ours vs straightforward: max |difference| {max(diffs):.2e} over {len(diffs)} candidates "
          f"(mAPs {', '.join(format(r['map'], '.4f') for r in fast)})")
    print(f"demo search ({demo.search.population} x {demo.search.generations} candidates): "
          f"{demo.search.population * demo.search.generations / per_min_fast:.1f} min of evaluation "
          f"(straightforward {demo.search.population * demo.search.generations / per_min_slow:.1f} min)")


# ----------------------------------------------------------------------------- 1 vs 2 workers


def search_worker(args) -> None:
    """Run under torchrun or alone: one generation of random candidates through the real engine; rank 0
    prints the seconds the search itself took (set-up excluded: it is the same once per worker)."""
    from detnas.config.schema import SearchConfig
    from detnas.distributed import barrier, get_rank, get_world_size
    from detnas.search.engine import run_search
    from detnas.stages.search import SupernetEvaluator

    evaluator = SupernetEvaluator(args.supernet, demo_settings().fitness)
    demo = demo_settings()
    cfg = SearchConfig(strategy="random", population=args.population, generations=1,
                       topk=min(args.population, demo.search.topk), mutations=0, crossovers=0,
                       max_flops=max_flops(demo), seed=args.seed)
    evaluator(sample_arch(evaluator.space, np.random.default_rng(99)))  # warm-up, as in per_candidate
    barrier()
    t0 = time.perf_counter()
    result = run_search(evaluator.space, cfg, evaluator, args.worker_out, progress=False)
    barrier()
    seconds = time.perf_counter() - t0
    if get_rank() == 0:
        print(json.dumps({"seconds": seconds, "candidates": len(result.history), "world": get_world_size(),
                          "threads": torch.get_num_threads(),
                          "maps": [round(r["map"], 6) for r in result.history]}))


def scaling(args) -> None:
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    script = [str(Path(__file__).resolve()), "--supernet", str(args.supernet), "--population",
              str(args.population), "--seed", str(args.seed)]
    runs = [("1 process, torch's default threads", [sys.executable], base),
            ("1 process, 1 thread", [sys.executable], {**base, "OMP_NUM_THREADS": "1"}),
            ("2 torchrun workers, 1 thread each (torchrun's default)",
             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], base)]
    print()
    print(f"| search of {args.population} candidates (one generation) | threads per process | seconds | "
          "candidates per minute | vs 1 process, 1 thread |")
    print("|---|---|---|---|---|")
    results, ref = [], None
    for label, launcher, env in runs:
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([*launcher, *script, "--worker-out", str(Path(tmp) / "run")], env=env,
                               capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"{label} failed:\n{(r.stdout + r.stderr)[-3000:]}")
        out = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
        results.append(out)
        per_min = 60 * out["candidates"] / out["seconds"]
        if label == "1 process, 1 thread":
            ref = per_min
        results[-1]["per_min"] = per_min
        results[-1]["label"] = label
    for out in results:
        print(f"| {out['label']} | {out['threads']} | {out['seconds']:.1f} | {out['per_min']:.1f} | "
              f"{out['per_min'] / ref:.2f}x |")
    same = all(o["maps"] == results[0]["maps"] for o in results)
    print(f"\nsame candidates and mAPs in all three runs: {'yes' if same else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_supernet_args(ap)
    ap.add_argument("--candidates", type=int, default=6, help="candidates timed both ways")
    ap.add_argument("--population", type=int, default=8, help="candidates of the 1-vs-2-worker search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 torchrun workers part")
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_out is not None:
        search_worker(args)
        return
    args.supernet = prepare_supernet(args.supernet or default_supernet(args.finetune_iters),
                                     args.finetune_iters)
    per_candidate(args)
    if not args.no_scaling:
        scaling(args)


if __name__ == "__main__":
    main()
