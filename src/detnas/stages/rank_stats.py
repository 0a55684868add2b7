"""How well one scoring of architectures ranks them like another: Kendall's tau-b, Spearman's rho,
confidence intervals, the top-k hit rate, and the ceiling that the seed noise of the ground truth
puts on any of them.

The ground truth is each architecture's standalone mAP over several training seeds (``groups``: one
list of per-seed values per architecture), compared through its seed mean. Small and exact (numpy
only): a rank check has tens of architectures, not thousands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

_CHUNK = 256  # bootstrap draws whose pairwise signs are held in memory at once


def kendall_tau_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``x`` against the same row of ``y`` (2-D, same shape); nan for
    a row in which either is constant."""
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    i, j = np.triu_indices(x.shape[1], 1)
    out = np.full(len(x), np.nan)
    for start in range(0, len(x), _CHUNK):
        rows = slice(start, start + _CHUNK)
        dx, dy = np.sign(x[rows, i] - x[rows, j]), np.sign(y[rows, i] - y[rows, j])
        pairs = np.count_nonzero(dx, axis=1) * np.count_nonzero(dy, axis=1)
        defined = pairs > 0
        out[rows][defined] = (dx * dy).sum(axis=1)[defined] / np.sqrt(pairs[defined])
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either list are allowed); nan when either list is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"lists of different lengths: {len(x)} and {len(y)}")
    return float(kendall_tau_rows(x[None], y[None])[0])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the (tie-averaged) ranks; nan for a constant list."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    stat: Callable[[np.ndarray, np.ndarray], float], x: Sequence[float], y: Sequence[float],
    draws: int = 2000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``stat(x, y)`` over architectures resampled with replacement (draws
    where the statistic is undefined, e.g. all picks of one architecture, are left out). Resamples
    the architectures only: for a ground truth with seeds, ``tau_interval`` carries their noise too."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    values = np.asarray([stat(x[idx], y[idx]) for idx in rng.integers(0, len(x), (draws, len(x)))])
    return _percentiles(values, level)


def _groups(groups: Sequence[Sequence[float]]) -> list[np.ndarray]:
    out = [np.asarray(g, dtype=float) for g in groups]
    if any(len(g) == 0 for g in out):
        raise ValueError("every architecture needs at least one seed")
    return out


