"""How much of the supernets' disagreement is the search split's size? Each supernet's detections of the
same architectures on the search split, scored on two random halves of its images: tau between the halves
(the fitness's own reliability at half the images, each supernet alone) and tau between supernets on the
whole split and on halves. If supernets agreed less on halves than on the whole split, a larger search
split would make them agree more; if not, the disagreement is the training run's.

    .venv/bin/python benchmarks/fitness_reliability.py --supernets /tmp/agree/grown --splits 20
    .venv/bin/python benchmarks/fitness_reliability.py --supernets /tmp/agree/grown --images held

``--supernets``: a folder of ``benchmarks/supernet_seeds.py`` (its ``seed*/finetune``), scored on the same
architectures as there. ``--images held`` scores them on the demo's validation and test images instead
(600, which no supernet trained on; the pipeline never reads the validation set): the fitness a 6x larger
search split would give. Detections are kept in ``seed*/detections[-held].json`` and reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

from _common import demo_settings
from detnas.config.data_schema import DetectionSource
from detnas.config.runs import FINETUNE_DIR
from detnas.data.demo import DemoPaths, default_demo_root
from detnas.data.detection import collate
from detnas.data.loading import CachedBatches
from detnas.data.sources import load_detection
from detnas.data.transforms import DetectionTransform
from detnas.model.cocoeval import coco_map
from detnas.model.evaluate import predict_batches, recalibrated_path
from detnas.model.space import arch_to_str
from detnas.stages.rank_stats import kendall_tau
from detnas.stages.search import SupernetEvaluator
from supernet_seeds import archs_to_score


def held_images(paths: DemoPaths) -> list[DetectionSource]:
    """The demo's validation and test sets, read as one (``data.sources.load_detection`` of a list)."""
    return [DetectionSource(annotations=ann, images=paths.det_images)
            for ann in (paths.det_val_json, paths.det_test_json)]


def detections_of(run: Path, fitness, archs: list[tuple],
                  held: list[DetectionSource] | None) -> tuple[dict, dict[str, list[dict]]]:
    """The ground truth of the search split (or of the ``held`` sets, read as one) and each
    architecture's detections on it (cached in ``run``)."""
    path = run / ("detections.json" if held is None else "detections-held.json")
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["gt"], saved["detections"]
    ev = SupernetEvaluator(run / FINETUNE_DIR, fitness, workers=0)
    if held is not None:
        det = ev.detector_cfg
        ev.search_set = load_detection(held, DetectionTransform(det.min_size, det.max_size, flip=False))
        ev.gt = ev.search_set.to_coco()
        ev.search_batches = CachedBatches(ev.search_set, fitness.batch_size, collate)
    detections = {}
    for arch in archs:
        sub = recalibrated_path(ev.detector, arch, len(ev.classes), ev.detector_cfg, ev.recalib)
        detections[arch_to_str(arch)] = predict_batches(sub, ev.search_batches)
    path.write_text(json.dumps({"gt": ev.gt, "detections": detections}))
    print(f"{run}: detections of {len(archs)} architectures", flush=True)
    return ev.gt, detections


def ap_on(gt: dict, detections: list[dict], ids: set[int], metric: str) -> float:
    """COCO ``metric`` (AP, AP50) of ``detections`` on the images ``ids`` of ``gt`` only."""
    sub = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    return coco_map(sub, [d for d in detections if d["image_id"] in ids])[metric]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernets", type=Path, required=True, help="a recipe folder of supernet_seeds.py")
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--splits", type=int, default=20, help="random halvings of the search split")
    ap.add_argument("--metric", default="AP", choices=["AP", "AP50"], help="AP is the search's fitness")
    ap.add_argument("--images", default="search", choices=["search", "held"],
                    help="the search split, or the demo's 600 validation and test images")
    args = ap.parse_args()
    demo = demo_settings()
    names = [arch_to_str(a) for a in archs_to_score(demo, args.archs)]
    runs = sorted(p.parent for p in args.supernets.glob(f"seed*/{FINETUNE_DIR}"))
    held = held_images(DemoPaths.under(default_demo_root())) if args.images == "held" else None
    scored = [detections_of(run, demo.fitness, [tuple(int(c) for c in n) for n in names], held) for run in runs]
    ids = sorted(im["id"] for im in scored[0][0]["images"])
    whole = [[ap_on(gt, dets[n], set(ids), args.metric) for n in names] for gt, dets in scored]
    for run, fit in zip(runs, whole):  # the search's fitness, when supernet_seeds.py scored it (to float rounding)
        if (run / "fitness.json").exists() and args.metric == "AP" and held is None:
            saved = json.loads((run / "fitness.json").read_text())
            assert np.allclose(fit, [saved[n] for n in names], atol=1e-4), f"{run}: not the search's fitness"
    rng = np.random.default_rng(0)
    within, between_half = [], []
    for _ in range(args.splits):
        perm = rng.permutation(ids)
        halves = [set(perm[: len(ids) // 2].tolist()), set(perm[len(ids) // 2:].tolist())]
        fit = [[[ap_on(gt, dets[n], h, args.metric) for n in names] for h in halves] for gt, dets in scored]
        within += [kendall_tau(f[0], f[1]) for f in fit]
        between_half += [kendall_tau(fit[i][0], fit[j][0]) for i, j in itertools.combinations(range(len(fit)), 2)]
    between = [kendall_tau(whole[i], whole[j]) for i, j in itertools.combinations(range(len(whole)), 2)]

    def show(values: list[float]) -> str:
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} [{min(values):.2f}, {max(values):.2f}]"

    print(f"{len(runs)} supernets of {args.supernets}, {len(names)} architectures, search split of {len(ids)} "
          f"images ({args.images}), {args.splits} random halvings, {args.metric}")
    print("| tau | mean ± std [min, max] |\n|---|---:|")
    print(f"| one supernet, half against the other half ({len(ids) // 2} images each) | {show(within)} |")
    print(f"| two supernets, the same half | {show(between_half)} |")
    print(f"| two supernets, all {len(ids)} images | {show(between)} |")


if __name__ == "__main__":
    main()
