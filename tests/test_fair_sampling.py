"""Fair sampling (FairNAS's strict fairness): every choice runs exactly once per four steps at every
position, the paths stay a pure function of (seed, step), and uniform sampling is unchanged."""

import numpy as np
import pytest

from detnas.config.schema import SamplingConfig
from detnas.errors import UserError
from detnas.model.space import NUM_CHOICES, get_space
from detnas.stages.train import path_for_step
from detnas.strict import validate

SPACE = get_space("small")


def test_every_choice_once_per_group_of_four_steps():
    fair = SamplingConfig(fair=True)
    for group in range(5):
        paths = np.array([path_for_step(SPACE, 3, group * NUM_CHOICES + k, fair) for k in range(NUM_CHOICES)])
        assert paths.shape == (NUM_CHOICES, SPACE.num_blocks)
        assert (np.sort(paths, axis=0) == np.arange(NUM_CHOICES)[:, None]).all()
    assert path_for_step(SPACE, 3, 9, fair) == path_for_step(SPACE, 3, 9, fair)  # resumable
    assert path_for_step(SPACE, 3, 9, fair) != path_for_step(SPACE, 4, 9, fair)


def test_uniform_sampling_is_unchanged():
    uniform = SamplingConfig()
    rng = np.random.default_rng([7, 11])
    assert path_for_step(SPACE, 7, 11, uniform) == tuple(int(c) for c in rng.integers(0, NUM_CHOICES, 20))


def test_fair_sampling_refuses_a_flops_range():
    with pytest.raises(UserError, match="fair sampling draws from the whole space"):
        validate(SamplingConfig, {"fair": True, "max_flops": 300e6}, "cfg")


def test_a_few_shot_prefix_fixes_the_first_choices_and_draws_the_rest_alike():
    """``sampling.prefix`` (a few-shot sub-supernet): the same draw as without it, its first choices
    replaced; under a FLOPs range, only paths of the range; a prefix that leaves nothing is one line."""
    from detnas.model.flops import cost_table
    from detnas.model.space import ArchError

    uniform, part = SamplingConfig(), SamplingConfig(prefix=[3, 1])
    for step in range(5):
        assert path_for_step(SPACE, 7, step, part) == (3, 1) + path_for_step(SPACE, 7, step, uniform)[2:]
    bounded = SamplingConfig(prefix=[3], max_flops=280e6)
    paths = [path_for_step(SPACE, 7, step, bounded) for step in range(30)]
    assert all(p[0] == 3 and cost_table(SPACE).body_macs(p) <= 280e6 for p in paths)
    with pytest.raises(ArchError, match="a prefix of 20 choices leaves nothing to draw"):
        path_for_step(SPACE, 7, 0, SamplingConfig(prefix=[0] * 20))
    with pytest.raises(UserError, match="leave min_flops, max_flops and prefix unset"):
        validate(SamplingConfig, {"fair": True, "prefix": [1]}, "cfg")
