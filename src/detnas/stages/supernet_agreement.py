"""Do supernets trained alike rank architectures alike? Kendall's tau between the fitness of every pair of
supernets on the same architectures, and what averaging them (an ensemble) buys.

If two supernets of one recipe order the architectures differently, the order is a property of the
training run, not of the architectures, and no single supernet's search can be trusted to choose. The
agreement needs no retraining: it is the cheap loop for supernet recipes (``detnas rank-check`` with
several ``--supernet`` and ``--seeds 0``).

``supernets_for_agreement`` extrapolates with the Spearman-Brown formula: tau is mapped to a Pearson
correlation with Greiner's relation (r = sin(pi tau / 2), exact for normal scores), the reliability of a
mean of K independent supernets is K r / (1 + (K - 1) r), and the answer is the smallest K whose
ensemble would agree with another such ensemble at the target tau. It assumes that the supernets' errors
are independent and equally large: a floor, not a promise.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Sequence

from detnas.stages.rank_stats import kendall_tau

# mean tau between supernets at which the fitness order counts as a property of the architectures
AGREE_TAU = 0.6


def pairwise_taus(fitness: Sequence[Sequence[float]]) -> list[list[float]]:
    """The matrix of tau between every two supernets' fitness (rows: supernets, columns: architectures)."""
    n = len(fitness)
    matrix = [[1.0] * n for _ in range(n)]
    for i, j in itertools.combinations(range(n), 2):
        matrix[i][j] = matrix[j][i] = kendall_tau(fitness[i], fitness[j])
    return matrix


def split_half_taus(fitness: Sequence[Sequence[float]]) -> list[float]:
    """Tau between the mean fitness of every two disjoint halves of the supernets (each split once)."""
    n = len(fitness)
    k = n // 2
    taus = []
    for a in itertools.combinations(range(n), k):
        b = tuple(i for i in range(n) if i not in a)[:k]
        if a < b:
            means = [[statistics.fmean(fitness[i][x] for i in g) for x in range(len(fitness[0]))] for g in (a, b)]
            taus.append(kendall_tau(*means))
    return taus


def supernets_for_agreement(tau: float, target: float = AGREE_TAU) -> int | None:
    """How many supernets an ensemble needs so that two such ensembles agree at ``target``, given the
    mean ``tau`` between single supernets (Spearman-Brown, see the module docstring); None when
    single supernets do not agree at all (tau <= 0)."""
    if not math.isfinite(tau) or tau <= 0:
        return None
    r, goal = math.sin(math.pi * tau / 2), math.sin(math.pi * min(target, 0.999) / 2)
    if r >= goal:
        return 1
    return math.ceil(goal * (1 - r) / (r * (1 - goal)) - 1e-9)


def supernet_agreement(fitness: Sequence[Sequence[float]]) -> dict:
    """Agreement of two or more supernets' fitness on the same architectures: the tau matrix, the mean
    and range of its off-diagonal entries, the split-half tau of ensembles (with 4 or more supernets),
    the ensemble size Spearman-Brown predicts for ``AGREE_TAU``, and a verdict in words."""
    matrix = pairwise_taus(fitness)
    off = [matrix[i][j] for i, j in itertools.combinations(range(len(fitness)), 2)]
    finite = [t for t in off if math.isfinite(t)]
    mean = statistics.fmean(finite) if finite else float("nan")
    halves = split_half_taus(fitness) if len(fitness) >= 4 else []
    need = supernets_for_agreement(mean)
    return {"pairwise_tau": matrix, "mean_tau": mean, "tau_range": [min(off), max(off)],
            "split_half_tau": halves, "supernets_needed": need, "verdict": agreement_verdict(mean, need)}


def agreement_verdict(mean_tau: float, need: int | None) -> str:
    if not math.isfinite(mean_tau):
        return "the supernets' fitness is all equal: nothing to compare"
    head = f"the supernets agree at mean tau {mean_tau:.2f}"
    if mean_tau >= AGREE_TAU:
        return f"{head} (>= {AGREE_TAU}): the fitness order is a property of the architectures"
    tail = ("they do not agree at all: the fitness order is the noise of one training run" if need is None else
            f"by Spearman-Brown, averaging the fitness of about {need} such supernets would be needed to reach "
            f"{AGREE_TAU}")
    return f"{head} (< {AGREE_TAU}): the fitness order is largely the training run's; {tail}"


def describe_agreement(agreement: dict) -> list[str]:
    """The agreement of ``supernet_agreement`` (with the rank check's taus against the standalone AP,
    when it has them) as sentences without their full stops, the verdict last."""
    lo, hi = agreement["tau_range"]
    text = (f"{len(agreement['pairwise_tau'])} supernets, Kendall tau between every two of their fitness orders: "
            f"mean {agreement['mean_tau']:.2f} (from {lo:.2f} to {hi:.2f})")
    halves = agreement["split_half_tau"]
    if halves:
        text += f", between the mean fitness of one half of them and the other's {sum(halves) / len(halves):.2f}"
    out = [text]
    if "ensemble_vs_standalone" in agreement:
        ensemble = agreement["ensemble_vs_standalone"]
        lo, hi = ensemble["kendall_tau_ci95"]
        out.append("each supernet's tau with the standalone AP: " + ", ".join(
            f"{t:.2f}" for t in agreement["each_vs_standalone"]) +
            f"; their mean fitness's: {ensemble['kendall_tau']:.2f} ({lo:.2f} to {hi:.2f})")
    return out + [agreement["verdict"]]


def search_agreement(history: list[dict]) -> dict:
    """``supernet_agreement`` of an ensemble search's supernets over every candidate it evaluated (each
    record's ``metrics.maps``), with their number. The candidates are the search's, not a uniform draw:
    an evolution's crowd near its best, where the order is hardest to tell."""
    fitness = [list(column) for column in zip(*(r["metrics"]["maps"] for r in history))]
    return {**supernet_agreement(fitness), "candidates": len(history)}


def describe_search_agreement(agreement: dict) -> str:
    """``search_agreement`` in one sentence, without its full stop."""
    tau, need = agreement["mean_tau"], agreement["supernets_needed"]
    k = len(agreement["pairwise_tau"])
    head = (f"the {k} supernets agree on the {agreement['candidates']} candidates' order at "
            f"{'' if k == 2 else 'mean '}Kendall tau {tau:.2f}")
    if not math.isfinite(tau):
        return f"the {k} supernets' fitness of the {agreement['candidates']} candidates is all equal"
    if need is None:
        return f"{head} (not at all: the order is each training run's noise)"
    if need <= 1:
        return f"{head} (>= {AGREE_TAU}: the order is the architectures')"
    return f"{head} (by Spearman-Brown, ensembles of about {need} supernets would agree with each other at {AGREE_TAU})"
