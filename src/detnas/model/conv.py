"""``LeanConv2d``: torch's ``Conv2d`` that skips the work CPU kernels waste on small feature maps.

The same parameters, state_dict, FLOPs and results (to float rounding); only how the CPU computes it:

- **In training, a 1x1 convolution of a small channels-last input is a matrix product** over (pixels,
  channels), and runs as one (``F.linear``): oneDNN's 1x1 convolution backward is slow on small maps. A
  training step of the demo's 32 px supernet spends much of its time there (1x1 maps after the last
  stride: a 640 -> 1024 conv took 8.9 ms forward + backward as a convolution, 3.5 ms as a product).
  From 8192 pixels in the batch (e.g. 8 maps of 32x32) the convolution was as fast or faster, so it
  keeps those (``PRODUCT_MAX_PIXELS``), and the forward alone (evaluation) gained nothing on 2 threads
  (BENCHMARKS.md).
- **The weight gradient of a large depthwise kernel (5x5, 7x7) is one depthwise convolution** of the
  input with the output's gradient as the kernels (a ``(image, channel)`` pair per group), summed over the
  images: oneDNN's own is 3-5x slower for these kernels (a 7x7 on 64 x 32 x 8 x 8 maps: 2.1 ms against
  0.5 ms; at the demo detector's 16x16 maps, batch 8: 3.8 ms against 1.0 ms). Its input gradient is oneDNN's.
- **Kernel taps that only ever read the zero padding are cut off.** A 7x7 kernel on a 1x1 map is a
  per-channel scale; on a 2x2 map only its central 3x3 taps touch a pixel. The conv runs with the
  taps that do, and the padding that keeps the output size (the gradient of the cut taps is zero, as it
  is with the whole kernel).

Elsewhere (CUDA, NCHW inputs, autocast, tracing for export, dilation, non-zero padding modes) it is
``nn.Conv2d``.
"""

from __future__ import annotations

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
    """A stride-1 depthwise convolution (no bias) whose weight gradient is itself a depthwise convolution."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, None, 1, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            images = x.transpose(0, 1).reshape(1, c * n, *x.shape[2:])
            kernels = grad.transpose(0, 1).reshape(c * n, 1, *grad.shape[2:])
            grad_w = F.conv2d(images, kernels, None, 1, ctx.padding, 1, c * n)
            grad_w = grad_w.view(c, n, *weight.shape[2:]).sum(1, keepdim=True)
        return grad_x, grad_w, None


class LeanConv2d(nn.Conv2d):
    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or self.dilation != (1, 1) or torch.is_autocast_enabled("cpu") or torch.jit.is_tracing()
                or torch.jit.is_scripting()):
            return super()._conv_forward(x, weight, bias)
        if (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1
                and torch.is_grad_enabled() and weight.requires_grad
                and x.shape[0] * x.shape[2] * x.shape[3] <= PRODUCT_MAX_PIXELS and _channels_inner(x)):
            return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        (top, bottom), (left, right) = used_taps(x.shape[2], kh, sh, ph), used_taps(x.shape[3], kw, sw, pw)
        cut = (bottom - top + 1, right - left + 1)
        padding = (ph - top, pw - left)
        # a symmetric padding keeps the output size only if the cut is (close to) centred
        if any((n + 2 * p - k) // s != (n + 2 * p0 - k0) // s for n, p, k, s, p0, k0 in (
                (x.shape[2], padding[0], cut[0], sh, ph, kh), (x.shape[3], padding[1], cut[1], sw, pw, kw))):
            cut, padding, top, left = self.kernel_size, self.padding, 0, 0
        weight = weight[:, :, top:top + cut[0], left:left + cut[1]]
        if (self.groups == self.in_channels == self.out_channels and self.stride == (1, 1) and bias is None
                and cut[0] * cut[1] >= 25 and x.is_contiguous(memory_format=torch.channels_last)):
            return _DepthwiseConv.apply(x, weight, padding)
        return F.conv2d(x, weight, bias, self.stride, padding, 1, self.groups)
