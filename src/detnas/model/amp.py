"""Mixed precision: the ``amp`` setting of every stage, its autocast context and gradient scaler, and
the float32 boundary inside a detector.

``amp: auto`` (the default) is bf16 on a CUDA device that supports it and off elsewhere (on a CPU,
bf16 matmuls are slower than float32 on most machines). ``fp16`` needs a gradient scaler against
underflow; its state is checkpointed with the optimizer. bf16 has float32's range and needs none.

Under autocast only convolutions and linear layers run in low precision. BN parameters and running
statistics stay float32 (autocast never casts module state; the CPU/gloo ``SyncBatchNorm2d``
accumulates in float32 or float64). A detector computes its features and head outputs in low
precision, but ``float32_outputs`` hands them on in float32, so that anchors, box decoding, NMS and
the losses run in float32: torchvision builds anchors and decodes boxes in the dtype of what it is
given, and bf16 keeps 8 bits of mantissa, a step of 4 pixels at a 1000-pixel coordinate.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

AmpSetting = Literal["auto", "off", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(setting: AmpSetting, device: torch.device | str) -> str:
    """The precision a run uses on ``device``: ``off``, ``bf16`` or ``fp16``."""
    if setting != "auto":
        return setting
    device = torch.device(device)
    # native bf16 only (Ampere and later): older GPUs emulate it, slower than float32
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) else "off"


def autocast(mode: str, device: torch.device | str) -> torch.autocast:
    """The autocast context of a resolved ``mode`` on ``device`` (disabled for ``off``)."""
    return torch.autocast(torch.device(device).type, dtype=DTYPES.get(mode, torch.bfloat16), enabled=mode != "off")


def grad_scaler(mode: str, device: torch.device | str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a no-op scaler otherwise, whose state_dict is empty)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=mode == "fp16")


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def float32_outputs(*modules: nn.Module) -> None:
    """Cast what ``modules`` return to float32 when autocast made it half precision (unchanged, and
    no extra op, in float32 runs)."""
    for module in modules:
        module.register_forward_hook(lambda _module, _inputs, output: _to_float32(output))
