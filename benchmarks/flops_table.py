"""Print the FLOPs/params table of every preset, analytic and checked by hooks on the real modules.

Usage: .venv/bin/python benchmarks/flops_table.py
"""

import torch

from detnas.model.flops import arch_cost, count_macs, count_params
from detnas.model.space import PRESETS, parse_arch
from detnas.model.supernet import ShuffleNetBackbone


def main() -> None:
    print("| preset | space | body MACs | full MACs | params | hook count == analytic | ")
    print("|---|---|---|---|---|---|")
    for p in PRESETS.values():
        space = p.search_space()
        arch = parse_arch(p.arch, space)
        cost = arch_cost(space, arch)
        net = ShuffleNetBackbone(space, arch, num_classes=1000).eval()
        hooked = count_macs(net, torch.zeros(1, 3, 224, 224), method="classify")
        same = hooked == cost.full_flops and count_params(net) == cost.full_params
        print(
            f"| {p.name} | {space.describe()} | {cost.body_flops / 1e6:.2f}M | {cost.full_flops / 1e6:.2f}M "
            f"| {cost.full_params / 1e6:.3f}M | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
