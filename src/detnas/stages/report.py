"""``report.md`` of a pipeline run: every number is read from the files the stages wrote."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from detnas.atomic import write_text_atomic
from detnas.config.runs import (
    BEST_FILE,
    CHECKPOINT,
    FINETUNE_DIR,
    FITNESS_CHECK_FILE,
    GALLERY_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    PARETO_PNG,
    PRETRAIN_DIR,
    PROGRESS_PNG,
    RANK_CHECK_DIR,
    RANK_CHECK_FILE,
    REPORT_FILE,
    RESULT_FILE,
    RETRAIN_DETECTOR_DIR,
    SEARCH_DIRS,
    retrain_dir,
)
from detnas.search.fitness_check import NEAR_ZERO_MAP, read_warnings
from detnas.stages.supernet_agreement import describe_agreement, describe_search_agreement

GALLERY_IMAGES = 3  # test images shown with the searched and the baseline detections
GALLERY_SCORE = 0.3  # the gallery draws detections scoring at least this
NAMES = {"searched": "DetNAS (evolution)", "random": "random search best", "baseline": "ShuffleNetV2 baseline"}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(v: float | None) -> str:
    return "-" if v is None or v < 0 else f"{100 * v:.1f}"


def _search_map(out: Path, arch: str) -> float | None:
    """The architecture's fitness (search-split mAP on the supernet) if a search evaluated it, or scored
    it beside its winner (the baseline, in the fitness check)."""
    for folder in SEARCH_DIRS.values():
        path = out / folder / HISTORY_FILE
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["arch"] == arch:
                    return record["map"]
    for folder in SEARCH_DIRS.values():
        baseline = (_read(out / folder / FITNESS_CHECK_FILE) or {}).get("baseline") or {}
        if baseline.get("arch") == arch:
            return baseline["map"]
    return None


def _supernet(out: Path) -> tuple[list[str], list[str]]:
    """The supernet's own numbers (pretraining top-1, finetuning AP per evaluated path) as report lines,
    and the warnings they call for: a supernet that did not learn makes every later number meaningless."""
    lines, warnings = [], []
    pre = _read(out / PRETRAIN_DIR / METRICS_FILE)
    ft = _read(out / FINETUNE_DIR / METRICS_FILE)
    if pre is None and ft is None:
        return lines, warnings
    lines += ["## Supernet", "", "Each evaluated path of the supernet, after BN recalibration (in %).", "",
              "| path | pretraining top-1 | finetuning AP | AP50 |", "|---|---:|---:|---:|"]
    top1 = (pre or {}).get("top1", {})
    maps = (ft or {}).get("map", {})
    for arch in dict.fromkeys([*top1, *maps]):
        m = maps.get(arch, {})
        lines.append(f"| `{arch}` | {_pct(top1.get(arch))} | {_pct(m.get('AP'))} | {_pct(m.get('AP50'))} |")
    lines.append("")
    chance = (pre or {}).get("chance")
    best_top1 = max(top1.values(), default=None)
    if chance is not None and best_top1 is not None and near_chance(best_top1, chance):
        warnings.append(f"supernet pretraining is near chance (best path {_pct(best_top1)}% top-1, "
                        f"chance {_pct(chance)}%): the paths did not learn")
    best_ap = max((m["AP"] for m in maps.values()), default=None)
    if best_ap is not None and best_ap < NEAR_ZERO_MAP:
        warnings.append(f"the finetuned supernet barely detects (best evaluated path {_pct(best_ap)} AP on the "
                        f"{ft.get('split', 'search')} split)")
    return lines, warnings


def near_chance(top1: float, chance: float) -> bool:
    """Did a classifier close less than a tenth of the gap between chance and 100% top-1? (A multiple of
    chance would flag every two-class task: 79% against 50% chance learned something.)"""
    return top1 < chance + 0.1 * (1 - chance)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def beats(searched: list[float], other: list[float]) -> bool:
    """Does ``searched`` lead ``other`` by more than the larger seed standard deviation (2+ seeds each)?"""
    if len(searched) < 2 or len(other) < 2:
        return False
    (m_s, sd_s), (m_o, sd_o) = _mean_std(searched), _mean_std(other)
    return m_s - m_o > max(sd_s, sd_o)


def what_limits(out: Path, aps: dict[str, list[float]], archs: dict[str, str]) -> str:
    """Why the searched network did not win, from what this run measured: the lead the supernet gave it,
    the spread of the deployment's seeds, and whether the supernet's order is the architectures' (the
    agreement of several supernets, ``supernets``) or one training run's (not measured with one)."""
    searched_map, baseline_map = _search_map(out, archs["searched"]), _search_map(out, archs["baseline"])
    facts = []
    if searched_map is not None and baseline_map is not None:
        facts.append(f"in the supernet the searched path led the baseline by {100 * (searched_map - baseline_map):.2f} "
                     "AP (search split)")
    spread = max(_mean_std(aps["searched"])[1], _mean_std(aps["baseline"])[1])
    facts.append(f"one seed of the deployment's training moves a network's test AP by about {100 * spread:.2f}")
    agreement = (_read(out / SEARCH_DIRS["evolution"] / FITNESS_CHECK_FILE) or {}).get("supernets")
    if agreement is not None:
        order = describe_search_agreement(agreement)
    else:
        order = ("whether the supernet's order of architectures is theirs or this training run's is not measured "
                 "with one supernet: `supernets: 2` or more trains several alike and reports how they agree "
                 "(BENCHMARKS.md has the demo recipe's figures), and `rank_check:` compares the fitness with "
                 "standalone training")
    return "What limits the choice: " + "; ".join(facts + [order]) + "."


