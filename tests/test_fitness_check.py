"""The fitness check says in words when a search's winner means nothing."""

import pytest

from detnas.search.fitness_check import check_fitness


def history(maps):
    return [{"arch": f"{i:02d}", "map": m} for i, m in enumerate(maps)]


def test_all_zero_fitness_is_flagged_as_not_detecting_and_not_separating():
    check = check_fitness(history([0.0] * 10), lambda arch: 0.0)
    assert check["distinct_fraction"] == 0.1 and check["noise"] == 0.0 and check["margin"] == 0.0
    assert [w.split(" ")[0] for w in check["warnings"]] == ["every", "only", "the"]
    assert check["reevaluated"][0] == {"arch": "00", "map": 0.0, "map_again": 0.0}  # ties: by arch string


def test_a_fitness_that_ranks_gives_no_warning():
    maps = [0.30, 0.25, 0.20, 0.10, 0.05]
    again = {"00": 0.29, "01": 0.255, "02": 0.21}
    check = check_fitness(history(maps), again.__getitem__)
    assert check["warnings"] == []
    assert check["margin"] == pytest.approx(0.05) and check["noise"] == pytest.approx(0.01)
    assert [r["arch"] for r in check["reevaluated"]] == ["00", "01", "02"]


def test_a_lead_within_the_reevaluation_noise_is_flagged():
    maps = [0.30, 0.29, 0.10, 0.05, 0.01]
    check = check_fitness(history(maps), {"00": 0.27, "01": 0.29, "02": 0.10}.__getitem__)
    assert check["margin"] == pytest.approx(0.01) and check["noise"] == pytest.approx(0.03)
    assert len(check["warnings"]) == 1 and "within the fitness's re-evaluation noise" in check["warnings"][0]
    assert "1.00 AP" in check["warnings"][0] and "3.00 AP" in check["warnings"][0]  # AP in %, as people read it
