import numpy as np
import pytest
import torch

from detnas.model.flops import count_params
from detnas.model.space import get_space, to_arch
from detnas.model.supernet import STAGE_NAMES, ShuffleNetBackbone


def random_archs(space, n, seed):
    rng = np.random.default_rng(seed)
    return [to_arch(rng.integers(0, 4, space.num_blocks)) for _ in range(n)]


def randomize_bn(module, seed):
    """Non-trivial BN statistics and affine parameters, so that copying them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("space_name", ["small", "large"])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_subnet_equals_supernet_path(space_name, num_classes):
    torch.manual_seed(0)
    space = get_space(space_name)
    supernet = ShuffleNetBackbone(space, num_classes=num_classes)
    randomize_bn(supernet, 1)
    supernet.eval()
    x = torch.randn(2, 3, 64, 96)
    for arch in random_archs(space, 3, seed=len(space_name)):
        subnet = supernet.subnet(arch)
        assert not subnet.training and not subnet.is_supernet
        with torch.no_grad():
            feats_super, feats_sub = supernet(x, arch), subnet(x)
            assert list(feats_sub) == list(STAGE_NAMES)
            for name in STAGE_NAMES:
                assert torch.equal(feats_super[name], feats_sub[name])
            if num_classes is not None:
                assert torch.equal(supernet.classify(x, arch), subnet.classify(x))
        # the standalone network holds exactly the path's parameters
        path_params = sum(count_params(m) for m in supernet.path_modules(arch))
        assert count_params(subnet) == path_params


def test_stage_outputs_have_strides_4_to_32():
    space = get_space("small")
    net = ShuffleNetBackbone(space).eval()
    feats = net(torch.randn(1, 3, 64, 128), (0,) * 20)
    shapes = [tuple(f.shape[1:]) for f in feats.values()]
    assert shapes == [(64, 16, 32), (160, 8, 16), (320, 4, 8), (640, 2, 4)]


def test_only_the_path_gets_gradients():
    space = get_space("small")
    net = ShuffleNetBackbone(space, num_classes=10)
    arch = random_archs(space, 1, seed=3)[0]
    net.classify(torch.randn(2, 3, 32, 32), arch).sum().backward()
    for i, block in enumerate(net.blocks):
        for c, choice in enumerate(block):
            has_grad = [p.grad is not None for p in choice.parameters()]
            assert all(has_grad) if c == arch[i] else not any(has_grad)


def test_active_arch_and_errors():
    space = get_space("small")
    net = ShuffleNetBackbone(space).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="needs an architecture"):
        net(x)
    net.active_arch = (1,) * 20
    assert torch.equal(net(x)["c5"], net(x, (1,) * 20)["c5"])
    sub = net.subnet((1,) * 20)
    with pytest.raises(ValueError, match="fixed to"):
        sub(x, (0,) * 20)
    with pytest.raises(ValueError, match="has no classification head"):
        net.classify(x)
