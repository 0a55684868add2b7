"""``LeanConv2d``: torch's ``Conv2d`` that skips the work CPU kernels waste on small feature maps.

The same parameters, state_dict, FLOPs and results (to float rounding); only how the CPU computes it:

- **In training, a 1x1 convolution of a small channels-last input is a matrix product** over (pixels,
  channels), and runs as one (``F.linear``): oneDNN's 1x1 convolution backward is slow on small maps. A
  training step of the demo's 32 px supernet spends much of its time there (1x1 maps after the last
  stride: the 640 -> 1024 conv, forward + backward, 2.5x as fast as a product). From 8192 pixels in the
  batch (e.g. 8 maps of 32x32) the convolution was as fast or faster, so it keeps those
  (``PRODUCT_MAX_PIXELS``), and the forward alone (evaluation) gained nothing on 2 threads.
- **The weight gradient of a depthwise kernel is one depthwise convolution** of the input with the
  output's gradient as the kernels (an ``(image, channel)`` pair per group), dilated by the stride and
  summed over the images; its input gradient is oneDNN's. oneDNN's own weight gradient is slow for
  large kernels: a 6x6 (cut) stride-2 kernel on the supernet's 4x4 maps took 2.4 ms forward + backward,
  1.3 ms this way. It is used for kernels of 25 taps or more, at stride 1 or 2: such layers' forward +
  backward ran 1.05-2.1x as fast on the 32 px supernet's maps and the demo detector's. 3x3 kernels
  stay with oneDNN: slower this way, except on maps of at most 2x2, and BENCHMARKS.md ("Depthwise
  weight gradients") says why that gain was not taken.
- **Kernel taps that only ever read the zero padding are cut off.** A 7x7 kernel on a 1x1 map is a
  per-channel scale; on a 2x2 map only its central 3x3 taps touch a pixel. The conv runs with the
  taps that do, and the padding that keeps the output size (the gradient of the cut taps is zero, as it
  is with the whole kernel).

Elsewhere (CUDA, NCHW inputs, autocast, tracing for export, dilation, non-zero padding modes) it is
``nn.Conv2d``. Per-layer figures: ``benchmarks/conv_kernels.py`` (BENCHMARKS.md, "Throughput").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

PRODUCT_MAX_PIXELS = 4096  # batch x height x width up to which a 1x1 conv runs as a matrix product


def used_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """(first, last) kernel tap along one axis that reads an input pixel for some output position."""
    last_out = (size + 2 * padding - kernel) // stride
    return max(0, padding - stride * last_out), min(kernel - 1, padding + size - 1)


def _channels_inner(x: torch.Tensor) -> bool:
    """Whether the channels of ``x`` are its innermost dimension in memory (channels-last, or a channel
    slice of it), so that (pixels, channels) is a matrix without a transposing copy."""
    return x.is_contiguous(memory_format=torch.channels_last) or x.stride(1) < x.stride(3)


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise convolution (no bias) whose weight gradient is itself a depthwise convolution."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, list(ctx.stride), list(ctx.padding),
                                                         [1, 1], False, [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            # tap (i, j) meets output (y, x) at input (stride * y + i, stride * x + j): the gradient, dilated by
            # the stride, slid over the padded input; its first kh x kw positions are the taps
            kh, kw = weight.shape[2:]
            images = x.transpose(0, 1).reshape(1, c * n, *x.shape[2:])
            kernels = grad.transpose(0, 1).reshape(c * n, 1, *grad.shape[2:])
            grad_w = F.conv2d(images, kernels, None, 1, ctx.padding, ctx.stride, c * n)[..., :kh, :kw]
            grad_w = grad_w.reshape(c, n, kh, kw).sum(1, keepdim=True)
        return grad_x, grad_w, None, None


class _Plan(NamedTuple):
    """How ``LeanConv2d`` computes one input size: the kernel's taps kept (``None``: all) and the padding
    that goes with them, and whether it is a 1x1 conv or a depthwise one with a large (cut) kernel."""

    taps: tuple[slice, slice] | None
    padding: tuple[int, int]
    pointwise: bool
    large_depthwise: bool


class LeanConv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plans: dict[tuple[int, int], _Plan | None] = {}  # by input height and width

    def _plan(self, height: int, width: int) -> _Plan | None:
        """What to do for inputs of this size (``None``: what torch does); worked out once per size."""
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or self.dilation != (1, 1):
            return None
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        (top, bottom), (left, right) = used_taps(height, kh, sh, ph), used_taps(width, kw, sw, pw)
        cut, padding = (bottom - top + 1, right - left + 1), (ph - top, pw - left)
        # a symmetric padding keeps the output size only if the cut is (close to) centred
        if cut == self.kernel_size or any((n + 2 * p - k) // s != (n + 2 * p0 - k0) // s for n, p, k, s, p0, k0 in (
                (height, padding[0], cut[0], sh, ph, kh), (width, padding[1], cut[1], sw, pw, kw))):
            cut, padding, taps = self.kernel_size, self.padding, None
        else:
            taps = (slice(top, bottom + 1), slice(left, right + 1))
        pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1
        large_depthwise = (self.groups == self.in_channels == self.out_channels and self.bias is None
                           and self.stride in ((1, 1), (2, 2)) and cut[0] * cut[1] >= 25)
        return _Plan(taps, padding, pointwise, large_depthwise)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or torch.is_autocast_enabled("cpu") or torch.jit.is_tracing()
                or torch.jit.is_scripting()):
            return super()._conv_forward(x, weight, bias)
        size = (x.shape[2], x.shape[3])
        if size not in self._plans:
            self._plans[size] = self._plan(*size)
        plan = self._plans[size]
        if plan is None:
            return super()._conv_forward(x, weight, bias)
        wants_grad = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
        if plan.pointwise:
            if wants_grad and x.shape[0] * size[0] * size[1] <= PRODUCT_MAX_PIXELS and _channels_inner(x):
                return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
            return super()._conv_forward(x, weight, bias)
        if plan.taps is not None:
            weight = weight[:, :, plan.taps[0], plan.taps[1]]
        if plan.large_depthwise and wants_grad and x.is_contiguous(memory_format=torch.channels_last):
            return _DepthwiseConv.apply(x, weight, self.stride, plan.padding)
        if plan.taps is None:
            return super()._conv_forward(x, weight, bias)
        return F.conv2d(x, weight, bias, self.stride, plan.padding, 1, self.groups)