def seed_means(groups: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray([g.mean() for g in _groups(groups)])


def seed_variance(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The pooled within-architecture variance of one training seed, and its degrees of freedom
    (sum of seeds - 1 over the architectures; 0, with variance nan, when none has two seeds)."""
    groups = _groups(groups)
    dof = sum(len(g) - 1 for g in groups)
    if dof == 0:
        return float("nan"), 0
    return float(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof), dof


def resampled_means(groups: Sequence[Sequence[float]], picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each pick of an architecture (``picks``: indices into ``groups``, any shape), the mean of its
    seeds resampled with replacement, drawn anew for every pick."""
    out = np.empty(picks.shape)
    for i, g in enumerate(_groups(groups)):
        where = picks == i
        if where.any():
            out[where] = g[rng.integers(0, len(g), (int(where.sum()), len(g)))].mean(axis=1)
    return out


def tau_interval(predicted: Sequence[float], groups: Sequence[Sequence[float]], draws: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of Kendall's tau between ``predicted`` and the seed means of ``groups``,
    by a two-level (hierarchical) bootstrap: the architectures are resampled with replacement, and each
    pick's seeds are resampled with replacement within it, so that the interval carries the seed noise
    of the ground truth as well as the choice of architectures. (With one seed per architecture it is
    the plain bootstrap over architectures. With S seeds the within-level draws add (S-1)/S of a seed
    mean's noise variance on top of the one realisation the data already hold: the interval errs wide,
    and it centres slightly towards 0, the safe side for a verdict.) Undefined draws are left out."""
    x = np.asarray(predicted, dtype=float)
    groups = _groups(groups)
    if len(x) != len(groups):
        raise ValueError(f"lists of different lengths: {len(x)} and {len(groups)}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), (draws, len(x)))
    return _percentiles(kendall_tau_rows(x[picks], resampled_means(groups, picks, rng)), level)


def perfect_predictor_ceiling(groups: Sequence[Sequence[float]], topk: int, draws: int = 2000,
                              seed: int = 0) -> dict | None:
    """What a perfect predictor (each architecture's true mean standalone mAP) is expected to reach
    against the seed means the fitness is compared with: the ceiling the seed noise puts on tau (and
    on the top-k hit rate). None when no architecture has two seeds (the noise is unknown).

    Estimator: the noise of architecture i's seed mean is the pooled within-architecture variance of
    one seed (``seed_variance``, all seeds of all architectures) divided by its number of seeds S_i.
    The true means are unknown, and the observed means spread wider than they do (by that noise), so
    simulating around the observed means would overstate the ceiling (12 architectures, 2 seeds, seed
    sd twice the architectures' sd: 0.57 where a perfect predictor gets 0.39). The means are therefore
    shrunk towards their average until their variance is the method-of-moments estimate of the
    architectures' own variance, var(means) - mean noise, with the ratio noise/var(means) scaled by
    (n-3)/(n-1) to undo its bias (E[1/var] is (n-1)/(n-3) times 1/E[var] for normal means). Noisy
    copies of these shrunk means are drawn ``draws`` times, and the mean tau (and hit rate) of the
    shrunk means against them is the ceiling. In simulations (6 to 30 architectures, 2 or 3 seeds,
    seed sd from 1/4 to 4 times the architectures' sd) it lies within about 0.03 of a perfect
    predictor's expected tau, erring high when the noise dominates a few architectures. When the seed
    noise explains all of the means' spread the ceiling is 0 (and the hit rate chance, k/n): no ranking
    of these architectures can be told from noise.

    ``kendall_tau_range90`` is the middle 90% of the simulated taus: how far one rank check's tau of a
    perfect predictor would wander."""
    groups = _groups(groups)
    variance, dof = seed_variance(groups)
    if dof == 0:
        return None
    n = len(groups)
    k = min(topk, n)
    means = seed_means(groups)
    noise = variance / np.asarray([len(g) for g in groups])  # each seed mean's noise variance
    spread = float(means.var(ddof=1))
    ratio = (n - 3) / (n - 1) * noise.mean() / spread if spread > 0 else math.inf
    shrink = math.sqrt(max(0.0, 1.0 - ratio))
    out = {"kendall_tau": 0.0, "kendall_tau_range90": [0.0, 0.0], "topk": k, "topk_hit_rate": k / n,
           "seed_sd": math.sqrt(variance), "archs_sd": shrink * math.sqrt(spread),
           "seeds": sorted({len(g) for g in groups}), "seed_dof": dof}
    if shrink == 0 or not (variance > 0):
        if variance == 0 and spread > 0:  # the seeds agree exactly: the means are the truth
            out.update({"kendall_tau": 1.0, "kendall_tau_range90": [1.0, 1.0], "topk_hit_rate": 1.0})
        return out
    truth = means.mean() + shrink * (means - means.mean())
    rng = np.random.default_rng(seed)
    observed = truth + rng.normal(0.0, np.sqrt(noise), (draws, n))
    taus = kendall_tau_rows(np.broadcast_to(truth, observed.shape), observed)
    out["kendall_tau"] = float(np.nanmean(taus))
    out["kendall_tau_range90"] = list(_percentiles(taus, 0.9))
    top = np.argsort(-observed, axis=1)[:, :k]  # the noisy means have no ties (almost surely)
    out["topk_hit_rate"] = float(_top_probability(truth, k)[top].sum(axis=1).mean() / k)
    return out


def _top_probability(v: Sequence[float], k: int) -> np.ndarray:
    """Each item's probability of being among the ``k`` largest of ``v`` when ties at the boundary are
    broken at random: 1 above the k-th value, the free places shared evenly among those tied at it."""
    v = np.asarray(v, dtype=float)
    threshold = np.sort(v)[::-1][k - 1]
    above, tied = v > threshold, v == threshold
    p = above.astype(float)
    p[tied] = (k - above.sum()) / tied.sum()
    return p


def topk_hit_rate(predicted: Sequence[float], actual: Sequence[float], k: int) -> float:
    """The expected fraction of the ``k`` best by ``predicted`` that are among the ``k`` best by
    ``actual``, ties broken at random (independently in each): the sum over the architectures of the
    product of their two probabilities of being picked, over k. Exact; an all-tied prediction scores
    k/n, chance, whatever the order of the list."""
    k = min(k, len(predicted))
    return float(_top_probability(predicted, k) @ _top_probability(actual, k) / k)
