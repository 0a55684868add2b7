"""The four choice blocks of the DetNAS search space, stride 1 and stride 2.

Built from torchvision's ``ConvNormActivation`` (conv without bias + BN [+ ReLU]), with the conv computed
by ``LeanConv2d`` (model/conv.py: less wasted work on the CPU's small feature maps).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import ConvNormActivation

from detnas.model.conv import LeanConv2d
from detnas.model.layout import is_channels_last
from detnas.model.space import CHOICE_KERNELS


class ConvBN(ConvNormActivation):
    """torchvision's conv (no bias) + BN [+ ReLU] with its layers named; state_dict keys stay ``0.*``, ``1.*``."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int, groups: int = 1,
                 activation_layer: type[nn.Module] | None = nn.ReLU):
        super().__init__(in_c, out_c, kernel, stride, groups=groups, activation_layer=activation_layer,
                         conv_layer=LeanConv2d)

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]


def conv_bn(in_c: int, out_c: int, kernel: int = 1, stride: int = 1, relu: bool = True) -> ConvBN:
    """A dense conv + BN (+ ReLU)."""
    return ConvBN(in_c, out_c, kernel, stride, activation_layer=nn.ReLU if relu else None)


def dw_bn(channels: int, kernel: int, stride: int = 1) -> ConvBN:
    """A depthwise conv + BN, no activation (as in ShuffleNetV2)."""
    return ConvBN(channels, channels, kernel, stride, groups=channels, activation_layer=None)


def _layer(i: int) -> property:
    """The ``i``-th layer of a ``Sequential`` under a name (the state_dict keeps the index)."""
    return property(lambda self: self[i])


class ShuffleBranch(nn.Sequential):
    """ShuffleNetV2's branch: pointwise in -> mid, depthwise k x k (the stride), pointwise mid -> out."""

    pw_in, dw, pw_out = _layer(0), _layer(1), _layer(2)


class XceptionBranch(nn.Sequential):
    """The Xception-style branch: three depthwise 3x3 + pointwise pairs (the first depthwise has the stride)."""

    dw1, pw1, dw2, pw2, dw3, pw3 = (_layer(i) for i in range(6))


def shuffle_branch(in_c: int, mid: int, out_c: int, kernel: int, stride: int) -> ShuffleBranch:
    return ShuffleBranch(conv_bn(in_c, mid), dw_bn(mid, kernel, stride), conv_bn(mid, out_c))


def xception_branch(in_c: int, mid: int, out_c: int, stride: int) -> XceptionBranch:
    return XceptionBranch(
        dw_bn(in_c, 3, stride), conv_bn(in_c, mid),
        dw_bn(mid, 3), conv_bn(mid, mid),
        dw_bn(mid, 3), conv_bn(mid, out_c),
    )


class _ChannelSplit(torch.autograd.Function):
    """(even channels, odd channels) of ``x``, whose gradient has the memory layout of ``x``.

    torch's own slicing builds its gradient NCHW whatever the layout, and everything before the split
    then got NCHW gradients in a channels-last network: ReLU's backward took 4x as long over a 32 px
    training step, and the convolutions' backward converted them (BENCHMARKS.md, throughput).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.shape, ctx.dtype, ctx.device = x.shape, x.dtype, x.device
        ctx.memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return x[:, 0::2], x[:, 1::2]

    @staticmethod
    def backward(ctx, even: torch.Tensor | None, odd: torch.Tensor | None) -> torch.Tensor:
        grad = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device, memory_format=ctx.memory_format)
        grad[:, 0::2] = 0 if even is None else even
        grad[:, 1::2] = 0 if odd is None else odd
        return grad


def channel_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel shuffle of the stride-1 block: (even channels, odd channels)."""
    return _ChannelSplit.apply(x)


class ChoiceBlock(nn.Module):
    """One ShuffleNetV2 unit with the branch of ``choice`` (0-2: kernel 3/5/7, 3: Xception).

    Stride 1: input C is split into halves; output = cat(x_proj, branch(x)), branch C/2 -> C/2.
    Stride 2: both branches see the whole input; output = cat(proj(x), branch(x)), branch
    outputs ``out_c - in_c`` channels so that the concatenation has ``out_c``.
    """

    def __init__(self, choice: int, in_c: int, out_c: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.choice, self.stride = choice, stride
        kernel = CHOICE_KERNELS[choice]
        mid = out_c // 2
        branch_in = in_c // 2 if stride == 1 else in_c
        branch_out = out_c - branch_in
        if choice == 3:
            self.branch = xception_branch(branch_in, mid, branch_out, stride)
        else:
            self.branch = shuffle_branch(branch_in, mid, branch_out, kernel, stride)
        self.proj = nn.Sequential(dw_bn(in_c, kernel, stride), conv_bn(in_c, in_c)) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            x_proj, x = channel_split(x)
            return torch.cat((x_proj, self.branch(x)), 1)
        return torch.cat((self.proj(x), self.branch(x)), 1)
