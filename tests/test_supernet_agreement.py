"""How several supernets' fitness orders agree (stages/supernet_agreement.py), on simulated supernets of
known noise: the tau matrix, the split-half tau of ensembles, and the Spearman-Brown extrapolation of how
many supernets an ensemble needs, checked against simulated ensembles of that size."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from detnas.stages.rank_stats import kendall_tau
from detnas.stages.supernet_agreement import (
    AGREE_TAU,
    describe_agreement,
    pairwise_taus,
    split_half_taus,
    supernet_agreement,
    supernets_for_agreement,
)


def test_the_matrix_holds_tau_between_every_two_supernets():
    fitness = [[1, 2, 3, 4], [1, 2, 4, 3], [4, 3, 2, 1]]
    m = pairwise_taus(fitness)
    assert m[0][0] == m[1][1] == m[2][2] == 1.0
    assert m[0][1] == m[1][0] == pytest.approx(4 / 6)  # one of six pairs swapped
    assert m[0][2] == pytest.approx(-1.0) and m[1][2] == pytest.approx(-4 / 6)
    out = supernet_agreement(fitness)
    assert out["mean_tau"] == pytest.approx((4 / 6 - 1 - 4 / 6) / 3)
    assert out["tau_range"] == pytest.approx([-1.0, 4 / 6])
    assert out["split_half_tau"] == [] and out["supernets_needed"] is None  # 3 supernets; no agreement at all
    assert "do not agree at all" in out["verdict"]


def test_split_halves_pair_every_split_of_four_once():
    rng = np.random.default_rng(0)
    fitness = rng.normal(size=(4, 9)).tolist()
    halves = split_half_taus(fitness)
    expected = []
    for a, b in (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))):
        means = [np.mean([fitness[i] for i in g], axis=0) for g in (a, b)]
        expected.append(kendall_tau(*means))
    assert halves == pytest.approx(expected)


def test_supernets_needed_by_spearman_brown():
    assert supernets_for_agreement(0.6) == 1 and supernets_for_agreement(0.9) == 1
    assert supernets_for_agreement(0.0) is None and supernets_for_agreement(-0.2) is None
    assert supernets_for_agreement(float("nan")) is None
    # r = sin(pi tau / 2): tau 0.16 -> r 0.249; the goal tau 0.6 -> r 0.809; K = 0.809 (1 - r) / (r (1 - 0.809))
    r, goal = math.sin(math.pi * 0.16 / 2), math.sin(math.pi * 0.6 / 2)
    assert supernets_for_agreement(0.16) == math.ceil(goal * (1 - r) / (r * (1 - goal))) == 13
    needs = [supernets_for_agreement(t) for t in (0.05, 0.1, 0.2, 0.3, 0.45)]
    assert needs == sorted(needs, reverse=True) and needs[-1] >= 2
    verdict = supernet_agreement([[1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5]])["verdict"]
    assert f">= {AGREE_TAU}" in verdict and "property of the architectures" in verdict


def test_the_extrapolation_holds_on_simulated_supernets():
    """Supernets = the architectures' true quality plus independent normal noise: the ensemble size
    predicted from single supernets' agreement makes two such ensembles agree at about the target."""
    rng = np.random.default_rng(1)
    archs, noise = 400, 1.7  # single supernets agree at tau ~0.2
    truth = rng.normal(size=archs)
    singles = [truth + noise * rng.normal(size=archs) for _ in range(4)]
    mean_tau = float(np.mean([kendall_tau(a, b) for a, b in itertools.combinations(singles, 2)]))
    assert 0.1 < mean_tau < 0.3
    k = supernets_for_agreement(mean_tau)
    assert 5 <= k <= 20

    def ensemble():
        return np.mean([truth + noise * rng.normal(size=archs) for _ in range(k)], axis=0)

    taus = [kendall_tau(ensemble(), ensemble()) for _ in range(5)]
    assert np.mean(taus) == pytest.approx(AGREE_TAU, abs=0.06)


def test_the_agreement_in_words_for_the_console_and_the_report():
    from detnas.stages.report import _supernet_agreement

    rng = np.random.default_rng(3)
    agreement = supernet_agreement(rng.normal(size=(4, 8)).tolist())
    agreement.update({"each_vs_standalone": [0.1, 0.2, -0.3, 0.4],
                      "ensemble_vs_standalone": {"kendall_tau": 0.25, "kendall_tau_ci95": [-0.1, 0.5]}})
    facts = describe_agreement(agreement)
    assert facts[0].startswith("4 supernets") and f"mean {agreement['mean_tau']:.2f}" in facts[0]
    assert "0.10, 0.20, -0.30, 0.40; their mean fitness's: 0.25 (-0.10 to 0.50)" == facts[1].split("AP: ")[1]
    assert facts[2] == agreement["verdict"]
    paragraph = _supernet_agreement(agreement)[0]
    assert paragraph.startswith("4 supernets") and ". Each supernet's tau" in paragraph
    assert paragraph.endswith(f"In words: {agreement['verdict']}.")
