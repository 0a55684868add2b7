"""Which BN recalibration ranks architectures better: cumulative averaging, or the authors' EMA
(momentum 0.1)?

On the demo supernet of ``search_speed.py`` (finetuned with the demo's settings, reused if there),
``--archs`` architectures are sampled under the demo's FLOPs budget and scored like search candidates
(mAP on the 150-image search split, after recalibrating the path's BN statistics on training images
outside the split), with each recalibration:

- cumulative and EMA on the demo's 64 images (batches of 25), repeated on ``--subsets`` disjoint sets
  of 64 images (set 0 is the one the search uses);
- cumulative and EMA on 256 images;
  (EMA: torch's update with momentum 0.1, new = 0.9 old + 0.1 batch, from the reset state mean 0, var 1)
- the reference: cumulative on ``--ref-images`` images (default 1024); EMA on the same images is
  shown too, as a check that the reference does not favour one mode.

Agreement with the reference ranking: Kendall tau and Spearman rho, whether the setting's best
architecture is the reference's best, and the regret (reference mAP lost by picking the setting's best).
Also, independent of how well the supernet detects: how far each setting's BN statistics are from the
reference's (the statistics that recalibration is meant to estimate).

    .venv/bin/python benchmarks/recalibration_ranking.py [--supernet DIR | --finetune-iters N]
        [--archs 10] [--subsets 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from _common import add_supernet_args, default_supernet, demo_settings, max_flops, prepare_supernet, recalibration_set
from detnas.config.schema import FitnessConfig
from detnas.data.detection import collate
from detnas.model.evaluate import detection_metrics, recalibrated_path, recalibration_batches
from detnas.model.flops import arch_cost, sample_arch
from detnas.model.space import arch_to_str
from detnas.stages.search import SupernetEvaluator


def batches(images: list, size: int) -> list[list]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def bn_stats(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]


def stats_error(est: list, ref: list) -> tuple[float, float]:
    """Over all BN channels of the path: mean |mean - reference mean| / reference std, and mean
    |log(variance / reference variance)|."""
    d_mean = torch.cat([(m - rm).abs() / (rv + 1e-5).sqrt() for (m, _), (rm, rv) in zip(est, ref)])
    d_var = torch.cat([((v + 1e-5) / (rv + 1e-5)).log().abs() for (_, v), (_, rv) in zip(est, ref)])
    return float(d_mean.mean()), float(d_var.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_supernet_args(ap)
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--subsets", type=int, default=3, help="disjoint sets of --images images")
    ap.add_argument("--images", type=int, default=None, help="recalibration images (default: the demo's 64)")
    ap.add_argument("--mid-images", type=int, default=256)
    ap.add_argument("--ref-images", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None, help="write the archs and every mAP as JSON")
    args = ap.parse_args()

    args.supernet = prepare_supernet(args.supernet or default_supernet(args.finetune_iters),
                                     args.finetune_iters)
    demo = demo_settings()
    batch = demo.fitness.batch_size
    n_small = args.images or demo.fitness.recalib_images
    evaluator = SupernetEvaluator(args.supernet, FitnessConfig(recalib_images=n_small, batch_size=batch))
    train_set = recalibration_set(evaluator)
    n_ref = min(args.ref_images, len(train_set))
    need = max(n_ref, args.mid_images, n_small * args.subsets)
    if need > len(train_set):
        raise SystemExit(f"need {need} recalibration images, the training set (minus the split) has {len(train_set)}")
    t0 = time.perf_counter()
    # a seeded random sample, as the search draws its own; the sets below are disjoint slices of it
    images = [im for b in recalibration_batches(train_set, need, batch, collate, evaluator.cfg.seed) for im in b]
    decode_s = time.perf_counter() - t0

    settings = []  # (label, mode, images, group)
    for mode in ("cumulative", "ema"):
        for s in range(args.subsets):
            settings.append((f"{mode} {n_small} (set {s})", mode, images[s * n_small : (s + 1) * n_small],
                             f"{mode} {n_small}"))
        settings.append((f"{mode} {args.mid_images}", mode, images[: args.mid_images], f"{mode} {args.mid_images}"))
        settings.append((f"{mode} {n_ref}", mode, images[:n_ref], f"{mode} {n_ref}"))
    reference = f"cumulative {n_ref}"

    rng = np.random.default_rng(args.seed)
    archs, seen = [], set()
    while len(archs) < args.archs:
        a = sample_arch(evaluator.space, rng, None, max_flops(demo))
        if arch_to_str(a) not in seen:
            seen.add(arch_to_str(a))
            archs.append(a)
    nc, det = len(evaluator.classes), evaluator.detector_cfg
    maps = {label: [] for label, *_ in settings}
    errors = {label: [] for label, *_ in settings}
    t0 = time.perf_counter()
    for i, arch in enumerate(archs):
        stats = {}
        for label, mode, imgs, _ in settings:  # as a search candidate is scored, keeping the statistics
            sub = recalibrated_path(evaluator.detector, arch, nc, det, batches(imgs, batch), mode)
            stats[label] = bn_stats(sub)
            maps[label].append(detection_metrics(sub, evaluator.search_set, batch, gt=evaluator.gt)["AP"])
        for label in stats:
            errors[label].append(stats_error(stats[label], stats[reference]))
        print(f"arch {i + 1}/{len(archs)} {arch_to_str(arch)}: reference mAP {maps[reference][-1]:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    if args.save is not None:
        args.save.write_text(json.dumps({"archs": [arch_to_str(a) for a in archs], "map": maps,
                                         "bn_error": errors, "supernet": str(args.supernet)}, indent=1))
    ref = np.array(maps[reference])
    best_ref = int(np.argmax(ref))

    alt = np.array(maps[f"ema {n_ref}"])  # the other mode's long recalibration, as a second reference

    def agreement(label: str) -> dict:
        v = np.array(maps[label])
        pick = int(np.argmax(v))
        return {"tau": kendalltau(v, ref).statistic, "rho": spearmanr(v, ref).statistic,
                "tau_alt": kendalltau(v, alt).statistic,
                "picks_best": pick == best_ref, "regret": ref[best_ref] - ref[pick], "mean": float(v.mean())}

    print(f"supernet {args.supernet}; {len(archs)} archs sampled (seed {args.seed}) with body FLOPs <= "
          f"{max_flops(demo) / 1e6:.0f}M; mAP on the {len(evaluator.search_set)}-image "
          f"search split; recalibration batches of {batch}; reference: {reference}; "
          f"{len(images)} training images decoded in {decode_s:.0f} s; {time.perf_counter() - t0:.0f} s of evaluation; "
          f"torch {torch.get_num_threads()} thread(s)")
    print()
    print(f"| recalibration | images | Kendall tau vs reference | Spearman rho | tau vs ema {n_ref} | "
          "picks the reference's best | regret (reference mAP, %) | mean mAP (%) |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[str, list[dict]] = {}
    for label, mode, imgs, group in settings:
        groups.setdefault(group, []).append(agreement(label))
    for group, rows in groups.items():
        mode, n = group.split()
        if len(rows) == 1:
            r = rows[0]
            tau, rho = ("(reference)", "") if group == reference else (f"{r['tau']:.2f}", f"{r['rho']:.2f}")
            tau_alt = "" if group == f"ema {n_ref}" else f"{r['tau_alt']:.2f}"
            print(f"| {mode} | {n} | {tau} | {rho} | {tau_alt} | "
                  f"{'yes' if r['picks_best'] else 'no'} | {r['regret'] * 100:.2f} | {r['mean'] * 100:.2f} |")
        else:
            taus, rhos = [r["tau"] for r in rows], [r["rho"] for r in rows]
            print(f"| {mode} | {n} x {len(rows)} sets | {statistics.mean(taus):.2f} "
                  f"({', '.join(f'{t:.2f}' for t in taus)}) | {statistics.mean(rhos):.2f} | "
                  f"{statistics.mean(r['tau_alt'] for r in rows):.2f} | "
                  f"{sum(r['picks_best'] for r in rows)}/{len(rows)} | "
                  f"{statistics.mean(r['regret'] for r in rows) * 100:.2f} | "
                  f"{statistics.mean(r['mean'] for r in rows) * 100:.2f} |")
    print()
    print(f"Error of the recalibrated BN statistics against the reference's ({reference}), over all BN channels "
          "of each path, median over the archs:")
    print()
    print("| recalibration | images | mean: \\|error\\| / std | variance: \\|log ratio\\| |")
    print("|---|---|---|---|")
    for label, mode, imgs, group in settings:
        if label == reference:
            continue
        e = errors[label]
        print(f"| {mode} | {label.split(' ', 1)[1]} | {statistics.median(x for x, _ in e):.3f} | "
              f"{statistics.median(y for _, y in e):.3f} |")
    print()
    print("mAP (%) per architecture:")
    print()
    cols = [reference, f"ema {n_ref}", f"cumulative {n_small} (set 0)", f"ema {n_small} (set 0)"]
    print("| arch | body FLOPs | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for i in np.argsort(-ref):
        flops = arch_cost(evaluator.space, archs[i]).body_flops / 1e6
        print(f"| {arch_to_str(archs[i])} | {flops:.1f}M | " + " | ".join(f"{maps[c][i] * 100:.2f}" for c in cols)
              + " |")
    print()
    line = (f"Kendall tau between the two references (cumulative vs EMA, {n_ref} images): "
            f"{kendalltau(maps[reference], maps[f'ema {n_ref}']).statistic:.2f}")
    for mode in ("cumulative", "ema"):
        if args.subsets > 1:
            a, b = maps[f"{mode} {n_small} (set 0)"], maps[f"{mode} {n_small} (set 1)"]
            line += f"; {mode} {n_small}, set 0 vs set 1: {kendalltau(a, b).statistic:.2f}"
    print(line)


if __name__ == "__main__":
    main()
