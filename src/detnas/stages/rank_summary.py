"""The rank check's result, from the scores and the retrainings: the fitness's agreement with standalone
training (Kendall tau and its interval, Spearman rho, top-k hits), the ceiling a perfect predictor is
expected to reach through the seed noise, zero-cost baselines, the agreement of several supernets
(``stages.supernet_agreement``), and a verdict in words. Pure numbers: ``stages.rank_check`` runs it.
"""

from __future__ import annotations

import math

import numpy as np

from detnas.model.space import CHOICE_NAMES
from detnas.stages.rank_stats import (
    kendall_tau,
    perfect_predictor_ceiling,
    seed_means,
    spearman_rho,
    tau_interval,
    topk_hit_rate,
)
from detnas.stages.supernet_agreement import describe_agreement, supernet_agreement

# The effect a verdict needs besides an interval clear of 0: |tau| at least this. At 0.3 three pairs in
# five are in the right order (concordant fraction (1 + tau) / 2 = 0.65): less would hardly steer a search.
MIN_TAU = 0.3


def rank_agreement(predicted: list[float], groups: list[list[float]], topk: int, draws: int, seed: int) -> dict:
    """Tau and rho of ``predicted`` against the seed means of ``groups``, tau's interval (architectures and
    seeds resampled), the top-k hit rate (ties count as their expected hits)."""
    mean = seed_means(groups)
    lo, hi = tau_interval(predicted, groups, draws, seed=seed)
    return {"kendall_tau": kendall_tau(predicted, mean), "kendall_tau_ci95": [lo, hi],
            "spearman_rho": spearman_rho(predicted, mean), "topk": min(topk, len(mean)),
            "topk_hit_rate": topk_hit_rate(predicted, mean, topk)}


def zero_cost_proxies(names: list[str], groups: list[list[float]], naswot: dict[str, float] | None, topk: int,
                      draws: int, seed: int) -> dict[str, dict]:
    """Tau of the ground truth with each zero-cost proxy: the number of blocks of each choice (either
    direction may predict: its strength is |tau|) and NASWOT (higher is better: its strength is tau)."""
    proxies = {f"blocks_{c}": (f"blocks of {c}", [n.count(str(i)) for n in names], "either")
               for i, c in enumerate(CHOICE_NAMES)}
    if naswot is not None:
        values = np.nan_to_num(np.asarray([naswot[n] for n in names], dtype=float), neginf=-1e300).tolist()
        proxies["naswot"] = ("NASWOT at initialisation", values, "higher is better")
    out = {}
    for key, (label, values, direction) in proxies.items():
        agree = rank_agreement(values, groups, topk, draws, seed)
        tau = agree["kendall_tau"]
        strength = abs(tau) if direction == "either" else tau
        out[key] = {"label": label, "direction": direction, "strength": strength if math.isfinite(tau) else None,
                    **agree}
    return out


def best_proxy(proxies: dict[str, dict]) -> dict | None:
    """The proxy of greatest strength (picked after seeing the truth, and with the sign that suits the
    block counts: a generous baseline), or None when none ranks."""
    ranked = [(p["strength"], key) for key, p in proxies.items() if p["strength"] is not None]
    if not ranked:
        return None
    strength, key = max(ranked)
    return {"name": key, "label": proxies[key]["label"], "kendall_tau": proxies[key]["kendall_tau"],
            "strength": strength}


def summarize(scores: dict[str, dict], standalone: dict[str, list[dict]], topk: int, draws: int,
              seed: int = 0, naswot: dict[str, float] | None = None, others: list[dict[str, dict]] = (),
              mean_checked: bool = False) -> dict:
    """The rank check's result: per architecture its fitness and standalone mAPs (fractions), the
    fitness's agreement with the seed-mean standalone mAP, the ceiling a perfect predictor is expected
    to reach, the zero-cost baselines, and the verdict. ``others``: more supernets' scores of the same
    architectures: their agreement with ``scores`` and with each other, each one's and their mean's tau
    with the standalone mAP. Without retrainings (every list in ``standalone`` empty), the supernets'
    agreement alone. ``mean_checked``: the fitness checked is the supernets' mean (a search over all of
    them, the pipeline's ``supernets``), not the first one's."""
    names = list(standalone)
    every = [[s[n]["map"] for n in names] for s in (scores, *others)]
    mean_checked = mean_checked and bool(others)
    ap50s = [[s[n]["ap50"] for n in names] for s in (scores, *others)]
    fitness, ap50 = (np.mean(v, axis=0).tolist() if mean_checked else v[0] for v in (every, ap50s))
    rows = [{"arch": n, "supernet_map": fitness[i], "supernet_ap50": ap50[i]} for i, n in enumerate(names)]
    out = {"archs": rows, "checked": f"mean of {len(every)} supernets" if mean_checked else "first supernet"}
    if others:
        for i, row in enumerate(rows):
            row["supernet_maps"] = [f[i] for f in every]
        out["supernets"] = supernet_agreement(every)
    groups = [[r["map"] for r in standalone[n]] for n in names]
    if not any(groups):
        out["verdict"] = out["supernets"]["verdict"]
        return out
    mean = seed_means(groups).tolist()
    for i, row in enumerate(rows):
        row.update({"standalone_map": mean[i], "standalone_maps": groups[i],
                    "standalone_ap50s": [r["ap50"] for r in standalone[names[i]]]})
        if naswot is not None:
            row["naswot"] = naswot[row["arch"]]
    out.update({
        "fitness_vs_standalone": rank_agreement(fitness, groups, topk, draws, seed),
        "ceiling": perfect_predictor_ceiling(groups, topk, draws, seed),
        "proxies": zero_cost_proxies(names, groups, naswot, topk, draws, seed),
    })
    if others:
        ensemble = np.mean(every, axis=0).tolist()
        out["supernets"]["each_vs_standalone"] = [kendall_tau(f, mean) for f in every]
        out["supernets"]["ensemble_vs_standalone"] = rank_agreement(ensemble, groups, topk, draws, seed)
    out["best_proxy"] = best_proxy(out["proxies"])
    tau = out["fitness_vs_standalone"]["kendall_tau"]
    out["fitness_beats_proxies"] = (None if out["best_proxy"] is None or not math.isfinite(tau)
                                    else tau > out["best_proxy"]["strength"])
    out["verdict"] = rank_verdict(out["fitness_vs_standalone"], out["ceiling"], out["best_proxy"])
    return out


