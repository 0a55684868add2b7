"""The memory layout of the networks: channels-last (NHWC in memory) or NCHW, and ``auto``.

The layout lives in the parameters. ``apply_layout(model, device)`` puts every 4-D parameter and
buffer in the layout; ``ShuffleNetBackbone.forward`` gives its input the layout of its stem's weight,
so the training loop, the evaluation and torchvision's detectors never convert anything themselves,
and a network extracted from a supernet (``subnet``, ``extract_detector``) takes the supernet's layout.
The layout changes how the numbers sit in memory, not which numbers: results agree to float rounding
(``tests/test_channels_last.py``).

``auto`` (the default) is channels-last where oneDNN (CPU) or cuDNN (CUDA) run the convolutions: on a
shared 2-core AVX-512 CPU, against NCHW, a training step of the demo's 32 px supernet ran 1.65x as fast,
at 224 px 1.4x, the demo detector's finetuning step 1.1x and a candidate's evaluation 1.2x
(``benchmarks/throughput.py``, BENCHMARKS.md); on CUDA it is the standard layout for conv nets under
mixed precision. Elsewhere (e.g. MPS) it is NCHW. ``$DETNAS_LAYOUT=nchw`` turns it off (``channels_last``
forces it).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

Layout = Literal["channels_last", "nchw"]
LayoutSetting = Literal["auto", "channels_last", "nchw"]
LAYOUT_ENV = "DETNAS_LAYOUT"
FORMATS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def resolve_layout(setting: LayoutSetting | None = None, device: torch.device | str = "cpu") -> Layout:
    """The layout of a run on ``device``: ``setting``, else ``$DETNAS_LAYOUT``, else ``auto``."""
    setting = setting or os.environ.get(LAYOUT_ENV, "").strip().lower() or "auto"
    if setting not in ("auto", *FORMATS):
        raise ValueError(f"{LAYOUT_ENV}={setting!r}: expected auto, channels_last or nchw")
    if setting != "auto":
        return setting
    kind = torch.device(device).type
    fast = torch.backends.mkldnn.is_available() if kind == "cpu" else kind == "cuda"
    return "channels_last" if fast else "nchw"


def apply_layout(model: nn.Module, device: torch.device | str = "cpu",
                 setting: LayoutSetting | None = None) -> nn.Module:
    """``model`` (changed in place) with its 4-D parameters and buffers in the resolved layout."""
    return model.to(memory_format=FORMATS[resolve_layout(setting, device)])


def _telling(weight: torch.Tensor) -> bool:
    """Whether ``weight``'s strides tell the layout: a 1x1 kernel or one input channel (depthwise) is
    contiguous in both."""
    return weight.dim() == 4 and weight.shape[1] > 1 and weight.shape[2] * weight.shape[3] > 1


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Whether a tensor whose strides tell the layout (e.g. the stem's weight, a feature map) is stored
    channels-last."""
    return not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last)


def layout_of(model: nn.Module) -> Layout:
    """The layout of ``model``'s first conv weight whose strides tell it (NCHW if none does)."""
    for p in model.parameters():
        if _telling(p):
            return "channels_last" if is_channels_last(p) else "nchw"
    return "nchw"


def same_layout(model: nn.Module, like: nn.Module) -> nn.Module:
    """``model`` (changed in place) in the layout of ``like``: e.g. a path extracted from a supernet."""
    return model.to(memory_format=FORMATS[layout_of(like)])
