import numpy as np
import pytest
import torch

from detnas.model.flops import arch_cost, cost_table, count_macs, count_params, sample_arch
from detnas.model.space import ArchError, get_space, parse_arch, to_arch
from detnas.model.supernet import ShuffleNetBackbone

SMALL = get_space("small")


@pytest.mark.parametrize(
    "arch, body, full",
    [
        ("0" * 20, 262.71e6, 295.84e6),
        ("3" * 20, 325.69e6, 358.83e6),
        ("21202112331300313132", 288.08e6, 321.22e6),
    ],
)
def test_reference_flops_of_the_authors(arch, body, full):
    c = arch_cost(SMALL, parse_arch(arch, SMALL))
    # the authors' table gives two decimals in millions: within 0.005M, far inside 0.1%
    assert abs(c.body_flops - body) <= 0.005e6
    assert abs(c.full_flops - full) <= 0.005e6


@pytest.mark.parametrize(
    "space_name, width, size, num_classes",
    [("small", 1.0, 224, 1000), ("large", 1.0, 96, 10), ("large", 1.8, 64, 10), ("small", 0.5, (80, 112), 7)],
)
def test_analytic_equals_hook_count_and_params(space_name, width, size, num_classes):
    space = get_space(space_name, width)
    rng = np.random.default_rng(0)
    supernet = ShuffleNetBackbone(space, num_classes=num_classes).eval()
    h, w = (size, size) if isinstance(size, int) else size
    for _ in range(2):
        arch = to_arch(rng.integers(0, 4, space.num_blocks))
        cost = arch_cost(space, arch, size, num_classes)
        x = torch.randn(1, 3, h, w)
        assert count_macs(supernet, x, arch) == cost.body_flops
        assert count_macs(supernet, x, arch, method="classify") == cost.full_flops
        sub = supernet.subnet(arch)
        assert count_params(sub) == cost.full_params
        assert count_params(supernet.subnet(arch, with_head=False)) == cost.body_params


def test_space_range_is_attained_and_bounds_every_arch():
    table = cost_table(SMALL)
    lo, hi = table.body_range
    cheapest = to_arch(table.macs.argmin(1))
    dearest = to_arch(table.macs.argmax(1))
    assert arch_cost(SMALL, cheapest).body_flops == lo and arch_cost(SMALL, dearest).body_flops == hi
    # the cheapest net mixes choices: Xception is cheaper at stride 2 (its first 1x1 runs after the stride)
    assert len(set(cheapest)) > 1
    flops = table.body_macs_batch(np.random.default_rng(0).integers(0, 4, (5000, 20)))
    assert lo <= flops.min() and flops.max() <= hi


def test_batch_flops_match_single():
    rng = np.random.default_rng(1)
    archs = rng.integers(0, 4, (50, 20))
    batch = cost_table(SMALL).body_macs_batch(archs)
    assert [int(b) for b in batch] == [arch_cost(SMALL, tuple(map(int, a))).body_flops for a in archs]


def test_constrained_sampling_stays_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        arch = sample_arch(SMALL, rng, min_flops=280e6, max_flops=300e6)
        assert 280e6 <= arch_cost(SMALL, arch).body_flops <= 300e6


def test_constrained_sampling_is_roughly_uniform():
    # with no bound hit, every choice should appear about equally often at each position
    rng = np.random.default_rng(0)
    archs = np.array([sample_arch(SMALL, rng, max_flops=400e6) for _ in range(2000)])
    freq = np.stack([(archs == c).mean(0) for c in range(4)])
    assert np.abs(freq - 0.25).max() < 0.05


@pytest.mark.parametrize("lo, hi", [(None, 200e6), (400e6, None), (300e6, 290e6)])
def test_infeasible_range_fails_at_once_with_the_space_range(lo, hi):
    with pytest.raises(ArchError, match=r"the space spans \[237.22M, 365.47M\]"):
        sample_arch(SMALL, np.random.default_rng(0), lo, hi)


def test_too_narrow_range_fails_after_bounded_draws():
    lo, _ = cost_table(SMALL).body_range
    # only the all-cheapest architecture (1 of 4^20) meets this range
    with pytest.raises(ArchError, match="too narrow"):
        sample_arch(SMALL, np.random.default_rng(0), lo, lo + 1, max_draws=20000)
