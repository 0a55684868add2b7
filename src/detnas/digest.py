"""SHA-256 of what a checkpoint or an exported weights file holds, stored beside it when it is written
and checked when it is read: torch does not check its zip CRCs, so a file with bytes flipped in the
middle would otherwise load silently with damaged weights."""

from __future__ import annotations

import hashlib

import torch


def _update(h, value) -> None:
    """Feed ``value`` (nested dicts, lists and tuples of tensors and plain values) into ``h``; the
    type, shape and dtype of every tensor and the order of every container count."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for k, v in value.items():
            _update(h, k)
            _update(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__[0]}{len(value)}:".encode())
        for v in value:
            _update(h, v)
    else:  # str, int, float, bool, None, torch.Size...
        h.update(f"{type(value).__name__}:{value!r};".encode())


def file_sha256(path) -> str:
    """The hex SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(value) -> str:
    """A hex SHA-256 of ``value``'s content, the same after a save and load round trip."""
    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()
