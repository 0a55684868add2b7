"""The report says in words whether the searched network beats the baseline by more than the seed spread."""

from detnas.report import seed_verdict


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
