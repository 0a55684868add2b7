"""How much of the supernets' disagreement is the search split's size? Each supernet's detections of the
same architectures on the search split, scored on two random halves of its images: tau between the halves
(the fitness's own reliability at half the images, each supernet alone) and tau between supernets on the
whole split and on halves. If supernets agreed less on halves than on the whole split, a larger search
split would make them agree more; if not, the disagreement is the training run's.

    .venv/bin/python benchmarks/fitness_reliability.py --supernets /tmp/agree/grown --splits 20

``--supernets``: a folder of ``benchmarks/supernet_seeds.py`` (its ``seed*/finetune``), scored on the same
architectures as there. Detections are kept in ``seed*/detections.json`` and reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

from _common import demo_settings
from detnas.config.runs import FINETUNE_DIR
from detnas.model.cocoeval import coco_map
from detnas.model.evaluate import predict_batches, recalibrated_path
from detnas.model.space import arch_to_str
from detnas.stages.rank_stats import kendall_tau
from detnas.stages.search import SupernetEvaluator
from supernet_seeds import archs_to_score


def detections_of(run: Path, fitness, archs: list[tuple]) -> tuple[dict, dict[str, list[dict]]]:
    """The search split's ground truth and each architecture's detections on it (cached in ``run``)."""
    path = run / "detections.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["gt"], saved["detections"]
    ev = SupernetEvaluator(run / FINETUNE_DIR, fitness, workers=0)
    detections = {}
    for arch in archs:
        sub = recalibrated_path(ev.detector, arch, len(ev.classes), ev.detector_cfg, ev.recalib)
        detections[arch_to_str(arch)] = predict_batches(sub, ev.search_batches)
    path.write_text(json.dumps({"gt": ev.gt, "detections": detections}))
    print(f"{run}: detections of {len(archs)} architectures", flush=True)
    return ev.gt, detections


def ap_on(gt: dict, detections: list[dict], ids: set[int]) -> float:
    """COCO AP of ``detections`` on the images ``ids`` of ``gt`` only."""
    sub = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    return coco_map(sub, [d for d in detections if d["image_id"] in ids])["map"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernets", type=Path, required=True, help="a recipe folder of supernet_seeds.py")
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--splits", type=int, default=20, help="random halvings of the search split")
    args = ap.parse_args()
    demo = demo_settings()
    names = [arch_to_str(a) for a in archs_to_score(demo, args.archs)]
    runs = sorted(p.parent for p in args.supernets.glob(f"seed*/{FINETUNE_DIR}"))
    scored = [detections_of(run, demo.fitness, [tuple(int(c) for c in n) for n in names]) for run in runs]
    ids = sorted(im["id"] for im in scored[0][0]["images"])
    whole = [[ap_on(gt, dets[n], set(ids)) for n in names] for gt, dets in scored]
    for run, fit in zip(runs, whole):  # the search's own fitness, when supernet_seeds.py scored it
        if (run / "fitness.json").exists():
            saved = json.loads((run / "fitness.json").read_text())
            assert np.allclose(fit, [saved[n] for n in names], atol=1e-6), f"{run}: not the search's fitness"
    rng = np.random.default_rng(0)
    within, between_half = [], []
    for _ in range(args.splits):
        perm = rng.permutation(ids)
        halves = [set(perm[: len(ids) // 2].tolist()), set(perm[len(ids) // 2:].tolist())]
        fit = [[[ap_on(gt, dets[n], h) for n in names] for h in halves] for gt, dets in scored]
        within += [kendall_tau(f[0], f[1]) for f in fit]
        between_half += [kendall_tau(fit[i][0], fit[j][0]) for i, j in itertools.combinations(range(len(fit)), 2)]
    between = [kendall_tau(whole[i], whole[j]) for i, j in itertools.combinations(range(len(whole)), 2)]

    def show(values: list[float]) -> str:
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} [{min(values):.2f}, {max(values):.2f}]"

    print(f"{len(runs)} supernets of {args.supernets}, {len(names)} architectures, search split of {len(ids)} "
          f"images, {args.splits} random halvings")
    print("| tau | mean ± std [min, max] |\n|---|---:|")
    print(f"| one supernet, half against the other half ({len(ids) // 2} images each) | {show(within)} |")
    print(f"| two supernets, the same half | {show(between_half)} |")
    print(f"| two supernets, the whole split (the search's fitness) | {show(between)} |")


if __name__ == "__main__":
    main()
