"""Which training budget does the supernet rank like? The architectures of a rank check, each trained
alone on the demo's digits for longer budgets (the demo's pretraining recipe, its schedule stretched to
``--iters`` steps), next to what the rank check measured (their detection fitness in the supernet, the
top-1 after its retrainings' classification pretraining, their standalone test AP) and their top-1 as
paths of a pretrained supernet (after BN recalibration on 256 random training images). Prints Kendall's
tau between every pair of these rankings.

Classification stands in for a longer detection retraining because it is cheaper, and at the demo's
scale the two rank alike (the table's tau between the retraining's top-1 and its test AP). Each
standalone result is kept in ``--out`` as it finishes, so an interrupted run continues where it stopped.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rank_budget.py --rank-check RUN/rank_check \\
        --supernet RUN/pretrain [--iters 1200] [--seeds 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import demo_settings, print_choice_count_taus
from detnas.checkpoint import load_checkpoint
from detnas.config.runs import CHECKPOINT, PRETRAIN, RANK_CHECK_FILE, RANK_PLAN_FILE, RANK_SCORES_FILE
from detnas.config.schema import PretrainConfig
from detnas.data.classification import ImageFolderDataset, classification_transform
from detnas.data.loading import CachedBatches
from detnas.model.evaluate import evaluate_classification_path, recalibration_batches
from detnas.model.space import get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone
from detnas.stages.jobs import pretrain_job, run_stage
from detnas.stages.rank_stats import kendall_tau


def standalone_config(iters: int, seed: int) -> PretrainConfig:
    """The demo's pretraining recipe for one standalone network, ``iters`` steps long."""
    demo = demo_settings().model_copy(update={"seed": seed})
    recipe = demo.pretrain.model_copy(update={"train": demo.pretrain.train.model_copy(update={"iters": iters})})
    logging = demo.logging.model_copy(update={"log_every": 50, "checkpoint_every": 10**6, "progress": False})
    return demo.model_copy(update={"pretrain": recipe, "logging": logging}).pretrain_config()


def standalone_top1(iters: int, seed: int, arch: str) -> float:
    cfg = standalone_config(iters, seed)
    with tempfile.TemporaryDirectory() as tmp:
        job = pretrain_job(cfg, parse_arch(arch, get_space(cfg.space, cfg.width_mult)))
        return run_stage(job, cfg, Path(tmp), resume=False)["top1"][arch]


def retraining_top1(rank_check: Path, arch: str) -> float:
    """Top-1 after the classification pretraining of ``arch``'s retrainings in a rank check, mean over seeds."""
    runs = sorted((rank_check / "nets" / arch).glob("seed*/pretrain/metrics.json"))
    return sum(json.loads(r.read_text())["top1"][arch] for r in runs) / len(runs)


def supernet_top1(run_dir: Path, archs: list[str]) -> dict[str, float]:
    """Top-1 of each architecture as a path of the supernet pretrained in ``run_dir``."""
    state = load_checkpoint(run_dir / CHECKPOINT, PRETRAIN)
    cfg = PretrainConfig.model_validate(state["config"])
    space = get_space(cfg.space, cfg.width_mult)
    train = ImageFolderDataset(cfg.data.train, classification_transform(cfg.data.image_size, True, cfg.data.flip),
                               cfg.seed)
    val = ImageFolderDataset(cfg.data.val, classification_transform(cfg.data.image_size, False))
    supernet = ShuffleNetBackbone(space, None, num_classes=len(train.classes), dropout=cfg.dropout)
    supernet.load_state_dict(state["model"])
    recalib = recalibration_batches(train, 256, 64, seed=cfg.seed)
    val_batches = CachedBatches(val, 256, None, 0)
    return {a: evaluate_classification_path(supernet, parse_arch(a, space), recalib, val_batches) for a in archs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank-check", type=Path, required=True, help="a rank-check run (its architectures)")
    parser.add_argument("--supernet", type=Path, required=True, help="a supernet pretraining run")
    parser.add_argument("--iters", type=int, nargs="+", default=[1200], help="standalone budgets (steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "detnas-bench" / "rank-budget")
    args = parser.parse_args()
    archs = json.loads((args.rank_check / RANK_PLAN_FILE).read_text())["archs"]
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "standalone_top1.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    for iters in args.iters:
        for seed in args.seeds:
            for arch in archs:
                key = f"{arch}/{iters}/{seed}"
                if key not in done:
                    done[key] = standalone_top1(iters, seed, arch)
                    done_file.write_text(json.dumps(done, indent=1))
                    print(f"{key}: {100 * done[key]:.1f}", flush=True)
    rankings = {"supernet top-1": supernet_top1(args.supernet, archs)}
    scores = args.rank_check / RANK_SCORES_FILE
    if scores.exists():
        rankings["supernet fitness (AP)"] = {a: s["map"] for a, s in json.loads(scores.read_text())["scores"].items()}
    result = args.rank_check / RANK_CHECK_FILE
    if result.exists():  # the rank check's own retrainings: their classification pretraining, their test AP
        rows = json.loads(result.read_text())["archs"]
        rankings["alone, the retraining's pretraining"] = {r["arch"]: retraining_top1(args.rank_check, r["arch"]) for r in rows}
        rankings["alone, the retraining (AP)"] = {r["arch"]: r["standalone_map"] for r in rows}
    for iters in args.iters:
        rankings[f"alone, {iters} steps"] = {
            a: sum(done[f"{a}/{iters}/{s}"] for s in args.seeds) / len(args.seeds) for a in archs}
    names = list(rankings)
    print(f"\nin % (standalone: mean of seeds {args.seeds})\n")
    print("| architecture | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for a in archs:
        print(f"| `{a}` | " + " | ".join(f"{100 * rankings[n][a]:.1f}" for n in names) + " |")
    print("\nKendall tau over the architectures\n")
    print("| | " + " | ".join(names[1:]) + " |")
    print("|---|" + "---:|" * (len(names) - 1))
    for i, row in enumerate(names[:-1]):
        cells = ["" if j <= i else f"{kendall_tau([rankings[row][a] for a in archs], [rankings[col][a] for a in archs]):.2f}"
                 for j, col in enumerate(names[1:], start=1)]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print_choice_count_taus(rankings, archs)


if __name__ == "__main__":
    main()
