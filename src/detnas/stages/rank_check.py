"""``detnas rank-check``: does the finetuned supernet rank architectures the way standalone training does?

DetNAS rests on one assumption: a path's mAP inside the supernet (the search's fitness) orders
architectures as their mAP after training each one alone would. This stage measures it on the user's
own data: N architectures under the search's budget (the configured ones first, e.g. the search's best
and the baseline, then uniform draws), each scored with the search's fitness and retrained with the
retraining recipe (``seeds`` times), then Kendall's tau and Spearman's rho between the two with a
bootstrap interval, next to the seed-noise ceiling (tau between two seeds of standalone training: no
fitness can rank better than training itself repeats), the top-k hit rate, and a scatter plot.

Files in the run folder: ``rank_plan.json`` (the architectures), ``rank_scores.json`` (their fitness,
with what it was computed from), ``nets/<arch>/seed<k>/`` (retraining runs), ``rank_check.png``, and
``rank_check.json`` last. Rerunning continues: finished retrainings are kept, and scores are recomputed
only when the supernet or the fitness settings changed, so several supernet recipes can be compared
on the same retrained networks by pointing them at the same folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from detnas.atomic import write_json_atomic
from detnas.config.runs import (
    RANK_CHECK_FILE,
    RANK_CHECK_PNG,
    RANK_PLAN_FILE,
    RANK_SCORES_FILE,
    RESULT_FILE,
    is_finished,
    raise_exists,
    rank_net_dir,
)
from detnas.config.schema import RankCheckStageConfig
from detnas.distributed import broadcast_object, is_main, map_in_rounds
from detnas.errors import UserError
from detnas.model.flops import sample_arch
from detnas.model.space import Arch, SearchSpace, arch_to_str, get_space, resolve_arch
from detnas.search.constraints import check_constraints
from detnas.stages.rank_stats import bootstrap_ci, kendall_tau, spearman_rho, topk_hit_rate
from detnas.stages.retrain import run_retrain


def included_archs(space: SearchSpace, cfg: RankCheckStageConfig) -> list[Arch]:
    """The configured architectures, resolved, duplicates dropped."""
    return list(dict.fromkeys(resolve_arch(text, space)[0] for text in cfg.include))


def plan_archs(space: SearchSpace, cfg: RankCheckStageConfig, included: list[Arch]) -> list[Arch]:
    """The ``included`` architectures, then uniform draws under the search's budget until there are
    ``rank_check.archs``: a function of the config alone."""
    cons = check_constraints(space, cfg.search)
    archs = list(included)
    rng = np.random.default_rng([cfg.search.seed, 0x7A5C])  # not the search's own stream
    for _ in range(1000 * cfg.rank_check.archs):
        if len(archs) >= cfg.rank_check.archs:
            return archs
        arch = sample_arch(space, rng, cfg.search.min_flops, cfg.search.max_flops)
        if cons.ok(arch) and arch not in archs:
            archs.append(arch)
    raise UserError(f"found only {len(archs)} distinct architectures under the search's budget; "
                    f"lower rank_check.archs ({cfg.rank_check.archs}) or widen the budget")


def supernet_scores(cfg: RankCheckStageConfig, archs: list[Arch], out: Path) -> dict[str, dict]:
    """The search's fitness of each architecture, shared out over the workers; reused from
    ``rank_scores.json`` when computed from the same supernet, split and fitness settings."""
    from detnas.stages.search import SupernetEvaluator

    evaluator = SupernetEvaluator(cfg.supernet, cfg.fitness)
    identity = evaluator.identity()
    path = out / RANK_SCORES_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    scores = saved.get("scores", {}) if saved.get("identity") == identity else {}
    todo = [a for a in archs if arch_to_str(a) not in scores]
    if saved and saved.get("identity") != identity and is_main():
        print(f"rank-check: the supernet or fitness settings changed, scoring again ({path})", flush=True)
    for results in map_in_rounds(todo, lambda a: (arch_to_str(a), evaluator(a))):
        scores.update({arch: {"map": r["map"], "ap50": r["ap50"]} for arch, r in results})
    if todo and is_main():
        write_json_atomic({"identity": identity, "scores": scores}, path, indent=2)
    return scores


def retrain_all(cfg: RankCheckStageConfig, archs: list[Arch], out: Path,
                known: dict[str, list[Path]] | None = None) -> dict[str, list[dict]]:
    """Each architecture trained alone ``seeds`` times (finished runs are read back, an interrupted
    one continues): its test metrics per seed. ``known[arch][k]``: a finished retraining of ``arch``
    with seed ``retrain.seed + k`` and the same recipe made elsewhere (the pipeline's), used as is."""
    results = {}
    for arch in archs:
        name = arch_to_str(arch)
        runs = []
        for k in range(cfg.rank_check.seeds):
            seed_cfg = cfg.retrain.model_copy(update={"seed": cfg.retrain.seed + k})
            run_dir = rank_net_dir(out, name, k)
            elsewhere = (known or {}).get(name, [])
            if k < len(elsewhere) and is_finished(elsewhere[k]):
                run_dir = elsewhere[k]
            if is_main() and not is_finished(run_dir):
                print(f"rank-check: {name} seed {seed_cfg.seed} ({archs.index(arch) + 1}/{len(archs)})", flush=True)
            if is_finished(run_dir):
                result = json.loads((run_dir / RESULT_FILE).read_text())
            else:
                result = run_retrain(arch, seed_cfg, run_dir, resume=True, pretrain=seed_cfg.pretrain is not None)
            runs.append({"seed": seed_cfg.seed, "map": result["test"]["AP"], "ap50": result["test"]["AP50"]})
        results[name] = runs
    return results


def rank_agreement(predicted: list[float], actual: list[float], topk: int, draws: int, seed: int) -> dict:
    """Tau and rho of ``predicted`` against ``actual``, tau's bootstrap interval, the top-k hit rate."""
    lo, hi = bootstrap_ci(kendall_tau, predicted, actual, draws, seed=seed)
    return {"kendall_tau": kendall_tau(predicted, actual), "kendall_tau_ci95": [lo, hi],
            "spearman_rho": spearman_rho(predicted, actual), "topk": topk,
            "topk_hit_rate": topk_hit_rate(predicted, actual, topk)}


def summarize(scores: dict[str, dict], standalone: dict[str, list[dict]], topk: int, draws: int,
              seed: int = 0) -> dict:
    """The rank check's result: per architecture its fitness and standalone mAPs (fractions), the
    fitness's agreement with the seed-mean standalone mAP, and the seed-noise ceiling."""
    names = list(standalone)
    fitness = [scores[n]["map"] for n in names]
    mean = [float(np.mean([r["map"] for r in standalone[n]])) for n in names]
    out = {
        "archs": [{"arch": n, "supernet_map": scores[n]["map"], "supernet_ap50": scores[n]["ap50"],
                   "standalone_map": mean[i], "standalone_maps": [r["map"] for r in standalone[n]],
                   "standalone_ap50s": [r["ap50"] for r in standalone[n]]} for i, n in enumerate(names)],
        "fitness_vs_standalone": rank_agreement(fitness, mean, topk, draws, seed),
        "noise_ceiling": None,
    }
    seeds = min(len(r) for r in standalone.values())
    if seeds >= 2:
        first = [standalone[n][0]["map"] for n in names]
        second = [standalone[n][1]["map"] for n in names]
        out["noise_ceiling"] = rank_agreement(first, second, topk, draws, seed)
    out["verdict"] = rank_verdict(out["fitness_vs_standalone"], out["noise_ceiling"])
    return out


def rank_verdict(agree: dict, ceiling: dict | None) -> str:
    """In words: does the fitness rank like standalone training, by where tau's interval lies."""
    lo, hi = agree["kendall_tau_ci95"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "the fitness or the standalone mAPs are all equal: nothing to rank"
    noisy = ceiling is not None and ceiling["kendall_tau_ci95"][0] <= 0
    if lo > 0:
        return "the fitness ranks like standalone training (tau's interval lies above 0)"
    if hi < 0:  # seen on the demo, where a short retraining rewards how fast a network learns from scratch
        return ("the fitness ranks *against* standalone training (tau's interval lies below 0): the search "
                "prefers the networks that this retraining recipe trains worst")
    if noisy:
        return ("tau's interval spans 0, and two seeds of standalone training do not agree either (the noise "
                "ceiling's interval reaches 0): retrain longer, or more architectures, before judging the fitness")
    return "tau's interval spans 0: this check cannot tell whether the fitness ranks; check more architectures"


def plot_rank_check(summary: dict, path: Path) -> None:
    """Supernet fitness against standalone mAP, in %, one point per architecture, the seed range as a bar."""
    from matplotlib.figure import Figure

    rows = summary["archs"]
    x = [100 * r["supernet_map"] for r in rows]
    y = [100 * r["standalone_map"] for r in rows]
    lo = [100 * (r["standalone_map"] - min(r["standalone_maps"])) for r in rows]
    hi = [100 * (max(r["standalone_maps"]) - r["standalone_map"]) for r in rows]
    agree = summary["fitness_vs_standalone"]
    fig = Figure(figsize=(5.6, 4.4), dpi=110)
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=[lo, hi], fmt="o", ms=5, capsize=3, alpha=0.8)
    ax.set_xlabel("supernet mAP (%), search split")
    ax.set_ylabel("standalone mAP (%), test split, seed mean and range")
    title = f"Kendall tau {agree['kendall_tau']:.2f} [{agree['kendall_tau_ci95'][0]:.2f}, " \
            f"{agree['kendall_tau_ci95'][1]:.2f}], {len(rows)} architectures"
    if summary["noise_ceiling"] is not None:
        title += f"\nseed-noise ceiling tau {summary['noise_ceiling']['kendall_tau']:.2f}"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def run_rank_check(cfg: RankCheckStageConfig, out: Path, resume: bool,
                   known: dict[str, list[Path]] | None = None) -> dict:
    """Run (or continue, with ``resume``) the rank check in ``out``; returns the summary. ``known``:
    finished retrainings to reuse (see ``retrain_all``)."""
    out = Path(out)
    if not resume and broadcast_object(out.exists() and any(out.iterdir())):  # rank 0 looks, before anyone writes
        raise_exists(out)
    space = get_space(cfg.retrain.space, cfg.retrain.width_mult)
    included = included_archs(space, cfg)
    archs = plan_archs(space, cfg, included)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"archs": [arch_to_str(a) for a in archs], "included": cfg.include}, out / RANK_PLAN_FILE,
                          indent=2)
    scores = supernet_scores(cfg, archs, out)
    standalone = retrain_all(cfg, archs, out, known)
    summary = None
    if is_main():
        summary = summarize(scores, standalone, cfg.rank_check.topk, cfg.rank_check.bootstrap, cfg.search.seed)
        summary["included"] = [arch_to_str(a) for a in included]
        plot_rank_check(summary, out / RANK_CHECK_PNG)
        write_json_atomic(summary, out / RANK_CHECK_FILE, indent=2)  # last: marks the stage finished
        print_summary(summary)
    return broadcast_object(summary)


def print_summary(summary: dict) -> None:
    agree, ceiling = summary["fitness_vs_standalone"], summary["noise_ceiling"]
    lo, hi = agree["kendall_tau_ci95"]
    line = (f"rank-check: {len(summary['archs'])} architectures, Kendall tau {agree['kendall_tau']:.2f} "
            f"(95% CI {lo:.2f} to {hi:.2f}), Spearman rho {agree['spearman_rho']:.2f}, "
            f"top-{agree['topk']} hit rate {agree['topk_hit_rate']:.2f}")
    if ceiling is not None and math.isfinite(ceiling["kendall_tau"]):
        line += f"; seed-noise ceiling tau {ceiling['kendall_tau']:.2f}"
    print(f"{line}\nrank-check: {summary['verdict']}", flush=True)
