"""The FPN Faster R-CNN's multi-level RoIAlign on the CPU as one gather.

torchvision's CPU RoIAlign is scalar code: with its backward it took about a sixth of a demo finetuning
step, which runs 1.37x as fast with this one (1 thread; ``benchmarks/throughput.py``, BENCHMARKS.md). Each
output bin is the mean of ``sampling_ratio``² bilinear samples, i.e. a weighted sum of 4 x
``sampling_ratio``² feature vectors; ``F.embedding_bag`` sums them from the pyramid's levels seen as one
(pixels, channels) table (for channels-last maps each level's part of it is a free view). Its backward
is the same kind of gather run the other way (``_WeightedGather``). The sample points, their clamping at
the borders and the bilinear weights are torchvision's (``aligned=False``, as ``MultiScaleRoIAlign`` uses
it), so the two agree to float rounding (``tests/test_channels_last.py``). Inference takes as long either
way.

It reuses two private helpers of ``torchvision.ops.poolers`` (how a pooler finds its feature maps and
its levels' scales). A torchvision without them runs its own RoIAlign, slower on the CPU but the same
(``tests/test_packaging.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign

try:
    from torchvision.ops.poolers import LevelMapper, _filter_input, _setup_scales
except ImportError:  # private in torchvision: another version may move them
    LevelMapper = _filter_input = _setup_scales = None


def _axis(v: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's bilinear_interpolate along one axis: (inside, low, high, weight of low, of high)."""
    inside = (v >= -1.0) & (v <= size)
    v = v.clamp(min=0)
    low = v.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, size - 1, low)
    high = torch.where(edge, size - 1, low + 1)
    frac = torch.where(edge, 0.0, v - low)
    return inside, low, high, 1 - frac, frac


def sample_table(rois: Tensor, scale: Tensor, height: Tensor, width: Tensor, base: Tensor,
                 output_size: tuple[int, int], sampling_ratio: int) -> tuple[Tensor, Tensor]:
    """For every RoI bin, the rows of the feature table its samples read and their weights:
    ``(R * oh * ow, 4 * sr * sr)`` each. ``rois`` (R, 4) in image pixels; per RoI: ``scale`` of its
    level, ``height``/``width`` of its map, ``base``: the table row of its map's pixel (0, 0)."""
    oh, ow = output_size
    sr = sampling_ratio
    r = rois.shape[0]
    x1, y1, x2, y2 = (rois[:, i] * scale for i in range(4))
    bin_h = (y2 - y1).clamp(min=1.0) / oh
    bin_w = (x2 - x1).clamp(min=1.0) / ow
    steps = (torch.arange(sr, dtype=rois.dtype, device=rois.device) + 0.5) / sr
    ys = y1[:, None, None] + (torch.arange(oh, device=rois.device)[:, None] + steps) * bin_h[:, None, None]
    xs = x1[:, None, None] + (torch.arange(ow, device=rois.device)[:, None] + steps) * bin_w[:, None, None]
    shape = (r, 1, 1)
    in_y, y_lo, y_hi, wy_lo, wy_hi = _axis(ys, height.view(shape))  # each (R, oh, sr)
    in_x, x_lo, x_hi, wx_lo, wx_hi = _axis(xs, width.view(shape))  # each (R, ow, sr)
    # Per axis, a bin row's (or column's) 2 sr (sample, corner) reads, with the border test and 1/sr of
    # the mean in their weights; a bin reads their products. Two broadcasts of (R, oh, 1, 2sr, 1) against
    # (R, 1, ow, 1, 2sr) give the (bin, 4 sr²) tables at once; broadcasting the four corners one by one
    # over 2-element inner dimensions took about twenty slow element-wise ops (BENCHMARKS.md).
    k = 2 * sr
    rows = base.view(r, 1, 1, 1) + torch.stack([y_lo, y_hi], -1) * width.view(r, 1, 1, 1)
    cols = torch.stack([x_lo, x_hi], -1)
    wy = torch.stack([wy_lo, wy_hi], -1) * (in_y.to(rois.dtype) / sr)[..., None]
    wx = torch.stack([wx_lo, wx_hi], -1) * (in_x.to(rois.dtype) / sr)[..., None]
    index = rows.view(r, oh, 1, k, 1) + cols.view(r, 1, ow, 1, k)
    weight = wy.view(r, oh, 1, k, 1) * wx.view(r, 1, ow, 1, k)
    return index.reshape(r * oh * ow, -1), weight.reshape(r * oh * ow, -1)


class _WeightedGather(torch.autograd.Function):
    """``out[b] = sum_j weight[b, j] * table[index[b, j]]`` (``F.embedding_bag``), differentiable in
    ``table``. Its backward gathers too: each table row sums the output gradients of the bins that read
    it, found by sorting ``index``. torch's own embedding_bag backward was a sixteenth of the demo's
    finetuning step (BENCHMARKS.md, "The RoI gather's backward as a gather")."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, weight = ctx.saved_tensors
        flat = index.reshape(-1)
        # stable: the same sums in the same order, run after run; 32-bit keys sort in 0.7x the time
        order = (flat.int() if ctx.rows < 2**31 else flat).argsort(stable=True)
        reads = torch.bincount(flat, minlength=ctx.rows)
        bins = torch.div(order, index.shape[1], rounding_mode="floor")
        grad_table = F.embedding_bag(bins, grad.contiguous(), reads.cumsum(0) - reads,
                                     per_sample_weights=weight.reshape(-1)[order], mode="sum")
        return grad_table, None, None


def multiscale_roi_align(features: list[Tensor], boxes: list[Tensor], output_size: tuple[int, int],
                         sampling_ratio: int, scales: list[float], mapper: LevelMapper) -> Tensor:
    """What torchvision's ``_multiscale_roi_align`` returns, (R, C, oh, ow), with one gather."""
    channels = features[0].shape[1]
    rois = torch.cat(boxes)
    image = torch.cat([torch.full((len(b),), i, device=rois.device) for i, b in enumerate(boxes)])
    if rois.shape[0] == 0:
        return features[0].new_zeros((0, channels, *output_size))
    level = mapper(boxes) if len(features) > 1 else torch.zeros_like(image)
    sizes = torch.tensor([f.shape[2:] for f in features], device=rois.device)
    pixels = torch.tensor([f.shape[0] * f.shape[2] * f.shape[3] for f in features], device=rois.device)
    first_row = pixels.cumsum(0) - pixels
    height, width = sizes[level, 0], sizes[level, 1]
    base = first_row[level] + image * height * width
    scale = torch.tensor(scales, dtype=rois.dtype, device=rois.device)[level]
    index, weight = sample_table(rois, scale, height, width, base, output_size, sampling_ratio)
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
    out = _WeightedGather.apply(table, index, weight.to(table.dtype))
    return out.view(rois.shape[0], *output_size, channels).permute(0, 3, 1, 2)


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments and results), gathering on the CPU;
    on other devices, with an adaptive sampling ratio, when traced (ONNX), and without torchvision's
    private helpers, it is torchvision's."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        on_cpu = next(iter(x.values())).device.type == "cpu"
        if not on_cpu or _setup_scales is None or self.sampling_ratio <= 0 or torch.jit.is_tracing():
            return super().forward(x, boxes, image_shapes)
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        return multiscale_roi_align(features, boxes, tuple(self.output_size), self.sampling_ratio, self.scales,
                                    self.map_levels)
