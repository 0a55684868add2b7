"""``detnas rank-check``: does the finetuned supernet rank architectures the way standalone training does?

DetNAS rests on one assumption: a path's mAP inside the supernet (the search's fitness) orders
architectures as their mAP after training each one alone would. This stage measures it on the user's
own data: N architectures under the search's budget (the configured ones first, e.g. the search's best
and the baseline, then uniform draws), each scored with the search's fitness and retrained with the
retraining recipe (``seeds`` times), then Kendall's tau and Spearman's rho between the fitness and the
seed-mean standalone mAP, tau's interval (architectures and seeds resampled: ``rank_stats.tau_interval``),
the top-k hit rate and a scatter plot, next to

- the ceiling the seed noise puts on tau: what a perfect predictor (the true mean mAP) is expected to
  reach against the same seed means (``rank_stats.perfect_predictor_ceiling``); a fitness may pass it
  by chance, and a ceiling below ``MIN_TAU`` means the ground truth is too noisy to judge any fitness;
- zero-cost baselines: tau of the same ground truth with the number of blocks of each choice, and with
  NASWOT at initialisation (``model.zero_cost``); a fitness that does not beat the best of them is flagged;
- a verdict in words, which needs an effect (``|tau| >= MIN_TAU``) as well as an interval clear of 0.

Files in the run folder: ``rank_plan.json`` (the architectures, and the recipe each retraining was
started with), ``rank_scores.json`` (their fitness, with what it was computed from),
``nets/<arch>/seed<k>/`` (retraining runs), ``rank_check.png``, and ``rank_check.json`` last. Rerunning
continues: finished retrainings are kept, and scores are recomputed only when the supernet or the
fitness settings changed, so several supernet recipes can be compared on the same retrained networks by
pointing them at the same folder. A retraining made with another retrain recipe (anything but
``RECIPE_FREE``) is refused before anything runs, with a one-line error naming its folder: one ground
truth is one recipe, and a retraining is too dear to redo silently. Finished retrainings without a
record (made before records, or the pipeline's own) are checked once against their checkpoint's config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detnas.atomic import write_json_atomic
from detnas.config.runs import (
    CHECKPOINT,
    RANK_CHECK_FILE,
    RANK_CHECK_PNG,
    RANK_PLAN_FILE,
    RESULT_FILE,
    RETRAIN_DETECTOR_DIR,
    TRAINING_RESUMABLE,
    config_changes,
    is_finished,
    raise_exists,
    rank_net_dir,
    rank_scores_file,
)
from detnas.config.schema import RankCheckStageConfig, RetrainConfig
from detnas.distributed import broadcast_object, is_main, map_in_rounds
from detnas.errors import UserError
from detnas.model.flops import sample_arch
from detnas.model.space import Arch, SearchSpace, arch_to_str, get_space, resolve_arch
from detnas.search.constraints import check_constraints
from detnas.stages.rank_summary import print_summary, summarize
from detnas.stages.retrain import run_retrain
from detnas.stages.run_guard import guarded_run

# keys of a retraining's config that do not change what it computes: the training's own resume rule,
# where its pretraining checkpoint lies, and how many workers decode its pretraining images
RECIPE_FREE = (*TRAINING_RESUMABLE, "init", "pretrain.data.workers")


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


def supernet_scores(cfg: RankCheckStageConfig, supernet: Path, archs: list[Arch], path: Path) -> dict[str, dict]:
    """The search's fitness of each architecture in ``supernet``, shared out over the workers; reused from
    ``path`` (its scores file) when computed from the same supernet, split and fitness settings."""
    from detnas.stages.search import SupernetEvaluator

    evaluator = SupernetEvaluator(supernet, cfg.fitness)
    identity = evaluator.identity()
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


def planned_runs(cfg: RankCheckStageConfig, archs: list[Arch], out: Path,
                 known: dict[str, list[Path]] | None = None) -> list[tuple[Arch, RetrainConfig, Path]]:
    """Each retraining of the plan: its architecture, its seed's config and its folder (a finished one of
    ``known`` when there is one, else ``nets/<arch>/seed<k>``)."""
    runs = []
    for arch in archs:
        elsewhere = (known or {}).get(arch_to_str(arch), [])
        for k in range(cfg.rank_check.seeds):
            seed_cfg = cfg.retrain.model_copy(update={"seed": cfg.retrain.seed + k})
            run_dir = elsewhere[k] if k < len(elsewhere) and is_finished(elsewhere[k]) else \
                rank_net_dir(out, arch_to_str(arch), k)
            runs.append((arch, seed_cfg, run_dir))
    return runs


def _record_key(out: Path, run_dir: Path) -> str:
    """A retraining's key in ``rank_plan.json``: its folder, relative to the rank check's when inside."""
    try:
        return Path(run_dir).relative_to(out).as_posix()
    except ValueError:
        return str(run_dir)


def recipe_mismatch(run_dir: Path, recipe: dict, recorded: dict | None) -> str | None:
    """How the recipe that made the retraining in ``run_dir`` differs from ``recipe`` (a seed's retrain
    config, as JSON), or None. Its recipe is the one recorded when it started; a finished one without a
    record is checked against the config saved in its detector checkpoint; an unrecorded unfinished one
    passes (the training refuses to resume an interrupted run with another config by itself)."""
    if recorded is None:
        if not is_finished(run_dir):
            return None
        checkpoint = Path(run_dir) / RETRAIN_DETECTOR_DIR / CHECKPOINT
        if not checkpoint.exists():
            return "unknown: no record of it and no checkpoint"
        from detnas.checkpoint import load_checkpoint

        recorded = load_checkpoint(checkpoint).get("config", {})
    changed = config_changes(recorded, recipe, RECIPE_FREE)
    return f"differs in {', '.join(changed)}" if changed else None


def check_recipes(runs: list[tuple[Arch, RetrainConfig, Path]], records: dict[str, dict], out: Path) -> None:
    """Refuse, before anything runs, a retraining of the plan made with another recipe: a one-line
    ``UserError`` naming its folder. Rank 0 looks; every worker raises."""
    def first_mismatch() -> tuple[str, str] | None:
        for _, seed_cfg, run_dir in runs:
            why = recipe_mismatch(run_dir, seed_cfg.model_dump(mode="json"), records.get(_record_key(out, run_dir)))
            if why:
                return (f"this retraining was made with another retrain recipe ({why}): rerun with the recipe "
                        "it was made with, or choose another --out"), str(run_dir)
        return None

    problem = broadcast_object(first_mismatch() if is_main() else None)
    if problem is not None:
        raise UserError(*problem)


def write_plan(out: Path, archs: list[Arch], include: list[str], records: dict[str, dict]) -> None:
    write_json_atomic({"archs": [arch_to_str(a) for a in archs], "included": include, "retrainings": records},
                      out / RANK_PLAN_FILE, indent=2)


def retrain_all(cfg: RankCheckStageConfig, archs: list[Arch], out: Path, known: dict[str, list[Path]] | None = None,
                records: dict[str, dict] | None = None) -> dict[str, list[dict]]:
    """Each architecture trained alone ``seeds`` times (finished runs are read back, an interrupted
    one continues): its test metrics per seed. ``known[arch][k]``: a finished retraining of ``arch``
    with seed ``retrain.seed + k`` made elsewhere (the pipeline's), used when its recipe is the same.
    ``records`` (rank 0): each retraining's recipe, added to ``rank_plan.json`` before it starts."""
    results = {arch_to_str(a): [] for a in archs}

    def record(run_dir: Path, seed_cfg: RetrainConfig) -> None:
        if is_main() and records is not None and _record_key(out, run_dir) not in records:
            records[_record_key(out, run_dir)] = seed_cfg.model_dump(mode="json")
            write_plan(out, archs, cfg.include, records)

    for i, (arch, seed_cfg, run_dir) in enumerate(planned_runs(cfg, archs, out, known)):
        name = arch_to_str(arch)
        if is_finished(run_dir) or not run_dir.exists():  # checked, or about to start: an interrupted
            record(run_dir, seed_cfg)  # run without a record is recorded once it has finished
        if is_finished(run_dir):
            result = json.loads((run_dir / RESULT_FILE).read_text())
        else:
            if is_main():
                print(f"rank-check: {name} seed {seed_cfg.seed} ({i // cfg.rank_check.seeds + 1}/{len(archs)})",
                      flush=True)
            result = run_retrain(arch, seed_cfg, run_dir, resume=True, pretrain=seed_cfg.pretrain is not None)
            record(run_dir, seed_cfg)
        results[name].append({"seed": seed_cfg.seed, "map": result["test"]["AP"], "ap50": result["test"]["AP50"]})
    return results


def naswot_scores(cfg: RankCheckStageConfig, archs: list[Arch]) -> dict[str, float]:
    """NASWOT of each architecture's standalone backbone at initialisation (``model.zero_cost``), seeded
    with the retraining's seed."""
    from detnas.model.zero_cost import naswot_score

    space = get_space(cfg.retrain.space, cfg.retrain.width_mult)
    return {arch_to_str(a): naswot_score(space, a, seed=cfg.retrain.seed) for a in archs}


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
    if summary.get("ceiling") is not None:
        title += f"\na perfect predictor's expected tau {summary['ceiling']['kendall_tau']:.2f}"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def run_rank_check(cfg: RankCheckStageConfig, out: Path, resume: bool,
                   known: dict[str, list[Path]] | None = None, mean_checked: bool = False) -> dict:
    """Run (or continue, with ``resume``) the rank check in ``out``; returns the summary. ``known``:
    finished retrainings to reuse (see ``retrain_all``); ``mean_checked``: check the mean fitness of the
    supernets (the fitness of a search over all of them) instead of the first one's."""
    out = Path(out)
    if not resume and broadcast_object(out.exists() and any(out.iterdir())):  # rank 0 looks, before anyone writes
        raise_exists(out)
    with guarded_run(out):  # the folder's lock; stop signals stop its retrainings at a checkpoint
        return _rank_check(cfg, out, known, mean_checked)


def _rank_check(cfg: RankCheckStageConfig, out: Path, known: dict[str, list[Path]] | None,
                mean_checked: bool) -> dict:
    space = get_space(cfg.retrain.space, cfg.retrain.width_mult)
    included = included_archs(space, cfg)
    archs = plan_archs(space, cfg, included)
    plan = out / RANK_PLAN_FILE
    records = (json.loads(plan.read_text()) if is_main() and plan.exists() else {}).get("retrainings", {})
    check_recipes(planned_runs(cfg, archs, out, known), records, out)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_plan(out, archs, cfg.include, records)
    supernets = [cfg.supernet, *cfg.other_supernets]
    scores, *others = [supernet_scores(cfg, s, archs, rank_scores_file(out, k)) for k, s in enumerate(supernets)]
    retrains = cfg.rank_check.seeds > 0  # none: the supernets' agreement alone
    standalone = retrain_all(cfg, archs, out, known, records) if retrains else {arch_to_str(a): [] for a in archs}
    summary = None
    if is_main():
        summary = summarize(scores, standalone, cfg.rank_check.topk, cfg.rank_check.bootstrap, cfg.search.seed,
                            naswot=naswot_scores(cfg, archs) if retrains else None, others=others,
                            mean_checked=mean_checked)
        summary["included"] = [arch_to_str(a) for a in included]
        if others:
            summary["supernets"]["folders"] = [str(s) for s in supernets]
        if retrains:
            plot_rank_check(summary, out / RANK_CHECK_PNG)
        write_json_atomic(summary, out / RANK_CHECK_FILE, indent=2)  # last: marks the stage finished
        print_summary(summary)
    return broadcast_object(summary)