def rank_verdict(agree: dict, ceiling: dict | None = None, proxy: dict | None = None) -> str:
    """In words: does the fitness rank like standalone training? "Like" needs tau >= ``MIN_TAU`` and its
    interval above 0, "against" the mirror image, anything else cannot tell (saying whether the effect
    is too weak, the interval spans 0, or the ground truth is too noisy for any fitness: a ``ceiling``
    below ``MIN_TAU``). A fitness whose tau does not pass the best zero-cost ``proxy``'s strength is flagged."""
    tau = agree["kendall_tau"]
    lo, hi = agree["kendall_tau_ci95"]
    if not all(math.isfinite(v) for v in (tau, lo, hi)):
        return "the fitness or the standalone mAPs are all equal: nothing to rank"
    if tau >= MIN_TAU and lo > 0:
        text = f"the fitness ranks like standalone training (tau {tau:.2f} >= {MIN_TAU}, its interval above 0)"
    elif tau <= -MIN_TAU and hi < 0:  # seen on the demo: a short retraining rewards how fast a net learns
        text = (f"the fitness ranks *against* standalone training (tau {tau:.2f} <= -{MIN_TAU}, its interval "
                "below 0): the search prefers the networks that this retraining recipe trains worst")
    else:
        why = (f"tau {tau:.2f} is clear of 0 but weaker than the {MIN_TAU} this check asks for" if lo > 0 or hi < 0
               else f"tau's interval ({lo:.2f} to {hi:.2f}) spans 0")
        text = f"cannot tell whether the fitness ranks like standalone training: {why}"
        if ceiling is None:
            text += "; with one seed per architecture the seed noise is unknown: retrain with 2 seeds or more"
        elif ceiling["kendall_tau"] < MIN_TAU:
            text += (f"; and the standalone mAPs are too noisy to judge any fitness: even a perfect predictor "
                     f"would be expected to reach only tau {ceiling['kendall_tau']:.2f} against their seed "
                     "mean: retrain longer, or with more seeds")
        else:
            text += "; check more architectures"
    if proxy is not None and not tau > proxy["strength"]:
        text += (f"; and it does not beat a zero-cost proxy: {proxy['label']} ranks the standalone mAPs at tau "
                 f"{proxy['kendall_tau']:.2f}")
    return text


def _interval(p: dict) -> str:
    lo, hi = p["kendall_tau_ci95"]
    return f"{p['kendall_tau']:.2f} ({lo:.2f} to {hi:.2f})"


def print_summary(summary: dict) -> None:
    lines = []
    if summary.get("supernets") is not None:
        lines += [f"rank-check: {sentence}" for sentence in describe_agreement(summary["supernets"])]
    agree, ceiling = summary.get("fitness_vs_standalone"), summary.get("ceiling")
    if agree is None:
        print("\n".join(lines), flush=True)
        return
    lo, hi = agree["kendall_tau_ci95"]
    lines.append(f"rank-check: {len(summary['archs'])} architectures, Kendall tau {agree['kendall_tau']:.2f}, 95% "
                 f"interval {lo:.2f} to {hi:.2f} (architectures and seeds resampled), "
                 f"Spearman rho {agree['spearman_rho']:.2f}, "
                 f"top-{agree['topk']} hit rate {agree['topk_hit_rate']:.2f}")
    if ceiling is not None:
        lo, hi = ceiling["kendall_tau_range90"]
        lines.append(f"rank-check: a perfect predictor would reach tau {ceiling['kendall_tau']:.2f} (90% of draws "
                     f"{lo:.2f} to {hi:.2f}) and top-{ceiling['topk']} hit rate {ceiling['topk_hit_rate']:.2f} against "
                     f"the seed mean (one seed's sd {100 * ceiling['seed_sd']:.2f} AP points, the architectures' "
                     f"{100 * ceiling['archs_sd']:.2f})")
    if summary.get("proxies"):
        lines.append("rank-check: zero-cost baselines, Kendall tau with the standalone mAP: " + ", ".join(
            f"{p['label']} {_interval(p)}" for p in summary["proxies"].values()))
    print("\n".join(lines) + f"\nrank-check: {summary['verdict']}", flush=True)
