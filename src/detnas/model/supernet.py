"""One-shot supernet backbone and the standalone networks extracted from it.

A single class serves both: every searchable position holds an ``nn.ModuleList`` of candidate
blocks, all four in the supernet, only the chosen one in a standalone network. Only the block on
the path runs, so the unused choices get no gradient.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from detnas.model.blocks import ChoiceBlock, conv_bn
from detnas.model.layout import is_channels_last, same_layout
from detnas.model.space import NUM_CHOICES, Arch, SearchSpace, arch_to_str

STAGE_NAMES = ("c2", "c3", "c4", "c5")


class ShuffleNetBackbone(nn.Module):
    """ShuffleNetV2-style backbone over a search space.

    ``arch=None`` builds the supernet (all choices); a given ``arch`` builds the standalone network.
    Architectures are those of ``space``: users' text is checked once, where it comes in
    (``space.resolve_arch``), not again here.
    ``forward(x, arch)`` returns the stage outputs C2..C5 (strides 4/8/16/32) as an OrderedDict;
    ``classify(x, arch)`` adds the classification head (built when ``num_classes`` is set).
    """

    def __init__(
        self,
        space: SearchSpace,
        arch: Arch | None = None,
        num_classes: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.space = space
        self.fixed_arch = None if arch is None else tuple(arch)
        self.active_arch: Arch | None = self.fixed_arch  # path used when forward() gets none
        self.stage_channels = list(space.stage_channels)
        self.stem = conv_bn(3, space.stem_channels, 3, 2)
        self.blocks = nn.ModuleList()
        for spec in space.blocks():
            choices = range(NUM_CHOICES) if arch is None else [self.fixed_arch[spec.index]]
            self.blocks.append(
                nn.ModuleList(ChoiceBlock(c, spec.in_channels, spec.out_channels, spec.stride) for c in choices)
            )
        self._stage_ends = {end: name for end, name in zip(space.stage_last_block(), STAGE_NAMES)}
        self.num_classes = num_classes
        self.head = None
        if num_classes is not None:
            self.head = nn.Sequential(
                conv_bn(space.stage_channels[-1], space.last_channels),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
                nn.Dropout(dropout),
                nn.Linear(space.last_channels, num_classes),
            )

    @property
    def is_supernet(self) -> bool:
        return self.fixed_arch is None

    def _path(self, arch: Arch | None) -> list[int]:
        """Index into each position's ModuleList for ``arch``."""
        if self.fixed_arch is not None:
            if arch is not None and tuple(arch) != self.fixed_arch:
                raise ValueError(
                    f"this network is fixed to {arch_to_str(self.fixed_arch)}, got {arch_to_str(tuple(arch))}"
                )
            return [0] * len(self.blocks)
        arch = self.active_arch if arch is None else arch
        if arch is None:
            raise ValueError("the supernet needs an architecture: pass arch or set active_arch")
        if len(arch) != len(self.blocks):
            raise ValueError(f"architecture has {len(arch)} blocks, the supernet {len(self.blocks)}")
        return list(arch)

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> OrderedDict[str, torch.Tensor]:
        out = OrderedDict()
        if is_channels_last(self.stem.conv.weight):  # the input takes the network's layout (model/layout.py)
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        for i, choice in enumerate(self._path(arch)):
            x = self.blocks[i][choice](x)
            if i in self._stage_ends:
                out[self._stage_ends[i]] = x
        return out

    def classify(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        if self.head is None:
            raise ValueError("this backbone has no classification head (num_classes=None)")
        return self.head(self.forward(x, arch)["c5"])

    def path_modules(self, arch: Arch | None = None) -> list[nn.Module]:
        """The modules that run for ``arch``: stem, the chosen blocks, and the head if any."""
        mods = [self.stem] + [self.blocks[i][c] for i, c in enumerate(self._path(arch))]
        return mods + ([self.head] if self.head is not None else [])

    def subnet(self, arch: Arch, with_head: bool = True) -> ShuffleNetBackbone:
        """A standalone network of ``arch`` holding copies of this supernet's weights and BN statistics."""
        if not self.is_supernet:
            raise ValueError("subnet() extracts from a supernet; this network is already standalone")
        arch = tuple(arch)
        net = ShuffleNetBackbone(
            self.space, arch, self.num_classes if with_head else None,
            dropout=self.head[3].p if self.head is not None else 0.1,
        )
        state = path_state(self.state_dict(), arch)
        net.load_state_dict({k: v for k, v in state.items() if net.head is not None or not k.startswith("head.")})
        return same_layout(net, self).train(self.training)


def supernet_key_to_subnet(key: str, arch: Arch, prefix: str = "") -> str | None:
    """Map a supernet state-dict key to the standalone network's key (None if off the path).

    ``prefix`` is where the backbone sits in a larger model, e.g. ``backbone.body.`` in a detector.
    """
    if not key.startswith(prefix + "blocks."):
        return key
    position, choice, rest = key[len(prefix) + len("blocks."):].split(".", 2)
    if arch[int(position)] != int(choice):
        return None
    return f"{prefix}blocks.{position}.0.{rest}"


def path_state(state: dict, arch: Arch, prefix: str = "") -> dict:
    """The entries of a supernet state dict on ``arch``'s path, under the standalone network's keys."""
    keys = ((supernet_key_to_subnet(key, arch, prefix), value) for key, value in state.items())
    return {key: value for key, value in keys if key is not None}
