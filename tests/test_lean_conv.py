"""``LeanConv2d`` computes what ``nn.Conv2d`` does: outputs and gradients, in every layout and map size
where it takes a shortcut (1x1 as a matrix product, kernel taps cut to the map) and where it does not."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detnas.model import conv as conv_module
from detnas.model.conv import LeanConv2d, used_taps


def _pair(in_c, out_c, kernel, stride, groups):
    torch.manual_seed(0)
    lean = LeanConv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False).double()
    plain = nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False).double()
    plain.load_state_dict(lean.state_dict())
    return lean, plain


def _input(shape, layout):
    x = torch.randn(shape, dtype=torch.float64)
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout == "channel slice":  # the stride-1 block's x[:, 1::2] of a channels-last map
        wide = torch.randn(shape[0], 2 * shape[1], *shape[2:], dtype=torch.float64)
        return wide.to(memory_format=torch.channels_last)[:, 1::2]
    return x


def _outputs_and_grads(conv, x):
    x = x.detach().clone().requires_grad_()
    y = conv(x)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y, x.grad, conv.weight.grad


@pytest.mark.parametrize("layout", ["channels_last", "nchw", "channel slice"])
@pytest.mark.parametrize("kernel,stride,depthwise", [
    (1, 1, False), (3, 1, True), (5, 1, True), (7, 1, True), (3, 2, True), (5, 2, True), (7, 2, True),
    (3, 2, False), (3, 1, False)])
def test_outputs_and_gradients_equal_torchs_conv(layout, kernel, stride, depthwise):
    channels = 6
    lean, plain = _pair(channels, channels, kernel, stride, channels if depthwise else 1)
    for h, w in [(1, 1), (2, 2), (3, 3), (4, 4), (2, 5), (7, 3), (9, 9)]:
        x = _input((2, channels, h, w), layout)
        got, want = _outputs_and_grads(lean, x), _outputs_and_grads(plain, x)
        lean.weight.grad = plain.weight.grad = None
        for g, e, what in zip(got, want, ("output", "input gradient", "weight gradient")):
            assert g.shape == e.shape, (h, w, what)
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, msg=f"{what} at {h}x{w}")


def test_channels_last_stays_channels_last():
    lean, _ = _pair(8, 16, 1, 1, 1)
    x = _input((2, 8, 4, 4), "channels_last")
    assert lean(x).is_contiguous(memory_format=torch.channels_last)
    dw, _ = _pair(8, 8, 7, 1, 8)
    assert dw(x).is_contiguous(memory_format=torch.channels_last)


def test_the_cut_keeps_only_taps_that_read_a_pixel():
    """Brute force: a tap is used iff some output position reads a real pixel through it."""
    for size, kernel, stride in itertools.product(range(1, 10), (1, 3, 5, 7), (1, 2)):
        pad = kernel // 2
        outs = (size + 2 * pad - kernel) // stride + 1
        used = [j for j in range(kernel) if any(0 <= stride * o - pad + j < size for o in range(outs))]
        assert used_taps(size, kernel, stride, pad) == (used[0], used[-1]), (size, kernel, stride)


def test_shortcuts_are_taken_where_they_pay(monkeypatch):
    """A 7x7 depthwise conv of a 1x1 map runs as a 1x1 one, of a 2x2 map as a 3x3 one; a 1x1 conv of a small
    channels-last map runs as a matrix product in training (no convolution at all), of a large one as a
    convolution."""
    calls, real = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a: calls.append(tuple(w.shape)) or real(x, w, *a))
    dw, _ = _pair(8, 8, 7, 1, 8)
    dw(_input((2, 8, 1, 1), "channels_last"))
    dw(_input((2, 8, 2, 2), "channels_last"))
    pw, _ = _pair(8, 8, 1, 1, 1)
    pw(_input((2, 8, 3, 3), "channels_last"))
    pw(_input((2, 8, 64, 64), "channels_last"))
    with torch.no_grad():  # inference: the product gains nothing there
        pw(_input((2, 8, 3, 3), "channels_last"))
    assert calls == [(8, 1, 1, 1), (8, 1, 3, 3), (8, 8, 1, 1), (8, 8, 1, 1)]


@pytest.mark.parametrize("kernel, stride, size, expected", [
    (3, 1, 2, False), (3, 1, 4, False), (3, 2, 4, False), (5, 2, 8, True), (7, 2, 4, True), (7, 1, 9, True),
    (7, 1, 2, False), (7, 1, 1, False)])
def test_the_weight_gradient_is_a_depthwise_convolution_where_that_pays(kernel, stride, size, expected, monkeypatch):
    """Kernels of 25 taps or more (after the cut) at stride 1 or 2, in training only (see model/conv.py)."""
    taken = []
    real_apply = conv_module._DepthwiseConv.apply
    monkeypatch.setattr(conv_module._DepthwiseConv, "apply", lambda *a: taken.append(1) or real_apply(*a))
    dw, _ = _pair(8, 8, kernel, stride, 8)
    x = _input((2, 8, size, size), "channels_last").requires_grad_()
    dw(x)
    assert bool(taken) == expected
    with torch.no_grad():
        dw(x)
    assert len(taken) == int(expected)
