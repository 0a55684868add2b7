"""How well one scoring of architectures ranks them like another: Kendall's tau-b, Spearman's rho,
a bootstrap confidence interval over the architectures, and the top-k hit rate.

Small and exact (numpy only): a rank check has tens of architectures, not thousands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either list are allowed); nan when either list is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"lists of different lengths: {len(x)} and {len(y)}")
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs_x, pairs_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if pairs_x == 0 or pairs_y == 0:
        return float("nan")
    return float((dx * dy).sum() / np.sqrt(pairs_x * pairs_y))


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


def bootstrap_ci(
    stat: Callable[[np.ndarray, np.ndarray], float], x: Sequence[float], y: Sequence[float],
    draws: int = 2000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``stat(x, y)`` over architectures resampled with replacement (draws
    where the statistic is undefined, e.g. all picks of one architecture, are left out)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    values = [stat(x[idx], y[idx]) for idx in rng.integers(0, len(x), (draws, len(x)))]
    values = np.asarray([v for v in values if np.isfinite(v)])
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def topk_hit_rate(predicted: Sequence[float], actual: Sequence[float], k: int) -> float:
    """The fraction of the ``k`` best by ``predicted`` that are among the ``k`` best by ``actual``
    (ties broken by position, the same way for both)."""
    k = min(k, len(predicted))
    best = lambda v: set(np.argsort(-np.asarray(v, dtype=float), kind="stable")[:k].tolist())  # noqa: E731
    return len(best(predicted) & best(actual)) / k