def seed_verdict(searched: list[float], baseline: list[float], other: str = "the ShuffleNetV2 baseline") -> str:
    """Does the searched network beat ``other`` (the baseline, or the random search's best) by more than
    the seed spread? In words, AP in %."""
    if len(searched) < 2 or len(baseline) < 2:
        return ("With one seed per network, the difference cannot be told from seed noise: set "
                "`retrain.seeds` to 2 or more.")
    (m_s, sd_s), (m_b, sd_b) = _mean_std(searched), _mean_std(baseline)
    spread = max(sd_s, sd_b)
    diff = m_s - m_b
    if beats(searched, baseline):
        return (f"The searched network beats {other} by {100 * diff:.2f} AP, more than the seed "
                f"spread ({100 * spread:.2f} AP, the larger standard deviation over {min(len(searched), len(baseline))}"
                " seeds).")
    return (f"The searched network does not beat {other} by more than the seed spread: "
            f"{100 * diff:+.2f} AP against a spread of {100 * spread:.2f} AP (the larger standard deviation over "
            f"{min(len(searched), len(baseline))} seeds).")


def _retrained(out: Path, seeds: int, inherit: bool) -> list[str]:
    """The retrained networks' test AP as mean +- standard deviation over seeds, and the verdict."""
    lines = [
        "## Retrained architectures (test split)", "",
        "| model | architecture | body FLOPs | body params | search mAP | test AP (mean ± std) | AP50 | AP75 "
        "| seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    aps, archs = {}, {}
    for name, label in NAMES.items():
        results = [r for r in (_read(retrain_dir(out, name, k) / RESULT_FILE) for k in range(seeds)) if r is not None]
        if not results:
            continue
        first = results[0]
        archs[name] = first["arch"]
        test = {key: [r["test"][key] for r in results] for key in ("AP", "AP50", "AP75")}
        aps[name] = test["AP"]
        mean, std = _mean_std(test["AP"])
        lines.append(
            f"| {label} | `{first['arch']}` | {first['body_flops'] / 1e6:.1f}M | {first['body_params'] / 1e6:.2f}M "
            f"| {_pct(_search_map(out, first['arch']))} | {_pct(mean)} ± {_pct(std)} "
            f"| {_pct(statistics.fmean(test['AP50']))} | {_pct(statistics.fmean(test['AP75']))} | {len(results)} |"
        )
    start = ("finetuning the standalone network from its path's supernet weights" if inherit else
             "retraining the standalone network from random weights")
    lines += ["", "Search mAP is the path's mAP on the held-out search split with supernet weights after BN "
              f"recalibration; test AP is after {start} (seeds: its number of trainings with different seeds).", ""]
    if "searched" in aps and "baseline" in aps:
        lines += [f"**{seed_verdict(aps['searched'], aps['baseline'])}**", ""]
        if not beats(aps["searched"], aps["baseline"]):
            lines += [what_limits(out, aps, archs), ""]
    if "searched" in aps and "random" in aps:  # did the evolution find more than random sampling would?
        lines += [f"**{seed_verdict(aps['searched'], aps['random'], 'the random search best')}**", ""]
    return lines


def gallery(out: Path, test_source) -> list[str]:
    """The first test images with the searched and the baseline detectors' detections side by side (the
    drawn images go to ``gallery/``), as report lines; none when a retrained detector is missing."""
    from detnas.artifacts.predict import detect, draw
    from detnas.artifacts.weights import load_trained_detector
    from detnas.data.sources import load_detection

    names = ("searched", "baseline")
    checkpoints = [retrain_dir(out, name, 0) / RETRAIN_DETECTOR_DIR / CHECKPOINT for name in names]
    if test_source is None or not all(c.exists() for c in checkpoints):
        return []
    paths = [r.path for r in load_detection(test_source).records[:GALLERY_IMAGES]]
    (out / GALLERY_DIR).mkdir(exist_ok=True)
    cells = {path: [] for path in paths}
    for name, checkpoint in zip(names, checkpoints):
        detector, info = load_trained_detector(checkpoint)
        for k, path in enumerate(paths):
            image, found = detect(detector, info, path, GALLERY_SCORE)
            target = f"{GALLERY_DIR}/{name}-{k}.png"
            draw(image, found, info["classes"]).save(out / target)
            cells[path].append(f"![{name}: {len(found['scores'])} detections]({target})")
    lines = ["## Detections on test images", "",
             f"Seed-0 retrained detectors, detections scoring at least {GALLERY_SCORE:g}.", "",
             f"| image | {NAMES['searched']} | {NAMES['baseline']} |", "|---|---|---|"]
    lines += [f"| {path.name} | {' | '.join(row)} |" for path, row in cells.items()]
    return lines + [""]


def _supernet_agreement(agreement: dict | None) -> list[str]:
    """How several supernets' fitness orders agree (rank checks with more than one ``--supernet``)."""
    if agreement is None:
        return []
    *facts, verdict = describe_agreement(agreement)
    return [" ".join(f"{fact[0].upper()}{fact[1:]}." for fact in facts) + f" In words: {verdict}.", ""]


def _ensemble(search: Path) -> list[str]:
    """With several supernets (``supernets``): the search's fitness is their mean, and how they agree."""
    agreement = (_read(search / FITNESS_CHECK_FILE) or {}).get("supernets")
    if agreement is None:
        return []
    text = describe_search_agreement(agreement)
    return [f"The search mAP is the mean of {len(agreement['pairwise_tau'])} supernets' fitness (the Supernet "
            f"section shows the first one); {text}.", ""]


def _rank_check(out: Path) -> list[str]:
    """The rank check's agreement (tau with its interval, the ceiling the seed noise puts on it, the
    zero-cost baselines) and its table."""
    summary = _read(out / RANK_CHECK_DIR / RANK_CHECK_FILE)
    if summary is None:
        return []
    agreement = _supernet_agreement(summary.get("supernets"))
    if "fitness_vs_standalone" not in summary:  # several supernets, no retraining
        return ["## Rank check: do the supernets agree?", "", *agreement]
    agree, ceiling = summary["fitness_vs_standalone"], summary.get("ceiling")  # rank checks before it: none
    lo, hi = agree["kendall_tau_ci95"]
    how = ", architectures and seeds resampled" if "ceiling" in summary else ""
    hits = f"{agree['topk_hit_rate'] * agree['topk']:.1f}".removesuffix(".0")  # ties: a fraction of a hit
    # ``detnas rank-check`` with several --supernet checks the first one's fitness (their mean's tau is in the
    # agreement below); the pipeline with ``supernets`` > 1 checks their mean, the search's fitness
    checked = summary.get("checked", "first supernet")
    if checked.startswith("mean"):
        whose = f"the search's fitness (the {checked})"
    else:
        whose = "the first supernet's fitness" if summary.get("supernets") else "the search's fitness"
    text = (f"Over {len(summary['archs'])} architectures, {whose} ranks them against their "
            f"standalone test mAP (seed mean) with Kendall tau {agree['kendall_tau']:.2f} (95% bootstrap interval "
            f"{lo:.2f} to {hi:.2f}{how}), Spearman rho {agree['spearman_rho']:.2f}; {hits} of its top "
            f"{agree['topk']} are among the standalone top {agree['topk']} (ties counted as their expected share).")
    if ceiling is not None:
        text += (f" Given the seed-to-seed spread of standalone training, a perfect predictor (each architecture's "
                 f"true mean AP) would be expected to reach tau {ceiling['kendall_tau']:.2f} against the seed mean.")
    proxies = summary.get("proxies") or {}
    if proxies:
        text += " Zero-cost baselines, tau with the same standalone AP: " + ", ".join(
            f"{p['label']} {p['kendall_tau']:.2f}" for p in proxies.values()) + "."
        if summary.get("fitness_beats_proxies") is False:
            text += f" **The fitness does not beat the best of them ({summary['best_proxy']['label']}).**"
    if "verdict" in summary:  # rank checks written before the verdict existed have none
        text += f" In words: {summary['verdict']}."
    lines = ["## Rank check: does the supernet rank like standalone training?", "", text, "", *agreement,
             "| architecture | supernet AP | standalone AP (seed mean) | per seed |", "|---|---:|---:|---|"]
    for r in sorted(summary["archs"], key=lambda r: -r["supernet_map"]):
        mark = " (included)" if r["arch"] in summary.get("included", []) else ""
        seeds = " / ".join(_pct(v) for v in r["standalone_maps"])
        lines.append(f"| `{r['arch']}`{mark} | {_pct(r['supernet_map'])} | {_pct(r['standalone_map'])} | {seeds} |")
    return lines + ["", "![supernet mAP against standalone mAP](rank_check/rank_check.png)", ""]


def write_report(out: Path, seconds: dict[str, float], cfg, wall: float | None = None) -> Path:
    out = Path(out)
    lines = [
        "# DetNAS run report", "",
        f"Space: {cfg.space} (width x{cfg.width_mult:g}), detector: {cfg.detector.kind}, seed {cfg.seed}. "
        f"Search: {cfg.search.population} x {cfg.search.generations} candidates, body FLOPs budget "
        f"{'none' if cfg.search.max_flops is None else f'{cfg.search.max_flops / 1e6:.0f}M'} (MACs at 224x224). "
        "AP and top-1 are in %.", "",
    ]
    supernet_lines, warnings = _supernet(out)
    for strategy, label in (("evolution", "search (evolution)"), ("random", "random search")):
        warnings += [f"{label}: {w}" for w in read_warnings(out / SEARCH_DIRS[strategy])]
    if warnings:
        lines += ["## Warnings", "", "**The search result below should not be trusted:**", ""]
        lines += [f"- {w}" for w in warnings] + [""]
    lines += _retrained(out, cfg.retrain.seeds, cfg.retrain.inherit)
    lines += gallery(out, cfg.detection.test)
    lines += supernet_lines
    search = SEARCH_DIRS["evolution"]
    best = _read(out / search / BEST_FILE)
    history = out / search / HISTORY_FILE
    if best is not None and history.exists():
        n = sum(1 for _ in history.read_text().splitlines())
        lines += [
            "## Search", "",
            f"{n} architectures evaluated; best `{best['arch']}` with search mAP {_pct(best['map'])} "
            f"at {best['flops'] / 1e6:.1f}M body FLOPs.", "", *_ensemble(out / search),
            f"![best and mean top-k mAP per generation]({search}/{PROGRESS_PNG})", "",
            f"![mAP against FLOPs, Pareto front marked]({search}/{PARETO_PNG})", "",
        ]
    lines += _rank_check(out)
    lines += ["## Time per stage", "", "| stage | minutes |", "|---|---:|"]
    lines += [f"| {stage} | {s / 60:.1f} |" for stage, s in seconds.items()]
    # stages side by side (lanes.py) overlap: the total is the pipeline's own wall-clock time
    lines += [f"| total (wall clock) | {(sum(seconds.values()) if wall is None else wall) / 60:.1f} |", ""]
    path = out / REPORT_FILE
    write_text_atomic(path, "\n".join(lines))
    return path
