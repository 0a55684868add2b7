"""Zero-cost proxies: what an untrained network says about how well it will train, as a baseline that a
supernet's fitness should beat (the rank check puts them side by side).

NASWOT (Mellor, Turner, Storkey and Crowley, "Neural Architecture Search without Training", ICML 2021):
pass one minibatch through the network at initialisation, read each ReLU unit's on/off state per image
as a binary code, and score ``log det K`` where ``K[i, j]`` is the number of units on which images i and
j agree (units minus the Hamming distance of their codes). A network whose units separate the images
well scores high.
"""

from __future__ import annotations

import torch
from torch import nn

from detnas.model.space import Arch, SearchSpace
from detnas.model.supernet import ShuffleNetBackbone


def naswot_score(space: SearchSpace, arch: Arch, images: int = 32, size: int = 64, seed: int = 0) -> float:
    """NASWOT of the standalone backbone of ``arch`` (stem and chosen blocks, no detector) initialised
    with ``seed``, on ``images`` random images (standard normal, the scale of normalised inputs) of
    ``size`` x ``size`` drawn from ``seed``: deterministic, and cheap (a fraction of a second on a CPU
    for the small space). BatchNorm normalises with the batch's statistics, as at the start of training.
    The global random state is left as it was; -inf when ``K`` is singular (two images coded alike)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ShuffleNetBackbone(space, arch).train()
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    agree = torch.zeros(images, images, dtype=torch.float64)  # units both images switch on
    on = torch.zeros(images, dtype=torch.float64)  # units each image switches on
    units = 0

    def read_codes(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal units
        codes = (output > 0).flatten(1).to(torch.float32)  # sums of 0/1 stay exact below 2**24
        agree.add_((codes @ codes.T).to(torch.float64))
        on.add_(codes.sum(1).to(torch.float64))
        units += codes.shape[1]

    hooks = [m.register_forward_hook(read_codes) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    # agreements = units - hamming, hamming(i, j) = on_i + on_j - 2 * both_on(i, j)
    kernel = units - on[:, None] - on[None, :] + 2 * agree
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("-inf")
