"""The report says in words whether the searched network beats the baseline by more than the seed spread,
and warns when the supernet itself did not learn."""

from detnas.stages.report import seed_verdict


def test_a_lead_larger_than_the_seed_spread_is_a_win():
    text = seed_verdict([0.30, 0.32], [0.25, 0.27])  # +5 AP, both with a standard deviation of 1.41 AP
    assert text.startswith("The searched network beats the ShuffleNetV2 baseline by 5.00 AP")
    assert "(1.41 AP, the larger standard deviation over 2 seeds)" in text


def test_a_lead_within_the_seed_spread_is_not():
    text = seed_verdict([0.30, 0.36], [0.29, 0.30])  # +3.5 AP against a standard deviation of 4.24 AP
    assert text.startswith("The searched network does not beat the ShuffleNetV2 baseline")
    assert "+3.50 AP against a spread of 4.24 AP" in text
    assert "does not beat" in seed_verdict([0.20, 0.21], [0.25, 0.26])  # behind the baseline


def test_one_seed_cannot_tell():
    assert "set `retrain.seeds` to 2 or more" in seed_verdict([0.30], [0.20])


def test_the_report_warns_when_the_supernet_is_near_chance_or_does_not_detect(tmp_path):
    import json

    from detnas.stages.report import _supernet

    for stage, metrics in (("pretrain", {"top1": {"0" * 20: 0.12, "3" * 20: 0.15}, "chance": 0.1}),
                           ("finetune", {"split": "search", "map": {"0" * 20: {"AP": 0.004, "AP50": 0.02}}})):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps(metrics))
    lines, warnings = _supernet(tmp_path)
    assert "| `00000000000000000000` | 12.0 | 0.4 | 2.0 |" in lines
    assert "| `33333333333333333333` | 15.0 | - | - |" in lines
    assert warnings == [
        "supernet pretraining is near chance (best path 15.0% top-1, chance 10.0%): the paths did not learn",
        "the finetuned supernet barely detects (best evaluated path 0.4 AP on the search split)",
    ]


def test_near_chance_is_judged_against_the_gap_to_perfect_for_every_class_count():
    from detnas.stages.report import near_chance

    # (classes, top-1 that learned something, top-1 that did not)
    for classes, learned, not_learned in ((2, 0.79, 0.53), (10, 0.25, 0.15), (1000, 0.15, 0.05)):
        chance = 1 / classes
        assert not near_chance(learned, chance), (classes, learned)
        assert near_chance(not_learned, chance), (classes, not_learned)


def test_the_verdict_against_the_random_search_names_it():
    text = seed_verdict([0.30, 0.33], [0.30, 0.31], "the random search best")  # +1 AP, spread 2.12
    assert text.startswith("The searched network does not beat the random search best by more than the seed spread")


def test_a_choice_that_does_not_win_says_what_limits_it(tmp_path):
    import json

    from detnas.stages.report import what_limits

    searched, baseline = "12" * 10, "0" * 20
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "history.jsonl").write_text(
        "\n".join(json.dumps({"arch": a, "map": m}) for a, m in ((searched, 0.21), ("3" * 20, 0.18))))
    (tmp_path / "random_search").mkdir()  # the baseline scored beside the winner by the fitness check
    (tmp_path / "random_search" / "fitness_check.json").write_text(json.dumps({"baseline": {"arch": baseline,
                                                                                           "map": 0.195}}))
    aps, archs = {"searched": [0.20, 0.22], "baseline": [0.21, 0.21]}, {"searched": searched, "baseline": baseline}
    text = what_limits(tmp_path, aps, archs)
    assert text.startswith("What limits the choice: in the supernet the searched path led the baseline by 1.50 AP")
    assert "moves a network's test AP by about 1.41" in text
    assert "not measured with one supernet: `supernets: 2`" in text
    # with an ensemble, the supernets' agreement over the search's candidates says it
    agreement = {"pairwise_tau": [[1.0, 0.2], [0.2, 1.0]], "mean_tau": 0.2, "supernets_needed": 12, "candidates": 24}
    (tmp_path / "search" / "fitness_check.json").write_text(json.dumps({"supernets": agreement}))
    assert "the 2 supernets agree on the 24 candidates' order at Kendall tau 0.20" in what_limits(tmp_path, aps, archs)
