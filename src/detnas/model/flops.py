"""FLOPs (multiply-accumulates) and parameters, analytically and by hooks on real modules.

Convention (the DetNAS paper's): MACs of Conv2d and Linear only; BN, ReLU and bias are not counted.
"Body" = stem + searchable blocks; "full" = body + last 1x1 conv + a ``num_classes``-way linear.
The analytic counter builds a per-position cost table once per (space, input size), so checking a
candidate against a budget is a table look-up, never a model copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detnas.model.space import (
    CHOICE_KERNELS,
    NUM_CHOICES,
    Arch,
    ArchError,
    BlockSpec,
    SearchSpace,
    to_arch,
)


def _out_size(size: int, stride: int) -> int:
    # "same" padding with an odd kernel: ceil(size / stride)
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class Conv:
    """A conv layer as the counter sees it: channels, kernel, groups, output size."""

    in_c: int
    out_c: int
    kernel: int
    out_h: int
    out_w: int
    groups: int = 1

    @property
    def macs(self) -> int:
        return self.out_h * self.out_w * self.out_c * (self.in_c // self.groups) * self.kernel**2

    @property
    def params(self) -> int:
        # conv weight + BN affine (every conv of the network is followed by BN)
        return self.out_c * (self.in_c // self.groups) * self.kernel**2 + 2 * self.out_c


def block_convs(choice: int, spec: BlockSpec, h: int, w: int) -> list[Conv]:
    """The convs of one choice block, in the order of ``blocks.ChoiceBlock``."""
    s, k = spec.stride, CHOICE_KERNELS[choice]
    oh, ow = _out_size(h, s), _out_size(w, s)
    mid = spec.out_channels // 2
    b_in = spec.in_channels // 2 if s == 1 else spec.in_channels
    b_out = spec.out_channels - b_in
    if choice == 3:
        convs = [
            Conv(b_in, b_in, 3, oh, ow, b_in), Conv(b_in, mid, 1, oh, ow),
            Conv(mid, mid, 3, oh, ow, mid), Conv(mid, mid, 1, oh, ow),
            Conv(mid, mid, 3, oh, ow, mid), Conv(mid, b_out, 1, oh, ow),
        ]
    else:
        convs = [Conv(b_in, mid, 1, h, w), Conv(mid, mid, k, oh, ow, mid), Conv(mid, b_out, 1, oh, ow)]
    if s == 2:
        c = spec.in_channels
        convs += [Conv(c, c, k, oh, ow, c), Conv(c, c, 1, oh, ow)]
    return convs


@dataclass(frozen=True)
class CostTable:
    """Per-position MACs and params of every choice, for one space and input size."""

    stem_macs: int
    stem_params: int
    macs: np.ndarray  # (num_blocks, NUM_CHOICES) int64
    params: np.ndarray  # (num_blocks, NUM_CHOICES) int64
    head_macs: int  # last conv + classifier
    head_params: int
    c5_size: tuple[int, int]

    def body_macs(self, arch: Arch) -> int:
        return self.stem_macs + int(self.macs[np.arange(len(arch)), list(arch)].sum())

    def body_params(self, arch: Arch) -> int:
        return self.stem_params + int(self.params[np.arange(len(arch)), list(arch)].sum())

    def body_macs_batch(self, archs: np.ndarray) -> np.ndarray:
        """Body MACs of many architectures at once: ``archs`` is (n, num_blocks)."""
        return self.stem_macs + self.macs[np.arange(archs.shape[1]), archs].sum(1)

    @property
    def body_range(self) -> tuple[int, int]:
        """Smallest and largest body MACs of any architecture of the space."""
        return self.stem_macs + int(self.macs.min(1).sum()), self.stem_macs + int(self.macs.max(1).sum())


def _size_hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


@functools.lru_cache(maxsize=64)
def cost_table(space: SearchSpace, input_size: int | tuple[int, int] = 224, num_classes: int = 1000) -> CostTable:
    h, w = _size_hw(input_size)
    h, w = _out_size(h, 2), _out_size(w, 2)
    stem = Conv(3, space.stem_channels, 3, h, w)
    specs = space.blocks()
    macs = np.zeros((len(specs), NUM_CHOICES), np.int64)
    params = np.zeros_like(macs)
    for spec in specs:
        for c in range(NUM_CHOICES):
            convs = block_convs(c, spec, h, w)
            macs[spec.index, c] = sum(v.macs for v in convs)
            params[spec.index, c] = sum(v.params for v in convs)
        h, w = _out_size(h, spec.stride), _out_size(w, spec.stride)
    last = Conv(space.stage_channels[-1], space.last_channels, 1, h, w)
    fc_macs = space.last_channels * num_classes
    return CostTable(
        stem.macs, stem.params, macs, params,
        head_macs=last.macs + fc_macs, head_params=last.params + fc_macs + num_classes, c5_size=(h, w),
    )


@dataclass(frozen=True)
class Cost:
    body_flops: int
    full_flops: int
    body_params: int
    full_params: int


def arch_cost(
    space: SearchSpace, arch: Arch, input_size: int | tuple[int, int] = 224, num_classes: int = 1000
) -> Cost:
    """Body and full MACs and params of ``arch``, an architecture of ``space`` (``space.resolve_arch``
    checks what users give, once), with a ``num_classes``-way classifier for "full"."""
    t = cost_table(space, input_size, num_classes)
    body, params = t.body_macs(arch), t.body_params(arch)
    return Cost(body, body + t.head_macs, params, params + t.head_params)


def sample_arch(
    space: SearchSpace,
    rng: np.random.Generator,
    min_flops: float | None = None,
    max_flops: float | None = None,
    input_size: int | tuple[int, int] = 224,
    max_draws: int = 1_000_000,
    prefix: tuple[int, ...] = (),
) -> Arch:
    """A uniformly random architecture whose body MACs lie in [min_flops, max_flops] and whose first
    blocks' choices are ``prefix`` (a few-shot sub-supernet's part of the space).

    Rejection sampling is exactly uniform over the feasible set; draws are vectorised so that even a
    narrow range costs little. A range outside the space's achievable one fails at once. An empty
    ``prefix`` draws exactly what it drew before there was one.
    """
    n = space.num_blocks
    if len(prefix) >= n:
        raise ArchError(f"a prefix of {len(prefix)} choices leaves nothing to draw in the {n} blocks of the "
                        f"{space.describe()} space")
    if min_flops is None and max_flops is None:
        return to_arch(_with_prefix(rng.integers(0, NUM_CHOICES, n), prefix))
    table = cost_table(space, input_size)
    lo_space, hi_space = table.body_range
    lo = -np.inf if min_flops is None else min_flops
    hi = np.inf if max_flops is None else max_flops
    if lo > hi or hi < lo_space or lo > hi_space:
        raise ArchError(
            f"no architecture of the {space.describe()} space has body FLOPs in "
            f"[{_fmt(lo)}, {_fmt(hi)}]: the space spans [{_fmt(lo_space)}, {_fmt(hi_space)}] "
            f"at input {input_size}"
        )
    batch = 8192
    for _ in range(max(1, max_draws // batch)):
        found = first_within(table, _with_prefix(rng.integers(0, NUM_CHOICES, (batch, n)), prefix), lo, hi)
        if found is not None:
            return found
    raise ArchError(
        f"body FLOPs range [{_fmt(lo)}, {_fmt(hi)}] is too narrow{' for the prefix ' if prefix else ''}"
        f"{''.join(map(str, prefix))}: no architecture found in "
        f"{max_draws} uniform draws (the space spans [{_fmt(lo_space)}, {_fmt(hi_space)}])"
    )


def _with_prefix(archs: np.ndarray, prefix: tuple[int, ...]) -> np.ndarray:
    archs[..., : len(prefix)] = prefix
    return archs


def first_within(table: CostTable, archs: np.ndarray, lo: float, hi: float) -> Arch | None:
    """The first row of ``archs`` (n, num_blocks) with body MACs in [lo, hi]: one vectorised step of
    rejection sampling."""
    flops = table.body_macs_batch(archs)
    hits = np.flatnonzero((flops >= lo) & (flops <= hi))
    return to_arch(archs[hits[0]]) if hits.size else None


def fmt_millions(v: float) -> str:
    """``288.08M``: how FLOPs and params are shown to the user."""
    return f"{v / 1e6:.2f}M"


def _fmt(v: float) -> str:
    return "-inf" if v == -np.inf else "inf" if v == np.inf else fmt_millions(v)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, *inputs, method: str = "forward", **kwargs) -> int:
    """Per-image MACs of the Conv2d and Linear layers that ``module.<method>(*inputs)`` runs (hooks)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            getattr(module, method)(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total
